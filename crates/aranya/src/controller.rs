//! Reconciles EdgeDevices: a finalizer, a running virtual node for each, and
//! on deletion the Node and Lease removed before the EdgeDevice goes.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::{
    certificates::v1::CertificateSigningRequest, coordination::v1::Lease, core::v1::Node,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams},
    runtime::{
        Controller,
        controller::Action,
        finalizer::{Event, finalizer},
        watcher,
    },
};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::{
    crd::{EdgeDevice, FINALIZER},
    hub::Hub,
    virtualnode::{self, LABEL_DEVICE, LEASE_NAMESPACE, NodeCmd, NodeEnv},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<kube::Error>>),
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

struct Context {
    client: Client,
    hub: Arc<Hub>,
    env: Arc<NodeEnv>,
    nodes: Mutex<HashMap<String, virtualnode::Handle>>,
}

/// Runs until the watch streams end.
pub async fn run(client: Client, hub: Arc<Hub>, env: Arc<NodeEnv>, selector: String) {
    let devices: Api<EdgeDevice> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let ctx = Arc::new(Context {
        client,
        hub,
        env,
        nodes: Mutex::new(HashMap::new()),
    });
    let device_watch = if selector.is_empty() {
        watcher::Config::default()
    } else {
        watcher::Config::default().labels(&selector)
    };
    Controller::new(devices, device_watch)
        // A Node deleted by someone else is put back.
        .owns(nodes, watcher::Config::default().labels(LABEL_DEVICE))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
}

async fn reconcile(device: Arc<EdgeDevice>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<EdgeDevice> = Api::all(ctx.client.clone());
    finalizer(&api, FINALIZER, device, |event| async {
        match event {
            Event::Apply(device) => apply(device, &ctx).await,
            Event::Cleanup(device) => cleanup(device, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn apply(device: Arc<EdgeDevice>, ctx: &Context) -> Result<Action, kube::Error> {
    let name = device.name_any();
    let mut nodes = ctx.nodes.lock().await;
    let methods = device
        .spec
        .connectivity
        .methods
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    let handle = match nodes.get(&name) {
        Some(handle) if !handle.cmds.is_closed() => handle,
        _ => {
            info!(device = %name, "starting virtual node");
            let handle = virtualnode::spawn(ctx.env.clone(), name.clone());
            nodes.insert(name.clone(), handle);
            &nodes[&name]
        }
    };
    let devices: Api<EdgeDevice> = Api::all(ctx.client.clone());
    let identity = crate::identity::status::ensure_id(&devices, &device).await?;
    ctx.hub
        .register(&name, handle.cmds.clone(), methods, Some(identity))
        .await;
    let _ = handle
        .cmds
        .send(NodeCmd::Spec(Box::new((*device).clone())))
        .await;
    Ok(Action::requeue(Duration::from_secs(300)))
}

async fn cleanup(device: Arc<EdgeDevice>, ctx: &Context) -> Result<Action, kube::Error> {
    let name = device.name_any();
    info!(device = %name, "EdgeDevice deleted: removing its virtual node");
    ctx.hub.unregister(&name).await;
    if let Some(handle) = ctx.nodes.lock().await.remove(&name) {
        handle.stop().await;
    }
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), LEASE_NAMESPACE);
    delete_if_present(nodes.delete(&name, &DeleteParams::default()).await)?;
    delete_if_present(leases.delete(&name, &DeleteParams::default()).await)?;
    let csrs: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let mine =
        ListParams::default().labels(&format!("{}={name}", crate::kubelet::cert::LABEL_NODE));
    delete_if_present(
        csrs.delete_collection(&DeleteParams::default(), &mine)
            .await,
    )?;
    Ok(Action::await_change())
}

fn delete_if_present<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

fn error_policy(device: Arc<EdgeDevice>, error: &Error, _: Arc<Context>) -> Action {
    warn!(device = %device.name_any(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}
