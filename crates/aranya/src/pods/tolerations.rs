//! A device's offline allowance as pod tolerations: the node-lifecycle
//! controller taints a device that stopped answering with not-ready or
//! unreachable (NoExecute), and the taint-eviction controller evicts each pod
//! once its toleration of that taint runs out. Pods bound to a device that
//! may be offline for a while get that long, at least.

use k8s_openapi::api::core::v1::{Taint, Toleration};

pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// The pod's tolerations with the not-ready and unreachable NoExecute taints
/// tolerated for at least `seconds`; `None` when they already are.
///
/// The eviction controller uses, per taint, the first toleration that
/// matches it, so that one's `tolerationSeconds` is raised (the only change
/// the apiserver allows to an existing toleration); a taint nothing matches
/// gets a toleration of its own. A shorter time is never imposed: a pod that
/// tolerates longer (or forever) keeps that.
pub fn raised(tolerations: &[Toleration], seconds: i64) -> Option<Vec<Toleration>> {
    let mut out = tolerations.to_vec();
    let mut changed = false;
    for key in [NOT_READY, UNREACHABLE] {
        let taint = Taint {
            key: key.to_string(),
            effect: "NoExecute".into(),
            ..Default::default()
        };
        match out.iter_mut().find(|t| tolerates(t, &taint)) {
            Some(t) => {
                if t.toleration_seconds.is_some_and(|s| s < seconds) {
                    t.toleration_seconds = Some(seconds);
                    changed = true;
                }
            }
            None => {
                out.push(Toleration {
                    key: Some(key.to_string()),
                    operator: Some("Exists".into()),
                    effect: Some("NoExecute".into()),
                    toleration_seconds: Some(seconds),
                    value: None,
                });
                changed = true;
            }
        }
    }
    changed.then_some(out)
}

/// Whether `t` tolerates `taint` (the scheduler's rule, for a valueless taint).
fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = t.key.as_deref().unwrap_or_default();
    let exists = t.operator.as_deref() == Some("Exists");
    let key_ok = if key.is_empty() {
        exists
    } else {
        key == taint.key
    };
    let value_ok = exists || t.value.as_deref().unwrap_or_default().is_empty();
    effect_ok && key_ok && value_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toleration(key: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: (!key.is_empty()).then(|| key.to_string()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: seconds,
            value: None,
        }
    }

    #[test]
    fn the_admission_defaults_are_raised_in_place() {
        let defaults = [
            toleration(NOT_READY, Some(300)),
            toleration(UNREACHABLE, Some(300)),
        ];
        let out = raised(&defaults, 3600).expect("changed");
        assert_eq!(
            out,
            [
                toleration(NOT_READY, Some(3600)),
                toleration(UNREACHABLE, Some(3600))
            ]
        );
        assert_eq!(raised(&out, 3600), None, "idempotent");
        assert_eq!(raised(&defaults, 60), None, "never shortened");
    }

    #[test]
    fn forever_and_wildcards_count_and_missing_ones_are_added() {
        assert_eq!(raised(&[toleration("", None)], 3600), None);
        let out = raised(&[toleration(NOT_READY, None)], 60).expect("changed");
        assert_eq!(
            out,
            [
                toleration(NOT_READY, None),
                toleration(UNREACHABLE, Some(60))
            ]
        );
        // A NoSchedule toleration does not keep a pod through a NoExecute taint.
        let no_schedule = Toleration {
            effect: Some("NoSchedule".into()),
            ..toleration(NOT_READY, None)
        };
        let out = raised(std::slice::from_ref(&no_schedule), 60).expect("changed");
        assert_eq!(out.len(), 3);
    }
}
