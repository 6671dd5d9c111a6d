//! An in-memory runtime for unit tests of pod management: sandboxes and
//! containers with the states a real runtime reports, driven by the test
//! (a container exits, a sandbox dies, the runtime goes away) and recording
//! what was asked of it. Containers act on their command: `["exit", "N"]`
//! exits with N as soon as it starts; anything else runs until stopped.
//! Exec in a running container exits with the code the test set for that
//! command ([`Fake::set_exec`]), 0 by default, and is recorded in order.
//! [`Fake::keeping_no_logs`] is a runtime that keeps no logs: a container's
//! output is its command's words on one line of stdout, ending when it exits.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use tokio::sync::watch;

use super::{
    ContainerInfo, ContainerSpec, ContainerState, ExecSpec, Labelled, LogOptions, LogOutput,
    LogStream, Mount, Output, Process, ProcessHandle, PullAuth, Runtime, RuntimeError, Sandbox,
    SandboxSpec,
};

/// What a logs call returns.
pub type MakeLogs = dyn Fn() -> LogStream + Send + Sync;

/// One object: a sandbox or a container.
#[derive(Debug)]
pub struct Object {
    pub labels: HashMap<String, String>,
    pub command: Vec<String>,
    pub mounts: Vec<Mount>,
    /// Its state, watched by waiters; `None` once removed.
    state: watch::Sender<Option<ContainerState>>,
}

impl Object {
    fn state(&self) -> Option<ContainerState> {
        self.state.borrow().clone()
    }

    fn running(&self) -> bool {
        matches!(self.state(), Some(ContainerState::Running { .. }))
    }
}

#[derive(Default)]
struct Objects {
    by_id: HashMap<String, Object>,
    sandboxes: u64,
    containers: u64,
}

impl Objects {
    /// Ids of the objects whose labels include these, sandboxes first, each
    /// kind oldest first.
    fn matching(&self, labels: &[(&str, &str)]) -> Vec<String> {
        let mut found: Vec<&String> = self
            .by_id
            .iter()
            .filter(|(_, o)| {
                labels
                    .iter()
                    .all(|(k, v)| o.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(id, _)| id)
            .collect();
        found.sort_by_key(|id| (!id.starts_with('s'), id[1..].parse::<u64>().unwrap_or(0)));
        found.into_iter().cloned().collect()
    }
}

pub struct Fake {
    objects: Mutex<Objects>,
    down: AtomicBool,
    /// Image references that resolve (locally or by a pull).
    images: Mutex<HashSet<String>>,
    logs: Box<MakeLogs>,
    /// Every logs call: container id and options.
    pub asked: Mutex<Vec<(String, LogOptions)>>,
    /// Every call by name, in order: what a test asserts on. An exec is
    /// `exec <command words>`.
    pub calls: Mutex<Vec<String>>,
    /// Exit codes of exec commands (words joined by spaces); 0 if absent.
    exec_codes: Mutex<HashMap<String, i32>>,
    keeps_logs: bool,
    /// How long a sandbox's creation takes.
    slow_creates: Mutex<Duration>,
}

impl std::fmt::Debug for Fake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fake")
            .field("objects", &lock(&self.objects).by_id)
            .finish_non_exhaustive()
    }
}

impl Default for Fake {
    fn default() -> Self {
        Self::with_logs(|| futures::stream::empty().boxed())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl Fake {
    pub fn with_logs(logs: impl Fn() -> LogStream + Send + Sync + 'static) -> Self {
        Self {
            objects: Mutex::default(),
            down: AtomicBool::new(false),
            images: Mutex::new(HashSet::from(["img".to_string()])),
            logs: Box::new(logs),
            asked: Mutex::default(),
            calls: Mutex::default(),
            exec_codes: Mutex::default(),
            keeps_logs: true,
            slow_creates: Mutex::default(),
        }
    }

    /// Creating a sandbox takes `took` from now on.
    pub fn slow_creates(&self, took: Duration) {
        *lock(&self.slow_creates) = took;
    }

    /// A runtime that keeps no logs and hands over containers' output.
    pub fn keeping_no_logs() -> Self {
        Self {
            keeps_logs: false,
            ..Self::default()
        }
    }

    /// Exec of `command` exits with `code` from now on.
    pub fn set_exec(&self, command: &[&str], code: i32) {
        lock(&self.exec_codes).insert(command.join(" "), code);
    }

    /// Calls whose name starts with `prefix`, in order.
    pub fn calls_like(&self, prefix: &str) -> Vec<String> {
        lock(&self.calls)
            .iter()
            .filter(|c| c.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The runtime stops answering (every call fails with Unavailable and
    /// every wait ends) or answers again; objects stay as they were.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            // Waits are connections to the runtime: they break.
            for o in lock(&self.objects).by_id.values() {
                o.state.send_modify(|_| {});
            }
        }
    }

    /// The object's process ends with `code` (a sandbox dies, a container exits).
    pub fn exit(&self, id: &str, code: i64) {
        if let Some(o) = lock(&self.objects).by_id.get(id) {
            o.state.send_modify(|s| {
                if let Some(ContainerState::Running { started_at }) = s.clone() {
                    *s = Some(ContainerState::Exited {
                        exit_code: code,
                        started_at,
                        finished_at: now(),
                        oom_killed: false,
                    });
                }
            });
        }
    }

    /// Ids of the objects whose labels include these.
    pub fn find(&self, labels: &[(&str, &str)]) -> Vec<String> {
        lock(&self.objects).matching(labels)
    }

    /// Puts an object in, as an earlier agent run would have left it.
    pub fn insert(&self, sandbox: bool, labels: HashMap<String, String>, running: bool) -> String {
        let state = if running {
            ContainerState::Running { started_at: now() }
        } else {
            ContainerState::Exited {
                exit_code: 0,
                started_at: now(),
                finished_at: now(),
                oom_killed: false,
            }
        };
        self.add(sandbox, labels, Vec::new(), state)
    }

    /// What the container was created with mounted.
    pub fn mounts(&self, id: &str) -> Vec<Mount> {
        lock(&self.objects)
            .by_id
            .get(id)
            .map(|o| o.mounts.clone())
            .unwrap_or_default()
    }

    pub fn state(&self, id: &str) -> Option<ContainerState> {
        lock(&self.objects).by_id.get(id).and_then(Object::state)
    }

    pub fn calls(&self, name: &str) -> usize {
        lock(&self.calls).iter().filter(|c| *c == name).count()
    }

    fn add(
        &self,
        sandbox: bool,
        labels: HashMap<String, String>,
        command: Vec<String>,
        state: ContainerState,
    ) -> String {
        let mut objects = lock(&self.objects);
        let id = if sandbox {
            objects.sandboxes += 1;
            format!("s{}", objects.sandboxes)
        } else {
            objects.containers += 1;
            format!("c{}", objects.containers)
        };
        let (state, _) = watch::channel(Some(state));
        objects.by_id.insert(
            id.clone(),
            Object {
                labels,
                command,
                mounts: Vec::new(),
                state,
            },
        );
        id
    }

    /// Records the call and fails it if the runtime is down.
    fn call(&self, name: &str) -> Result<(), RuntimeError> {
        lock(&self.calls).push(name.to_string());
        if self.down.load(Ordering::SeqCst) {
            return Err(RuntimeError::unavailable("the fake runtime is down"));
        }
        Ok(())
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&Object) -> T) -> Result<T, RuntimeError> {
        lock(&self.objects)
            .by_id
            .get(id)
            .filter(|o| o.state().is_some())
            .map(f)
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))
    }

    /// Resolves when the object is no longer running (`Ok(None)` once removed).
    async fn wait(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        let mut rx = self.with(id, |o| o.state.subscribe())?;
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                Some(ContainerState::Running { .. } | ContainerState::Created) => {}
                other => return Ok(other),
            }
            if rx.changed().await.is_err() || self.down.load(Ordering::SeqCst) {
                return Err(RuntimeError::unavailable("the wait was cut"));
            }
        }
    }
}

#[async_trait::async_trait]
impl Runtime for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn version(&self) -> Result<String, RuntimeError> {
        self.call("version")?;
        Ok("fake://1".into())
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        self.call("image_id")?;
        Ok(lock(&self.images)
            .contains(image)
            .then(|| format!("sha256:{image}")))
    }

    async fn pull_image(&self, image: &str, _: Option<&PullAuth>) -> Result<String, RuntimeError> {
        self.call("pull_image")?;
        if lock(&self.images).contains(image) {
            Ok(format!("sha256:{image}"))
        } else {
            Err(RuntimeError::Pull {
                image: image.to_string(),
                source: "not in the fake registry".into(),
            })
        }
    }

    async fn images_in_use(&self) -> Result<HashSet<String>, RuntimeError> {
        self.call("images_in_use")?;
        Ok(HashSet::new())
    }

    async fn image_info(&self, _: &str) -> Result<Option<(String, u64)>, RuntimeError> {
        self.call("image_info")?;
        Ok(None)
    }

    async fn image_store(&self) -> Result<Option<PathBuf>, RuntimeError> {
        self.call("image_store")?;
        Ok(None)
    }

    async fn remove_image(&self, _: &str) -> Result<(), RuntimeError> {
        self.call("remove_image")
    }

    async fn create_sandbox(&self, spec: &SandboxSpec) -> Result<Sandbox, RuntimeError> {
        self.call("create_sandbox")?;
        let slow = *lock(&self.slow_creates);
        tokio::time::sleep(slow).await;
        let id = self.add(
            true,
            spec.labels.clone(),
            Vec::new(),
            ContainerState::Running { started_at: now() },
        );
        self.sandbox(&id).await
    }

    async fn sandbox(&self, id: &str) -> Result<Sandbox, RuntimeError> {
        self.call("sandbox")?;
        let ready = self.with(id, Object::running)?;
        let n: u8 = id[1..].parse::<u64>().map_or(0, |n| (n % 250) as u8);
        Ok(Sandbox {
            id: id.to_string(),
            ip: Some(format!("10.88.0.{n}")),
            ready,
        })
    }

    async fn wait_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.call("wait_sandbox")?;
        self.wait(id).await.map(drop)
    }

    async fn create_container(
        &self,
        sandbox: &Sandbox,
        spec: &ContainerSpec,
    ) -> Result<String, RuntimeError> {
        self.call("create_container")?;
        if !self.with(&sandbox.id, Object::running)? {
            return Err(RuntimeError::failed(
                "creating a container",
                "cannot join network of a non running container",
            ));
        }
        let command = spec
            .command
            .iter()
            .chain(&spec.args)
            .cloned()
            .collect::<Vec<_>>();
        let id = self.add(false, spec.labels.clone(), command, ContainerState::Created);
        if let Some(o) = lock(&self.objects).by_id.get_mut(&id) {
            o.mounts = spec.mounts.clone();
        }
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.call("start_container")?;
        let command = self.with(id, |o| o.command.clone())?;
        let started_at = now();
        let state = match command.as_slice() {
            [exit, code] if exit == "exit" => ContainerState::Exited {
                exit_code: code.parse().unwrap_or(1),
                started_at,
                finished_at: started_at,
                oom_killed: false,
            },
            _ => ContainerState::Running { started_at },
        };
        self.with(id, |o| o.state.send_replace(Some(state)))?;
        Ok(())
    }

    async fn wait_container(&self, id: &str) -> Result<i64, RuntimeError> {
        self.call("wait_container")?;
        match self.wait(id).await? {
            Some(ContainerState::Exited { exit_code, .. }) => Ok(exit_code),
            _ => Err(RuntimeError::NotFound(id.to_string())),
        }
    }

    async fn stop_container(&self, id: &str, _: Duration) -> Result<(), RuntimeError> {
        self.call("stop_container")?;
        self.with(id, |_| ())?;
        self.exit(id, 143);
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.call("remove_container")?;
        if let Some(o) = lock(&self.objects).by_id.remove(id) {
            o.state.send_replace(None);
        }
        Ok(())
    }

    async fn inspect_container(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        self.call("inspect_container")?;
        let state = self
            .with(id, Object::state)?
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        Ok(ContainerInfo {
            id: id.to_string(),
            image_id: "sha256:img".into(),
            state,
        })
    }

    async fn list_labelled(
        &self,
        labels: &HashMap<String, String>,
    ) -> Result<Vec<Labelled>, RuntimeError> {
        self.call("list_labelled")?;
        let wanted: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let objects = lock(&self.objects);
        Ok(objects
            .matching(&wanted)
            .into_iter()
            .map(|id| {
                let o = &objects.by_id[&id];
                Labelled {
                    running: o.running(),
                    labels: o.labels.clone(),
                    id,
                }
            })
            .collect())
    }

    async fn logs(&self, id: &str, options: &LogOptions) -> Result<LogStream, RuntimeError> {
        self.call("logs")?;
        self.with(id, |_| ())?;
        lock(&self.asked).push((id.to_string(), options.clone()));
        Ok((self.logs)())
    }

    fn keeps_logs(&self) -> bool {
        self.keeps_logs
    }

    async fn output(&self, id: &str) -> Result<Output, RuntimeError> {
        self.call("output")?;
        let (line, mut state) = self.with(id, |o| {
            (
                bytes::Bytes::from(format!("{}\n", o.command.join(" "))),
                o.state.subscribe(),
            )
        })?;
        // Nothing is written before the start: a caller that took the
        // output after the start would have missed the line.
        let mut started = state.clone();
        let line = async move {
            let _ = started
                .wait_for(|s| !matches!(s, Some(ContainerState::Created)))
                .await;
            Ok((LogOutput::Stdout, line))
        };
        let ended = async move {
            let _ = state
                .wait_for(|s| {
                    !matches!(
                        s,
                        Some(ContainerState::Created | ContainerState::Running { .. })
                    )
                })
                .await;
        };
        Ok(futures::stream::once(line)
            .chain(futures::stream::once(ended).filter_map(|()| async { None }))
            .boxed())
    }

    async fn exec(&self, id: &str, spec: &ExecSpec) -> Result<Process, RuntimeError> {
        let command = spec.command.join(" ");
        self.call(&format!("exec {command}"))?;
        if !self.with(id, Object::running)? {
            return Err(RuntimeError::failed(
                "exec",
                format!("container {id} is not running"),
            ));
        }
        let code = lock(&self.exec_codes).get(&command).copied().unwrap_or(0);
        Ok(Process {
            stdin: None,
            output: futures::stream::empty().boxed(),
            handle: std::sync::Arc::new(Exited(code)),
        })
    }

    async fn attach(&self, id: &str, _: &ExecSpec) -> Result<Process, RuntimeError> {
        self.call("attach")?;
        Err(RuntimeError::NotFound(id.into()))
    }

    async fn network_namespace(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        self.call("network_namespace")?;
        self.with(id, |_| PathBuf::from("/proc/self/ns/net"))
    }
}

/// An exec that has already ended with its code.
struct Exited(i32);

impl ProcessHandle for Exited {
    fn resize(&self, _: u16, _: u16) -> futures::future::BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }

    fn exit_code(&self) -> futures::future::BoxFuture<'_, Result<i32, RuntimeError>> {
        Box::pin(async move { Ok(self.0) })
    }

    fn kill(&self) -> futures::future::BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }
}
