//! Which pods a device takes at all, by its EdgeDevice's `spec.pod.admission`,
//! and how a refused pod ends. One the policy refuses stays Pending with
//! the reason and a Warning event, as a pod whose RuntimeClass a kubelet
//! lacks: failed, its controller would replace it, the scheduler would place
//! the new one on the same device, and so on without end. One whose volumes
//! the device cannot provide ends Failed, as a kubelet's admission failure.

use k8s_openapi::api::core::v1::Pod;
use kube::{ResourceExt, core::SelectorExt};
use proto::api::{PodEvent, PodStatus, refusal};

use crate::{
    crd::{DaemonSetAdmission, PodAdmission},
    virtualnode::TAINT_EDGE,
};

/// The reason a pod refused by the EdgeDevice's policy carries.
pub const REASON_POLICY: &str = "EdgeDevicePolicy";
/// The reason a pod carries whose volumes the device cannot provide.
pub const REASON_VOLUME: &str = "UnsupportedVolume";

/// Reasons of refusals made here (the device's are in
/// [`proto::api::refusal`]): such a pod is final and never sent (again).
const FINAL_REASONS: &[&str] = &[REASON_POLICY, REASON_VOLUME];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

/// Whether the device's policy takes `pod`.
pub fn check(policy: &PodAdmission, device: &str, pod: &Pod) -> Result<(), Rejection> {
    let refuse = |field: &str, why: String| Rejection {
        reason: REASON_POLICY,
        message: format!("Pod was rejected: EdgeDevice {device} spec.pod.admission.{field}: {why}"),
    };
    let namespace = pod.namespace().unwrap_or_default();
    if !policy.namespaces.is_empty() && !policy.namespaces.contains(&namespace) {
        return Err(refuse(
            "namespaces",
            format!("namespace {namespace:?} is not listed"),
        ));
    }
    if let Some(selector) = &policy.pod_selector {
        let selector = kube::core::Selector::try_from(selector.clone())
            .map_err(|e| refuse("podSelector", format!("invalid selector: {e}")))?;
        if !selector.matches(pod.labels()) {
            return Err(refuse(
                "podSelector",
                "the pod's labels do not match".into(),
            ));
        }
    }
    let daemon_set = pod
        .owner_references()
        .iter()
        .find(|o| o.kind == "DaemonSet" && o.controller == Some(true));
    if let Some(owner) = daemon_set {
        match policy.daemon_sets {
            DaemonSetAdmission::All => {}
            DaemonSetAdmission::None => {
                return Err(refuse(
                    "daemonSets",
                    format!("DaemonSet {} is refused (None)", owner.name),
                ));
            }
            DaemonSetAdmission::EdgeTolerating => {
                let names_edge = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.tolerations.as_ref())
                    .is_some_and(|ts| ts.iter().any(|t| t.key.as_deref() == Some(TAINT_EDGE)));
                if !names_edge {
                    return Err(refuse(
                        "daemonSets",
                        format!(
                            "DaemonSet {} does not tolerate the {TAINT_EDGE} taint by name \
                             (EdgeTolerating: a toleration of every taint does not count)",
                            owner.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A pod refused before it reached the device, or by it, stays refused.
pub fn is_final(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        let reason = s.reason.as_deref().unwrap_or_default();
        match s.phase.as_deref() {
            Some("Failed") => FINAL_REASONS.contains(&reason) || refusal::REASONS.contains(&reason),
            Some("Pending") => reason == REASON_POLICY,
            _ => false,
        }
    })
}

/// The phase a refusal leaves the pod in (see the module's doc).
fn phase(reason: &str) -> &'static str {
    if reason == REASON_POLICY {
        "Pending"
    } else {
        "Failed"
    }
}

/// The status of a refused pod, with the kubelet's Warning event.
pub fn rejected(pod: &Pod, rejection: &Rejection) -> PodStatus {
    PodStatus {
        uid: pod.uid().unwrap_or_default(),
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        phase: phase(rejection.reason).into(),
        reason: rejection.reason.into(),
        message: rejection.message.clone(),
        events: vec![PodEvent {
            r#type: "Warning".into(),
            reason: rejection.reason.into(),
            message: rejection.message.clone(),
            time: jiff::Timestamp::now().as_second(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use serde_json::json;

    use super::*;

    fn pod(
        namespace: &str,
        labels: serde_json::Value,
        daemon_set: bool,
        tolerations: serde_json::Value,
    ) -> Pod {
        let owners = if daemon_set {
            json!([{ "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "kube-proxy", "uid": "d", "controller": true }])
        } else {
            json!([])
        };
        serde_json::from_value(json!({
            "metadata": { "name": "p", "namespace": namespace, "labels": labels, "ownerReferences": owners },
            "spec": { "containers": [], "tolerations": tolerations },
        }))
        .expect("a pod")
    }

    #[test]
    fn daemon_sets_must_name_the_edge_taint_by_default() {
        let policy = PodAdmission::default();
        let everything = json!([{ "operator": "Exists" }]);
        let refused = check(
            &policy,
            "dev",
            &pod("kube-system", json!({}), true, everything.clone()),
        )
        .expect_err("a DaemonSet tolerating every taint is refused");
        assert_eq!(refused.reason, REASON_POLICY);
        assert!(
            refused.message.contains("spec.pod.admission.daemonSets"),
            "{}",
            refused.message
        );
        let edge = json!([{ "key": TAINT_EDGE, "operator": "Exists" }]);
        assert_eq!(
            check(&policy, "dev", &pod("ns", json!({}), true, edge)),
            Ok(())
        );
        assert_eq!(
            check(
                &policy,
                "dev",
                &pod("ns", json!({}), false, everything.clone())
            ),
            Ok(())
        );
        let all = PodAdmission {
            daemon_sets: DaemonSetAdmission::All,
            ..Default::default()
        };
        assert_eq!(
            check(
                &all,
                "dev",
                &pod("kube-system", json!({}), true, everything)
            ),
            Ok(())
        );
    }

    #[test]
    fn namespaces_and_selector_narrow_what_runs() {
        let policy = PodAdmission {
            namespaces: vec!["edge".into()],
            pod_selector: Some(LabelSelector {
                match_labels: Some([("tier".to_string(), "edge".to_string())].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ok = pod("edge", json!({ "tier": "edge" }), false, json!([]));
        assert_eq!(check(&policy, "dev", &ok), Ok(()));
        let other_ns = check(
            &policy,
            "dev",
            &pod("web", json!({ "tier": "edge" }), false, json!([])),
        );
        assert!(
            other_ns
                .expect_err("refused")
                .message
                .contains("admission.namespaces")
        );
        let unlabelled = check(&policy, "dev", &pod("edge", json!({}), false, json!([])));
        assert!(
            unlabelled
                .expect_err("refused")
                .message
                .contains("admission.podSelector")
        );
    }

    #[test]
    fn a_policy_refusal_waits_and_a_volume_refusal_fails_and_both_stay_refused() {
        let mut p = pod("ns", json!({}), false, json!([]));
        for (reason, phase) in [(REASON_POLICY, "Pending"), (REASON_VOLUME, "Failed")] {
            let status = rejected(
                &p,
                &Rejection {
                    reason,
                    message: "why".into(),
                },
            );
            assert_eq!(status.phase, phase);
            assert_eq!(status.events[0].r#type, "Warning");
            p.status = Some(k8s_openapi::api::core::v1::PodStatus {
                phase: Some(status.phase),
                reason: Some(status.reason),
                ..Default::default()
            });
            assert!(is_final(&p), "{reason}");
        }
        // A pod Pending for any other reason is not refused.
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Pending".into()),
            reason: Some(REASON_VOLUME.into()),
            ..Default::default()
        });
        assert!(!is_final(&p));
    }
}
