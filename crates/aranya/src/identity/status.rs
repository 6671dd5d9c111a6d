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

use crate::crd::EdgeDevice;

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
