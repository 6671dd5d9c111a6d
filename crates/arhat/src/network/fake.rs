//! A pod network in memory, for unit tests of pod management: addresses
//! 10.0.0.1, 10.0.0.2, ... in attach order.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    path::Path,
    sync::Mutex,
};

use super::{NetworkError, PodNetwork};
use crate::runtime::PortMapping;

#[derive(Debug, Default)]
pub struct FakeNetwork {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    attached: HashMap<String, IpAddr>,
    next: u32,
    /// Every sandbox ever detached, in order.
    detached: Vec<String>,
}

impl FakeNetwork {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The sandboxes attached now.
    pub fn attached(&self) -> HashSet<String> {
        self.lock().attached.keys().cloned().collect()
    }

    pub fn detached(&self) -> Vec<String> {
        self.lock().detached.clone()
    }
}

#[async_trait::async_trait]
impl PodNetwork for FakeNetwork {
    async fn attach(
        &self,
        sandbox: &str,
        _netns: &Path,
        _ports: &[PortMapping],
    ) -> Result<IpAddr, NetworkError> {
        let mut state = self.lock();
        state.next += 1;
        let address = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + state.next));
        state.attached.insert(sandbox.to_string(), address);
        Ok(address)
    }

    fn address(&self, sandbox: &str) -> Option<IpAddr> {
        self.lock().attached.get(sandbox).copied()
    }

    async fn detach(&self, sandbox: &str) -> Result<(), NetworkError> {
        let mut state = self.lock();
        if state.attached.remove(sandbox).is_some() {
            state.detached.push(sandbox.to_string());
        }
        Ok(())
    }

    async fn set_pool(&self, _cidrs: &[String]) -> Result<(), NetworkError> {
        Ok(())
    }

    async fn sweep(&self, alive: &HashSet<String>) {
        let stale: Vec<String> = self
            .attached()
            .into_iter()
            .filter(|id| !alive.contains(id))
            .collect();
        for id in stale {
            let _ = self.detach(&id).await;
        }
    }
}
