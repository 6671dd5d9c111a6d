//! Pod volumes as the device gets them: cluster content (ConfigMaps, Secrets,
//! the downward API, service-account tokens) resolved into files here.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{DownwardAPIVolumeFile, KeyToPath, Pod, ServiceAccount, Volume},
};
use kube::{Api, ResourceExt, api::PostParams};
use proto::api;

use super::spec::{Lookup, SpecError, Store, field_value};

/// Token lifetime asked for; the device gets a fresh one when it is re-sent.
const TOKEN_SECONDS: i64 = 3607;

pub(super) async fn resolve(
    lookup: &mut Lookup<'_>,
    pod: &Pod,
    v: &Volume,
) -> Result<api::Volume, SpecError> {
    use api::volume::Source;
    let files = |files: Vec<api::VolumeFile>| Source::Files(api::FilesVolume { files });
    let source = if v.empty_dir.is_some() {
        Source::EmptyDir(api::EmptyDirVolume {})
    } else if let Some(h) = &v.host_path {
        Source::HostPath(api::HostPathVolume {
            path: h.path.clone(),
            r#type: h.type_.clone().unwrap_or_default(),
        })
    } else if let Some(cm) = &v.config_map {
        let mode = mode(cm.default_mode, 0o644);
        files(
            store_files(
                lookup,
                Store::ConfigMap,
                &cm.name,
                cm.items.as_deref(),
                cm.optional,
                mode,
            )
            .await?,
        )
    } else if let Some(s) = &v.secret {
        let mode = mode(s.default_mode, 0o644);
        let name = s.secret_name.clone().unwrap_or_default();
        files(
            store_files(
                lookup,
                Store::Secret,
                &name,
                s.items.as_deref(),
                s.optional,
                mode,
            )
            .await?,
        )
    } else if let Some(d) = &v.downward_api {
        files(downward_files(
            pod,
            d.items.as_deref(),
            mode(d.default_mode, 0o644),
        )?)
    } else if let Some(p) = &v.projected {
        let default = mode(p.default_mode, 0o644);
        let mut all = Vec::new();
        for source in p.sources.iter().flatten() {
            if let Some(cm) = &source.config_map {
                all.extend(
                    store_files(
                        lookup,
                        Store::ConfigMap,
                        &cm.name,
                        cm.items.as_deref(),
                        cm.optional,
                        default,
                    )
                    .await?,
                );
            }
            if let Some(s) = &source.secret {
                all.extend(
                    store_files(
                        lookup,
                        Store::Secret,
                        &s.name,
                        s.items.as_deref(),
                        s.optional,
                        default,
                    )
                    .await?,
                );
            }
            if let Some(d) = &source.downward_api {
                all.extend(downward_files(pod, d.items.as_deref(), default)?);
            }
            if let Some(t) = &source.service_account_token {
                let token = token(
                    lookup,
                    pod,
                    &v.name,
                    t.audience.clone(),
                    t.expiration_seconds,
                )
                .await?;
                all.push(api::VolumeFile {
                    path: t.path.clone(),
                    data: token.into_bytes().into(),
                    mode: default,
                });
            }
        }
        files(all)
    } else {
        return Err(SpecError::UnsupportedVolume {
            volume: v.name.clone(),
            kind: kind(v),
        });
    };
    Ok(api::Volume {
        name: v.name.clone(),
        source: Some(source),
    })
}

fn kind(v: &Volume) -> &'static str {
    if v.persistent_volume_claim.is_some() {
        "persistentVolumeClaim"
    } else if v.csi.is_some() {
        "csi"
    } else if v.nfs.is_some() {
        "nfs"
    } else if v.ephemeral.is_some() {
        "ephemeral"
    } else if v.image.is_some() {
        "image"
    } else {
        "this kind of"
    }
}

fn mode(m: Option<i32>, default: u32) -> u32 {
    m.and_then(|m| u32::try_from(m).ok()).unwrap_or(default)
}

fn pick(
    data: BTreeMap<String, String>,
    items: Option<&[KeyToPath]>,
    default: u32,
    missing: impl Fn(&str) -> SpecError,
) -> Result<Vec<api::VolumeFile>, SpecError> {
    match items {
        None => Ok(data
            .into_iter()
            .map(|(k, v)| api::VolumeFile {
                path: k,
                data: v.into_bytes().into(),
                mode: default,
            })
            .collect()),
        Some(items) => items
            .iter()
            .map(|i| {
                let value = data.get(&i.key).ok_or_else(|| missing(&i.key))?;
                Ok(api::VolumeFile {
                    path: i.path.clone(),
                    data: value.clone().into_bytes().into(),
                    mode: mode(i.mode, default),
                })
            })
            .collect(),
    }
}

/// A ConfigMap's or Secret's keys as files.
async fn store_files(
    lookup: &mut Lookup<'_>,
    store: Store,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    default: u32,
) -> Result<Vec<api::VolumeFile>, SpecError> {
    match lookup.data(store, name, optional).await? {
        Some(data) => pick(data, items, default, |key| {
            lookup.key_missing(store, name, key)
        }),
        None => Ok(Vec::new()),
    }
}

fn downward_files(
    pod: &Pod,
    items: Option<&[DownwardAPIVolumeFile]>,
    default: u32,
) -> Result<Vec<api::VolumeFile>, SpecError> {
    items
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i.field_ref.as_ref().map(|f| (i, f)))
        .map(|(i, f)| {
            let value = field_value(pod, &f.field_path)
                .ok_or_else(|| SpecError::FieldPath(f.field_path.clone()))?;
            Ok(api::VolumeFile {
                path: i.path.clone(),
                data: value.into_bytes().into(),
                mode: mode(i.mode, default),
            })
        })
        .collect()
}

/// A token bound to this pod, through TokenRequest, as a kubelet obtains it.
async fn token(
    lookup: &Lookup<'_>,
    pod: &Pod,
    volume: &str,
    audience: Option<String>,
    seconds: Option<i64>,
) -> Result<String, SpecError> {
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.filter(|a| !a.is_empty()).map(|a| vec![a]),
            expiration_seconds: Some(seconds.unwrap_or(TOKEN_SECONDS)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(lookup.client.clone(), lookup.namespace);
    let answer: TokenRequest = accounts
        .create_subresource::<TokenRequest, TokenRequest>(
            "token",
            &account,
            &PostParams::default(),
            &request,
        )
        .await
        .map_err(|e| SpecError::Token {
            volume: volume.to_string(),
            reason: e.to_string(),
        })?;
    answer
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| SpecError::Token {
            volume: volume.to_string(),
            reason: "no token in the answer".into(),
        })
}
