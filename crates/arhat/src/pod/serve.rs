//! The pod streams aranya opens: ensure, delete, list, and the pod network.

use std::time::Duration;

use connectivity::{Stream, StreamError};
use proto::api::{DeletePodRequest, PodNetwork, PodSpec, PodStatus, PodStatusList};

use super::PodManager;

/// What a device without a runtime answers: the pod waits, as one whose
/// RuntimeClass handler a kubelet lacks, rather than failing, so that its
/// controller does not replace it again and again (the Node's no-runtime
/// taint keeps the scheduler away; only a pod bound by name gets here).
fn no_runtime(uid: &str) -> PodStatus {
    const REASON: &str = "RuntimeUnavailable";
    let message = "this device runs no container runtime (arhat config runtime.kind: none)";
    PodStatus {
        uid: uid.to_string(),
        phase: "Pending".into(),
        reason: REASON.into(),
        message: message.into(),
        events: vec![proto::api::PodEvent {
            r#type: "Warning".into(),
            reason: REASON.into(),
            message: message.into(),
            time: jiff::Timestamp::now().as_second(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub async fn ensure(
    stream: &mut Stream,
    pods: Option<&std::sync::Arc<PodManager>>,
) -> Result<(), StreamError> {
    let Some(spec) = stream.recv_message::<PodSpec>().await? else {
        return stream.expect_end().await;
    };
    stream.expect_end().await?;
    let status = match pods {
        Some(pods) => pods.ensure(spec),
        None => no_runtime(&spec.uid),
    };
    stream.send_message(&status).await?;
    stream.finish();
    Ok(())
}

pub async fn delete(
    stream: &mut Stream,
    pods: Option<&std::sync::Arc<PodManager>>,
) -> Result<(), StreamError> {
    let Some(request) = stream.recv_message::<DeletePodRequest>().await? else {
        return stream.expect_end().await;
    };
    stream.expect_end().await?;
    let grace = Duration::from_secs(u64::try_from(request.grace_period_seconds).unwrap_or(0));
    let status = match pods {
        Some(pods) => pods.delete(&request.uid, grace).await,
        None => PodStatus {
            uid: request.uid,
            removed: true,
            ..Default::default()
        },
    };
    stream.send_message(&status).await?;
    stream.finish();
    Ok(())
}

pub async fn list(
    stream: &mut Stream,
    pods: Option<&std::sync::Arc<PodManager>>,
) -> Result<(), StreamError> {
    let _ = stream.recv_message::<proto::api::ListPods>().await?;
    stream.expect_end().await?;
    let list = PodStatusList {
        pods: pods.map(|p| p.list()).unwrap_or_default(),
    };
    stream.send_message(&list).await?;
    stream.finish();
    Ok(())
}

/// The pool new pods get addresses from (the Node's pod CIDRs).
pub async fn pod_network(
    stream: &mut Stream,
    pods: Option<&std::sync::Arc<PodManager>>,
) -> Result<(), StreamError> {
    crate::setting::take(
        stream,
        "the Node's pod CIDRs",
        async |network: PodNetwork| {
            match pods {
                Some(pods) => pods.set_pod_pool(&network.pod_cidrs).await,
                // Without a runtime there are no pods to address.
                None => Ok(()),
            }
        },
    )
    .await
}
