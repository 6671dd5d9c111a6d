//! The labels that tie runtime objects to pods and to this device, so a
//! restarted agent finds what it created (by pod UID, since names are
//! reused). Pod management stamps them on every spec; a runtime stores them
//! as given and lists by them.

use std::collections::HashMap;

pub const LABEL_POD_UID: &str = "io.arhat.pod.uid";
/// The device (agent) that created the object: agents sharing one engine
/// never touch each other's pods.
pub const LABEL_DEVICE: &str = "io.arhat.device";
pub const LABEL_POD_NAME: &str = "io.arhat.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.arhat.pod.namespace";
pub const LABEL_CONTAINER: &str = "io.arhat.container.name";
pub const LABEL_ATTEMPT: &str = "io.arhat.container.attempt";
/// The sandbox's container name label value.
pub const SANDBOX: &str = "POD";

/// Which pod (and which container of it) an object belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub device: &'a str,
    pub pod_uid: &'a str,
    pub namespace: &'a str,
    pub pod_name: &'a str,
}

impl Owner<'_> {
    /// The labels of one object: a container (or [`SANDBOX`]) and its attempt.
    pub fn labels(&self, container: &str, attempt: u32) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_DEVICE.to_string(), self.device.to_string()),
            (LABEL_POD_UID.to_string(), self.pod_uid.to_string()),
            (LABEL_POD_NAMESPACE.to_string(), self.namespace.to_string()),
            (LABEL_POD_NAME.to_string(), self.pod_name.to_string()),
            (LABEL_CONTAINER.to_string(), container.to_string()),
            (LABEL_ATTEMPT.to_string(), attempt.to_string()),
        ])
    }
}

/// What selects every object this device's agent made.
pub fn of_device(device: &str) -> HashMap<String, String> {
    HashMap::from([(LABEL_DEVICE.to_string(), device.to_string())])
}

/// What selects every object of one pod of this device.
pub fn of_pod(device: &str, pod_uid: &str) -> HashMap<String, String> {
    let mut labels = of_device(device);
    labels.insert(LABEL_POD_UID.to_string(), pod_uid.to_string());
    labels
}
