//! The Docker runtime against a real dockerd, through the runtime seam alone:
//! log entries (times, outputs, tail, the since hint, TTY output, following
//! until the container exits) and a missing container. A dockerd that does
//! not answer fails every test, saying how to get one: never a silent pass.

use std::{path::PathBuf, time::Duration};

use arhat::runtime::{
    LogEntry, LogOptions, LogOutput, LogRotation, Runtime, RuntimeError, docker::Docker as Runtimed,
};
use bollard::{
    Docker,
    models::ContainerCreateBody,
    query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder},
};
use futures::StreamExt;

const IMAGE: &str = e2e::images::BUSYBOX;

/// The runtime and a raw client, with the test image in place.
async fn docker() -> (Runtimed, Docker) {
    let runtime = Runtimed::connect(PathBuf::new(), LogRotation::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no dockerd answers ({e}): install Debian's docker.io and start dockerd \
                 (scripts/docker.sh does both; make test runs it)"
            )
        });
    e2e::images::ensure_busybox().expect("importing the test image");
    let client = Docker::connect_with_local_defaults().expect("a docker client");
    (runtime, client)
}

/// A container removed when dropped.
struct Container {
    client: Docker,
    id: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let client = self.client.clone();
        let id = self.id.clone();
        // Drop cannot await; a short runtime of its own does the removal.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let options = RemoveContainerOptionsBuilder::default().force(true).build();
            let _ = rt.block_on(client.remove_container(&id, Some(options)));
        })
        .join()
        .expect("removal thread");
    }
}

async fn run(client: &Docker, name: &str, tty: bool, script: &str) -> Container {
    let name = format!("arhat-logs-test-{name}-{}", std::process::id());
    let body = ContainerCreateBody {
        image: Some(IMAGE.into()),
        cmd: Some(vec!["sh".into(), "-c".into(), script.into()]),
        tty: Some(tty),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    let id = client
        .create_container(Some(options), body)
        .await
        .expect("create")
        .id;
    let container = Container {
        client: client.clone(),
        id,
    };
    client
        .start_container(&container.id, None)
        .await
        .expect("start");
    container
}

async fn wait_exit(client: &Docker, id: &str) {
    let mut wait = client.wait_container(id, None);
    while wait.next().await.is_some() {}
}

async fn entries(runtime: &Runtimed, id: &str, options: LogOptions) -> Vec<LogEntry> {
    let stream = runtime.logs(id, &options).await.expect("logs");
    tokio::time::timeout(Duration::from_secs(20), stream.collect::<Vec<_>>())
        .await
        .expect("the log ends")
        .into_iter()
        .map(|e| e.expect("entry"))
        .collect()
}

fn texts(entries: &[LogEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.text).into_owned())
        .collect()
}

#[tokio::test]
async fn entries_carry_time_output_and_text() {
    let (runtime, client) = docker().await;
    let c = run(
        &client,
        "plain",
        false,
        "echo one; sleep 0.2; echo two >&2; sleep 1.2; echo three; printf last",
    )
    .await;
    wait_exit(&client, &c.id).await;
    let all = entries(&runtime, &c.id, LogOptions::default()).await;
    assert_eq!(texts(&all), ["one\n", "two\n", "three\n", "last"]);
    assert_eq!(all[1].output, LogOutput::Stderr);
    assert!(all.iter().all(|e| e.time.is_some()), "{all:?}");
    assert!(all.windows(2).all(|w| w[0].time <= w[1].time));

    let tail = entries(
        &runtime,
        &c.id,
        LogOptions {
            tail_lines: Some(2),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(texts(&tail), ["three\n", "last"]);

    // The hint may return earlier entries of the same second, never later ones lost.
    let since = all[2].time;
    let from = entries(
        &runtime,
        &c.id,
        LogOptions {
            since,
            ..Default::default()
        },
    )
    .await;
    assert!(texts(&from).ends_with(&["three\n".to_string(), "last".to_string()]));
    let second = since
        .and_then(|t| jiff::Timestamp::from_second(t.as_second()).ok())
        .expect("a time");
    assert!(from.iter().all(|e| e.time >= Some(second)), "{from:?}");
}

#[tokio::test]
async fn tty_output_is_split_into_lines() {
    let (runtime, client) = docker().await;
    let c = run(&client, "tty", true, "echo a; echo b").await;
    wait_exit(&client, &c.id).await;
    let all = entries(&runtime, &c.id, LogOptions::default()).await;
    assert_eq!(texts(&all), ["a\r\n", "b\r\n"]);
    assert!(all.iter().all(|e| e.time.is_some()), "{all:?}");
}

#[tokio::test]
async fn follow_ends_when_the_container_exits() {
    let (runtime, client) = docker().await;
    let c = run(&client, "follow", false, "echo start; sleep 1; echo end").await;
    let all = entries(
        &runtime,
        &c.id,
        LogOptions {
            follow: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(texts(&all), ["start\n", "end\n"]);
}

#[tokio::test]
async fn a_missing_container_is_not_found() {
    let (runtime, _) = docker().await;
    let got = runtime
        .logs("arhat-logs-test-no-such-container", &LogOptions::default())
        .await;
    assert!(matches!(got, Err(RuntimeError::NotFound(_))));
}
