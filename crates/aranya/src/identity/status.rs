//! The identity in the EdgeDevice's status: the id its certificates must
//! name (made anew for each `spec.identity.rotation`, and for a new
//! EdgeDevice of the same name, since status is its own), and the
//! certificate the device last connected with.

use ::identity::DeviceCert;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tracing::info;

use crate::crd::{EdgeDevice, IdentityStatus};

/// The device's current identity id, made (and written) when it has none
/// or its rotation was raised.
pub async fn ensure_id(api: &Api<EdgeDevice>, device: &EdgeDevice) -> Result<String, kube::Error> {
    let rotation = device.spec.identity.rotation;
    let status = device.status.as_ref().and_then(|s| s.identity.as_ref());
    if let Some(status) = status
        && status.rotation == rotation
        && let Some(id) = &status.id
    {
        return Ok(id.clone());
    }
    let id = ::identity::name::new_identity_id();
    let patch = json!({ "status": { "identity": {
        "id": id,
        "rotation": rotation,
        "serial": null,
        "notAfter": null,
    }}});
    api.patch_status(
        &device.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    if status.is_some() {
        info!(device = %device.name_any(), rotation, "identity rotated: earlier certificates and tokens are revoked");
    }
    Ok(id)
}

/// The current identity id, read fresh (signing must not trust a cache).
pub async fn current_id(api: &Api<EdgeDevice>, device: &str) -> Option<String> {
    api.get_opt(device)
        .await
        .ok()
        .flatten()?
        .status?
        .identity?
        .id
}

/// Records the certificate a device connected with, if it changed.
pub async fn record_certificate(
    api: &Api<EdgeDevice>,
    cert: &DeviceCert,
) -> Result<(), kube::Error> {
    let patch = json!({ "status": { "identity": {
        "serial": cert.serial,
        "notAfter": cert.not_after_rfc3339(),
    }}});
    api.patch_status(&cert.device, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The EdgeDevice's `Identity` condition: whether the device holds a
/// certificate for its current identity that is still valid.
pub fn condition(
    device: &str,
    status: Option<&IdentityStatus>,
    now: std::time::SystemTime,
) -> (bool, &'static str, String) {
    let enrol = format!(
        "the device bootstraps with a token (aranya bootstrap-token create --device {device})"
    );
    let Some(status) = status else {
        return (false, "NoIdentity", "no identity assigned yet".into());
    };
    let (Some(serial), Some(not_after)) = (&status.serial, &status.not_after) else {
        return (
            false,
            "NotEnrolled",
            format!("no certificate for the current identity yet: {enrol}"),
        );
    };
    let expired = not_after
        .parse::<jiff::Timestamp>()
        .is_ok_and(|t| std::time::SystemTime::from(t) <= now);
    if expired {
        (
            false,
            "CertificateExpired",
            format!("certificate {serial} expired at {not_after}: {enrol}"),
        )
    } else {
        (
            true,
            "CertificateValid",
            format!("certificate {serial} valid until {not_after}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn the_condition_says_what_the_operator_must_do() {
        let now = SystemTime::now();
        let at = |t: SystemTime| jiff::Timestamp::try_from(t).expect("time").to_string();
        let (ok, reason, _) = condition("edge-1", None, now);
        assert!(!ok);
        assert_eq!(reason, "NoIdentity");
        let mut status = IdentityStatus {
            id: Some("id".into()),
            ..Default::default()
        };
        let (ok, reason, message) = condition("edge-1", Some(&status), now);
        assert_eq!((ok, reason), (false, "NotEnrolled"));
        assert!(
            message.contains("bootstrap-token create --device edge-1"),
            "{message}"
        );
        status.serial = Some("0abc".into());
        status.not_after = Some(at(now + Duration::from_secs(60)));
        let (ok, reason, message) = condition("edge-1", Some(&status), now);
        assert_eq!((ok, reason), (true, "CertificateValid"));
        assert!(message.contains("0abc"), "{message}");
        status.not_after = Some(at(now - Duration::from_secs(1)));
        let (ok, reason, _) = condition("edge-1", Some(&status), now);
        assert_eq!((ok, reason), (false, "CertificateExpired"));
    }
}
