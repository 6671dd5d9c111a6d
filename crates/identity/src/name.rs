//! The names a device certificate carries.

/// Prefix of the URI SAN naming a device's identity.
pub const URI_PREFIX: &str = "urn:aranya.arhat.dev:device:";

/// The URI SAN for `device` with identity id `identity`.
pub fn uri(device: &str, identity: &str) -> String {
    format!("{URI_PREFIX}{device}:{identity}")
}

/// The device and identity id a URI SAN names, if it is one of ours.
pub fn parse_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix(URI_PREFIX)?;
    let (device, identity) = rest.split_once(':')?;
    (is_device_name(device) && is_identity_id(identity)).then_some((device, identity))
}

/// A fresh identity id (a random UUID).
pub fn new_identity_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An identity id as [`new_identity_id`] makes them.
pub fn is_identity_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok() && id.len() == 36
}

/// A Node name: a DNS subdomain (lowercase letters, digits, `-`, `.`).
pub fn is_device_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trips() {
        let id = new_identity_id();
        let uri = uri("edge-1.lab", &id);
        assert_eq!(parse_uri(&uri), Some(("edge-1.lab", id.as_str())));
    }

    #[test]
    fn foreign_or_malformed_uris_are_not_ours() {
        let id = new_identity_id();
        for bad in [
            format!("spiffe://x/{id}"),
            format!("{URI_PREFIX}edge-1"),
            format!("{URI_PREFIX}Edge_1:{id}"),
            format!("{URI_PREFIX}edge-1:not-a-uuid"),
            format!("{URI_PREFIX}edge-1:{id}:extra"),
            format!("{URI_PREFIX}:{id}"),
        ] {
            assert_eq!(parse_uri(&bad), None, "{bad}");
        }
    }

    #[test]
    fn device_names() {
        assert!(is_device_name("edge-1"));
        assert!(is_device_name("a.b-c.d"));
        for bad in ["", "-a", "a-", "A", "a_b", "a..b", ":", &"a".repeat(64)] {
            assert!(!is_device_name(bad), "{bad}");
        }
    }
}
