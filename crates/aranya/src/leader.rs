//! One active aranya at a time, through a coordination Lease. A replica that
//! loses the Lease stops (its supervisor restarts it as a standby), as the
//! Kubernetes control-plane components do. Whether another holder's Lease
//! lapsed is judged by this replica's own clock (`lease::Observer`), never by
//! the times in it, so replicas with clocks apart do not take it from each
//! other.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tracing::{debug, info, warn};

use crate::lease::{Observer, renew_time};

pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    observer: Arc<Mutex<Observer>>,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            observer: Arc::default(),
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        let mut logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(identity = %self.identity, lease = %self.name, "became leader");
                    return;
                }
                Ok(false) if !logged => {
                    info!(identity = %self.identity, "another replica leads; standing by");
                    logged = true;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(RENEW_INTERVAL).await;
        }
    }

    /// Renews the Lease until another replica holds it; returns then.
    ///
    /// While the apiserver does not answer, this replica carries on with its
    /// devices rather than stopping: when the apiserver is down for every
    /// replica (an upgrade, a restart), none can take the Lease, and stopping
    /// would only drop every device. Once it answers, a Lease that another
    /// replica took meanwhile ends this one's leadership.
    pub async fn hold(&self) {
        let mut last_renewed = tokio::time::Instant::now();
        let mut lapsed = false;
        loop {
            tokio::time::sleep(RENEW_INTERVAL).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    if lapsed {
                        info!(
                            after = ?last_renewed.elapsed(),
                            "renewed the leader Lease again: the apiserver answers"
                        );
                        lapsed = false;
                    }
                    last_renewed = tokio::time::Instant::now();
                }
                Ok(false) => {
                    warn!("leader Lease taken by another replica");
                    return;
                }
                Err(e) if lapsed => debug!(error = %e, "renewing leader Lease"),
                Err(e) => {
                    warn!(error = %e, "renewing leader Lease");
                    if last_renewed.elapsed() > LEASE_DURATION - RENEW_INTERVAL {
                        warn!(
                            "the leader Lease lapses: carrying on with the devices until the apiserver answers"
                        );
                        lapsed = true;
                    }
                }
            }
        }
    }

    /// Gives the Lease up so a standby takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(self.identity.as_str())
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            let _ = self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await;
        }
    }

    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(renew_time(None, Timestamp::now()), None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let acquired = spec.acquire_time.clone();
        let now = renew_time(spec.renew_time.as_ref(), Timestamp::now());
        if holder == self.identity {
            lease.spec = Some(self.spec(now, acquired, transitions));
        } else {
            let expired = spec.renew_time.is_none()
                || self
                    .observer
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .expired(&spec, Instant::now());
            if !holder.is_empty() && !expired {
                debug!(%holder, "Lease held");
                return Ok(false);
            }
            lease.spec = Some(self.spec(now.clone(), Some(now), transitions + 1));
        }
        // The resourceVersion in `lease` makes this a compare-and-swap.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, now: MicroTime, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }
}
