//! The runtime axis of the suites, beside [`crate::over_transports`]: each
//! container runtime arhat can run pods on, how a test gets it, and the
//! macro that runs a test once per runtime.
//!
//! The matrix is covered by axis, not by product: the conformance suite and
//! the pod tests marked with [`crate::over_runtimes`] run on every runtime
//! over gRPC; the transport tests run on Docker. A runtime added to
//! [`RUNTIMES`] and, beside it, to the macro's arms gets all of them.

use arhat::config::RuntimeKind;

/// Every runtime that runs pods, in the order tests run on them.
pub const RUNTIMES: &[RuntimeKind] = &[RuntimeKind::Docker];

/// `runtime.kind` as arhat's config spells it, and the tests' names.
pub fn name(kind: RuntimeKind) -> &'static str {
    match kind {
        RuntimeKind::Docker => "docker",
        RuntimeKind::None => "none",
    }
}

/// What to do when the runtime's daemon does not answer: the failure
/// message says it, so a missing runtime never passes silently.
pub fn how_to_get(kind: RuntimeKind) -> &'static str {
    match kind {
        RuntimeKind::Docker => {
            "install Debian's docker.io and start dockerd (scripts/docker.sh does both; make test runs it)"
        }
        RuntimeKind::None => "`none` runs no pods",
    }
}

/// Runs a test on every runtime of [`RUNTIMES`]: a module named after the
/// test holds one `#[tokio::test]` per runtime (`<test>::docker`); the body
/// gets the [`RuntimeKind`].
#[macro_export]
macro_rules! over_runtimes {
    ($(#[$attr:meta])* async fn $name:ident($k:ident) -> $ret:ty $body:block) => {
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($k: ::arhat::config::RuntimeKind) -> $ret $body

            #[tokio::test(flavor = "multi_thread")]
            async fn docker() -> $ret {
                body(::arhat::config::RuntimeKind::Docker).await
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runtime_has_a_config_name_arhat_accepts() {
        for &kind in RUNTIMES {
            let yaml = format!("kind: {}", name(kind));
            let parsed: arhat::config::RuntimeConfig =
                serde_norway::from_str(&yaml).expect("arhat accepts the name");
            assert_eq!(parsed.kind, kind);
        }
    }
}
