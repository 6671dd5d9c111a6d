//! Which sub-protocol an upgrade speaks: the first the client offers (in its
//! order) that we serve, as Kubernetes' `httpstream.Handshake` chooses.

/// The remotecommand protocols over SPDY, newest first. v5 only adds a
/// WebSocket close signal, so a kubelet never picks it over SPDY.
pub const REMOTECOMMAND: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

pub const PORTFORWARD: &[&str] = &["portforward.k8s.io"];

/// The header that carries the offers, one value per line or comma-separated.
pub const HEADER: &str = "X-Stream-Protocol-Version";
/// What a refusal lists.
pub const ACCEPTED_HEADER: &str = "X-Accepted-Stream-Protocol-Versions";

/// The protocol to speak, or `Err` with what we support (for a 403).
pub fn choose<'a>(
    offered: impl IntoIterator<Item = &'a str>,
    supported: &[&'static str],
) -> Result<&'static str, String> {
    let mut any = false;
    for offer in offered
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        if offer.is_empty() {
            continue;
        }
        any = true;
        if let Some(p) = supported.iter().find(|p| **p == offer) {
            return Ok(p);
        }
    }
    if any {
        Err(supported.join(", "))
    } else {
        // No offer: the oldest protocol, as Kubernetes assumes.
        supported.last().copied().ok_or_else(String::new)
    }
}

/// Whether a request asks to upgrade to SPDY/3.1.
pub fn is_spdy_upgrade(upgrade: Option<&str>, connection: Option<&str>) -> bool {
    upgrade.is_some_and(|u| u.eq_ignore_ascii_case("SPDY/3.1"))
        && connection.is_some_and(|c| {
            c.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_offer_we_serve_wins() {
        let offers = [
            "v5.channel.k8s.io",
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
            "v2.channel.k8s.io",
            "channel.k8s.io",
        ];
        assert_eq!(choose(offers, REMOTECOMMAND), Ok("v4.channel.k8s.io"));
        assert_eq!(
            choose(["v2.channel.k8s.io, v4.channel.k8s.io"], REMOTECOMMAND),
            Ok("v2.channel.k8s.io")
        );
        assert_eq!(
            choose(["portforward.k8s.io"], PORTFORWARD),
            Ok("portforward.k8s.io")
        );
        assert!(choose(["v9.channel.k8s.io"], REMOTECOMMAND).is_err());
        assert_eq!(choose([], REMOTECOMMAND), Ok("channel.k8s.io"));
    }

    #[test]
    fn spdy_upgrades() {
        assert!(is_spdy_upgrade(Some("SPDY/3.1"), Some("Upgrade")));
        assert!(is_spdy_upgrade(
            Some("spdy/3.1"),
            Some("keep-alive, upgrade")
        ));
        assert!(!is_spdy_upgrade(Some("websocket"), Some("Upgrade")));
        assert!(!is_spdy_upgrade(None, Some("Upgrade")));
    }
}
