//! The device's desired state: every pod spec aranya sent, kept on disk so a
//! restarted agent (or a rebooted device) runs the same pods while it cannot
//! reach the cloud, and adopts their containers instead of recreating them.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use prost::Message;
use proto::api::PodSpec;
use tracing::warn;

use super::volumes::pod_dir;

const SPEC_FILE: &str = "pod.pb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("pod uid {0:?} is not a Kubernetes UID (letters, digits and '-')")]
    BadUid(String),
    #[error("saving pod {uid}: {path}: {source}")]
    Io {
        uid: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A UID names a directory on the device: nothing that could leave it.
pub fn check_uid(uid: &str) -> Result<(), StoreError> {
    let ok = !uid.is_empty()
        && uid.len() <= 128
        && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadUid(uid.to_string()))
    }
}

/// Writes the spec atomically (temp file, then rename). Owner-only: it
/// carries the Secret values aranya resolved.
pub fn save(data_dir: &Path, spec: &PodSpec) -> Result<(), StoreError> {
    check_uid(&spec.uid)?;
    let dir = pod_dir(data_dir, &spec.uid);
    let path = dir.join(SPEC_FILE);
    let io = |source| StoreError::Io {
        uid: spec.uid.clone(),
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let tmp = dir.join(format!("{SPEC_FILE}.tmp"));
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?
    };
    let written = file
        .write_all(&spec.encode_to_vec())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path));
    if written.is_err() {
        // A full disk: the saved spec stays as it was, and the partial
        // copy does not keep the space.
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)
}

/// Every saved spec. One that cannot be read is skipped with a warning (and
/// left in place for a person to look at), never fatal.
pub fn load_all(data_dir: &Path) -> Vec<PodSpec> {
    let root = data_dir.join("pods");
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            warn!(dir = %root.display(), error = %e, "reading saved pods");
            return Vec::new();
        }
    };
    let mut specs = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path().join(SPEC_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "reading a saved pod");
                continue;
            }
        };
        match PodSpec::decode(bytes.as_slice()) {
            Ok(spec) if entry.file_name().to_str() == Some(spec.uid.as_str()) => specs.push(spec),
            Ok(spec) => {
                warn!(path = %path.display(), uid = %spec.uid, "a saved pod in another pod's directory; skipped")
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "a saved pod does not decode; skipped")
            }
        }
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(uid: &str) -> PodSpec {
        PodSpec {
            uid: uid.into(),
            name: "web".into(),
            namespace: "ns".into(),
            ..Default::default()
        }
    }

    #[test]
    fn specs_survive_a_restart_and_bad_files_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        save(dir.path(), &spec("a-1")).expect("saves");
        save(dir.path(), &spec("b-2")).expect("saves");
        let junk = dir.path().join("pods/c-3");
        std::fs::create_dir_all(&junk).expect("mkdir");
        std::fs::write(junk.join(SPEC_FILE), b"\xff\xff\xff").expect("write");
        let mut uids: Vec<String> = load_all(dir.path()).into_iter().map(|s| s.uid).collect();
        uids.sort();
        assert_eq!(uids, ["a-1", "b-2"]);
        let mode = std::fs::metadata(dir.path().join("pods/a-1").join(SPEC_FILE))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
            .expect("stat");
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn uids_that_could_leave_the_directory_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        for uid in ["", "..", "a/b", "../x", "a b"] {
            assert!(
                matches!(save(dir.path(), &spec(uid)), Err(StoreError::BadUid(_))),
                "{uid:?}"
            );
        }
    }
}
