//! Pod volumes on the device: directories under the agent's data dir, filled
//! with what aranya resolved, or host paths.

use std::{
    collections::HashMap,
    path::{Component, Path, PathBuf},
};

use proto::api::{PodSpec, volume::Source};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume:?}: {path}: {source}")]
    Io {
        volume: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("volume {volume:?}: path {path:?} must be relative and stay inside the volume")]
    UnsafePath { volume: String, path: String },
    #[error("volume {volume:?}: host path {path} does not exist (type {kind})")]
    Missing {
        volume: String,
        path: String,
        kind: String,
    },
    #[error("volume {0:?} has no source")]
    NoSource(String),
}

/// `path` joined under `root` only if it cannot escape it.
pub fn contained(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        .then(|| root.join(rel))
}

/// The pod's own directory under the data dir.
pub fn pod_dir(data_dir: &Path, uid: &str) -> PathBuf {
    data_dir.join("pods").join(uid)
}

/// Creates every volume; returns each volume's host path by name.
pub fn prepare(data_dir: &Path, spec: &PodSpec) -> Result<HashMap<String, PathBuf>, VolumeError> {
    let root = pod_dir(data_dir, &spec.uid).join("volumes");
    let mut paths = HashMap::new();
    for v in &spec.volumes {
        let io = |path: &Path| {
            let volume = v.name.clone();
            let path = path.to_path_buf();
            move |source| VolumeError::Io {
                volume,
                path,
                source,
            }
        };
        let dir = contained(&root, &v.name).ok_or_else(|| VolumeError::UnsafePath {
            volume: v.name.clone(),
            path: v.name.clone(),
        })?;
        let host = match v
            .source
            .as_ref()
            .ok_or_else(|| VolumeError::NoSource(v.name.clone()))?
        {
            Source::EmptyDir(_) => {
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                dir
            }
            Source::HostPath(h) => {
                let path = PathBuf::from(&h.path);
                match h.r#type.as_str() {
                    "DirectoryOrCreate" => std::fs::create_dir_all(&path).map_err(io(&path))?,
                    "FileOrCreate" if !path.exists() => {
                        if let Some(parent) = path.parent() {
                            std::fs::create_dir_all(parent).map_err(io(parent))?;
                        }
                        std::fs::write(&path, b"").map_err(io(&path))?;
                    }
                    "Directory" | "File" | "Socket" | "CharDevice" | "BlockDevice"
                        if !path.exists() =>
                    {
                        return Err(VolumeError::Missing {
                            volume: v.name.clone(),
                            path: h.path.clone(),
                            kind: h.r#type.clone(),
                        });
                    }
                    _ => {}
                }
                path
            }
            Source::Files(files) => {
                // Written anew each time: contents may have changed (a refreshed token).
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                for f in &files.files {
                    let path = contained(&dir, &f.path).ok_or_else(|| VolumeError::UnsafePath {
                        volume: v.name.clone(),
                        path: f.path.clone(),
                    })?;
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(io(parent))?;
                    }
                    write_atomically(&path, &f.data, f.mode).map_err(io(&path))?;
                }
                dir
            }
        };
        paths.insert(v.name.clone(), host);
    }
    Ok(paths)
}

fn write_atomically(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("arhat-tmp");
    std::fs::write(&tmp, data)?;
    std::fs::set_permissions(
        &tmp,
        std::fs::Permissions::from_mode(if mode == 0 { 0o644 } else { mode }),
    )?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::api::{EmptyDirVolume, FilesVolume, Volume, VolumeFile};

    #[test]
    fn files_are_written_and_paths_cannot_escape() {
        let data = tempfile::tempdir().expect("tempdir");
        let mut spec = PodSpec {
            uid: "u1".into(),
            volumes: vec![
                Volume {
                    name: "config".into(),
                    source: Some(Source::Files(FilesVolume {
                        files: vec![VolumeFile {
                            path: "sub/key".into(),
                            data: b"value".to_vec().into(),
                            mode: 0o600,
                        }],
                    })),
                },
                Volume {
                    name: "scratch".into(),
                    source: Some(Source::EmptyDir(EmptyDirVolume {})),
                },
            ],
            ..Default::default()
        };
        let paths = prepare(data.path(), &spec).expect("prepared");
        assert_eq!(
            std::fs::read(paths["config"].join("sub/key")).expect("file"),
            b"value"
        );
        assert!(paths["scratch"].is_dir());
        if let Some(Source::Files(f)) = spec.volumes[0].source.as_mut() {
            f.files[0].path = "../../escape".into();
        }
        assert!(matches!(
            prepare(data.path(), &spec),
            Err(VolumeError::UnsafePath { .. })
        ));
    }
}
