//! Bootstrap tokens: a Secret in aranya's namespace per token, bound to one
//! EdgeDevice (its name, its uid and its identity rotation) until it
//! expires. Not the `bootstrap.kubernetes.io/token` type: the apiserver
//! would take that as a credential for itself.

use std::time::{Duration, SystemTime};

use ::identity::BootstrapToken;
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ObjectMeta, PostParams},
};

use crate::crd::EdgeDevice;

pub const SECRET_TYPE: &str = "aranya.arhat.dev/bootstrap-token";
const SECRET_PREFIX: &str = "bootstrap-token-";
const ID: &str = "token-id";
const SECRET: &str = "token-secret";
const DEVICE: &str = "device";
const DEVICE_UID: &str = "device-uid";
const ROTATION: &str = "identity-rotation";
const EXPIRATION: &str = "expiration";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("EdgeDevice {0} has no uid yet")]
    NoUid(String),
    #[error("storing the bootstrap token: {0}")]
    Kube(#[from] kube::Error),
}

/// A token just made; [`BootstrapToken::expose`] gives what the device needs.
#[derive(Debug)]
pub struct Created {
    pub token: BootstrapToken,
    pub expires: SystemTime,
    pub secret: String,
}

/// Why a token does not let a device in; the message is safe to show the
/// device (it never holds the secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("bootstrap token {0} is unknown")]
    Unknown(String),
    #[error("bootstrap token {id} expired at {at}")]
    Expired { id: String, at: String },
    #[error("bootstrap token {id} belongs to device {owner:?}, not {device:?}")]
    OtherDevice {
        id: String,
        owner: String,
        device: String,
    },
    #[error(
        "bootstrap token {0} was made for an earlier EdgeDevice of this name (deleted and created again)"
    )]
    Recreated(String),
    #[error("bootstrap token {0} was revoked by a rotation of the device's identity")]
    Rotated(String),
    #[error("bootstrap token {0} is malformed in its Secret")]
    Malformed(String),
}

/// Makes a token for `device`, valid for `ttl`.
pub async fn create(
    client: Client,
    namespace: &str,
    device: &EdgeDevice,
    ttl: Duration,
) -> Result<Created, TokenError> {
    let uid = device
        .uid()
        .ok_or_else(|| TokenError::NoUid(device.name_any()))?;
    let token = BootstrapToken::generate();
    let expires = SystemTime::now() + ttl;
    let name = format!("{SECRET_PREFIX}{}", token.id());
    let data = [
        (ID, token.id().to_string()),
        (SECRET, token.secret().to_string()),
        (DEVICE, device.name_any()),
        (DEVICE_UID, uid.clone()),
        (ROTATION, device.spec.identity.rotation.to_string()),
        (EXPIRATION, ::identity::cert::rfc3339(expires)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(
                [(
                    "aranya.arhat.dev/device".to_string(),
                    label_value(&device.name_any()),
                )]
                .into(),
            ),
            // Deleting the EdgeDevice deletes its tokens.
            owner_references: Some(vec![OwnerReference {
                api_version: EdgeDevice::api_version(&()).into_owned(),
                kind: EdgeDevice::kind(&()).into_owned(),
                name: device.name_any(),
                uid,
                ..Default::default()
            }]),
            ..Default::default()
        },
        type_: Some(SECRET_TYPE.to_string()),
        data: Some(data),
        ..Default::default()
    };
    let api: Api<Secret> = Api::namespaced(client, namespace);
    api.create(&PostParams::default(), &secret).await?;
    Ok(Created {
        token,
        expires,
        secret: name,
    })
}

/// The token `id` if it lets `device` bootstrap at `now`.
pub async fn check(
    client: Client,
    namespace: &str,
    id: &str,
    device: &EdgeDevice,
    now: SystemTime,
) -> Result<Result<BootstrapToken, Refusal>, kube::Error> {
    if !BootstrapToken::is_id(id) {
        return Ok(Err(Refusal::Unknown(id.to_string())));
    }
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let Some(secret) = api.get_opt(&format!("{SECRET_PREFIX}{id}")).await? else {
        return Ok(Err(Refusal::Unknown(id.to_string())));
    };
    Ok(validate(&secret, id, device, now))
}

fn validate(
    secret: &Secret,
    id: &str,
    device: &EdgeDevice,
    now: SystemTime,
) -> Result<BootstrapToken, Refusal> {
    if secret.type_.as_deref() != Some(SECRET_TYPE) {
        return Err(Refusal::Unknown(id.to_string()));
    }
    let field = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| std::str::from_utf8(&v.0).ok())
            .unwrap_or_default()
            .to_string()
    };
    let malformed = || Refusal::Malformed(id.to_string());
    let owner = field(DEVICE);
    if owner != device.name_any() {
        return Err(Refusal::OtherDevice {
            id: id.to_string(),
            owner,
            device: device.name_any(),
        });
    }
    if Some(field(DEVICE_UID)) != device.uid() {
        return Err(Refusal::Recreated(id.to_string()));
    }
    if field(ROTATION) != device.spec.identity.rotation.to_string() {
        return Err(Refusal::Rotated(id.to_string()));
    }
    let expiration = field(EXPIRATION);
    let expires: jiff::Timestamp = expiration.parse().map_err(|_| malformed())?;
    let now = jiff::Timestamp::try_from(now).map_err(|_| malformed())?;
    if now >= expires {
        return Err(Refusal::Expired {
            id: id.to_string(),
            at: expiration,
        });
    }
    let token = BootstrapToken::parse(&format!("{}.{}", field(ID), field(SECRET)))
        .map_err(|_| malformed())?;
    if token.id() != id {
        return Err(malformed());
    }
    Ok(token)
}

/// A device name as a label value: names longer than a label allows are
/// cut (the label only helps `kubectl get -l`; the data field decides).
fn label_value(name: &str) -> String {
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::EdgeDeviceSpec;

    fn device(name: &str, uid: &str, rotation: u32) -> EdgeDevice {
        let mut spec: EdgeDeviceSpec = serde_json::from_value(serde_json::json!({
            "connectivity": { "methods": [{ "name": "grpc" }] },
        }))
        .expect("spec");
        spec.identity.rotation = rotation;
        let mut d = EdgeDevice::new(name, spec);
        d.metadata.uid = Some(uid.to_string());
        d
    }

    fn secret_for(d: &EdgeDevice, token: &BootstrapToken, expires: SystemTime) -> Secret {
        let data = [
            (ID, token.id().to_string()),
            (SECRET, token.secret().to_string()),
            (DEVICE, d.name_any()),
            (DEVICE_UID, d.uid().unwrap_or_default()),
            (ROTATION, d.spec.identity.rotation.to_string()),
            (EXPIRATION, ::identity::cert::rfc3339(expires)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect();
        Secret {
            type_: Some(SECRET_TYPE.into()),
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn a_token_is_good_for_its_device_until_it_expires() {
        let now = SystemTime::now();
        let d = device("edge-1", "uid-1", 0);
        let token = BootstrapToken::generate();
        let secret = secret_for(&d, &token, now + Duration::from_secs(60));
        let ok = validate(&secret, token.id(), &d, now).expect("valid");
        assert_eq!(ok.expose(), token.expose());

        assert!(matches!(
            validate(&secret, token.id(), &d, now + Duration::from_secs(61)),
            Err(Refusal::Expired { .. })
        ));
        assert!(matches!(
            validate(&secret, token.id(), &device("edge-2", "uid-1", 0), now),
            Err(Refusal::OtherDevice { .. })
        ));
        assert!(matches!(
            validate(&secret, token.id(), &device("edge-1", "uid-2", 0), now),
            Err(Refusal::Recreated(_))
        ));
        assert!(matches!(
            validate(&secret, token.id(), &device("edge-1", "uid-1", 1), now),
            Err(Refusal::Rotated(_))
        ));
        let mut other_type = secret.clone();
        other_type.type_ = Some("Opaque".into());
        assert!(matches!(
            validate(&other_type, token.id(), &d, now),
            Err(Refusal::Unknown(_))
        ));
    }

    #[test]
    fn label_values_fit() {
        assert_eq!(label_value("edge-1"), "edge-1");
        assert_eq!(label_value(&"a".repeat(80)).len(), 63);
    }
}
