//! Registry credentials from a pod's imagePullSecrets, matched to each
//! image's registry as a kubelet matches them.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use proto::api::RegistryAuth;
use serde::Deserialize;

use super::spec::{Lookup, SpecError};

#[derive(Debug, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    auth: Option<String>,
}

/// Credentials by normalized registry host.
#[derive(Debug, Default)]
pub(super) struct Credentials(BTreeMap<String, RegistryAuth>);

impl Credentials {
    /// Reads every imagePullSecret of the pod; a missing one is skipped, as a kubelet does.
    pub(super) async fn of(lookup: &mut Lookup<'_>, pod: &Pod) -> Result<Self, SpecError> {
        let mut all = BTreeMap::new();
        let names = pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.clone())
            .unwrap_or_default();
        for name in names.iter().map(|r| r.name.clone()) {
            let Some(secret) = lookup.secret(&name).await? else {
                continue;
            };
            let data = secret.data.clone().unwrap_or_default();
            let parsed = if let Some(json) = data.get(".dockerconfigjson") {
                serde_json::from_slice::<DockerConfig>(&json.0).map(|c| c.auths)
            } else if let Some(json) = data.get(".dockercfg") {
                serde_json::from_slice::<BTreeMap<String, Entry>>(&json.0)
            } else {
                continue;
            };
            let Ok(entries) = parsed else { continue };
            for (server, entry) in entries {
                if let Some(auth) = credential(&server, entry) {
                    all.entry(normalize(&server)).or_insert(auth);
                }
            }
        }
        Ok(Self(all))
    }

    /// The credentials for `image`'s registry, if any.
    pub(super) fn for_image(&self, image: &str) -> Option<RegistryAuth> {
        self.0.get(&registry_of(image)).cloned()
    }
}

fn credential(server: &str, entry: Entry) -> Option<RegistryAuth> {
    let (username, password) = match (entry.username, entry.password, entry.auth) {
        (Some(u), Some(p), _) => (u, p),
        (_, _, Some(auth)) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth)
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (u, p) = text.split_once(':')?;
            (u.to_string(), p.to_string())
        }
        _ => return None,
    };
    Some(RegistryAuth {
        server: server.to_string(),
        username,
        password,
    })
}

/// `https://index.docker.io/v1/` -> `docker.io`; `127.0.0.1:5000` stays.
fn normalize(server: &str) -> String {
    let host = server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

/// The registry an image reference names (Docker's rule: a first component
/// with a dot, a colon, or `localhost` is a registry; otherwise Docker Hub).
pub(super) fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            normalize(first)
        }
        _ => "docker.io".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_found_like_docker() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(
            registry_of("127.0.0.1:5000/e2e/busybox:1"),
            "127.0.0.1:5000"
        );
        assert_eq!(
            registry_of("registry.example.com/app"),
            "registry.example.com"
        );
        assert_eq!(normalize("https://index.docker.io/v1/"), "docker.io");
    }

    #[test]
    fn auth_field_decodes() {
        let entry = Entry {
            username: None,
            password: None,
            auth: Some(base64::engine::general_purpose::STANDARD.encode("alice:s3cret")),
        };
        let auth = credential("r:1", entry).expect("decoded");
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("alice", "s3cret")
        );
    }
}
