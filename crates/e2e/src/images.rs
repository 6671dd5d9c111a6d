//! Test images made on this machine: no registry on the internet is reachable.

use std::{path::Path, process::Command};

use anyhow::{Context, bail};

/// A busybox-static image (`sh`, `sleep`, `httpd`, `nc`, ...), imported into dockerd.
pub const BUSYBOX: &str = "local/busybox:1.35";

/// Runs the docker client (Debian's when present).
pub(crate) fn docker(args: &[&str]) -> anyhow::Result<std::process::Output> {
    // Debian's client matches Debian's dockerd; fall back to whatever is on PATH.
    let client = if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    };
    Command::new(client)
        .args(args)
        .output()
        .context("running the docker client")
}

/// Imports [`BUSYBOX`] unless dockerd already has it.
pub fn ensure_busybox() -> anyhow::Result<()> {
    if docker(&["image", "inspect", BUSYBOX])?.status.success() {
        return Ok(());
    }
    let busybox = Path::new("/bin/busybox");
    anyhow::ensure!(
        busybox.exists(),
        "/bin/busybox is missing: install busybox-static (scripts/docker.sh does)"
    );
    let dir = tempfile::tempdir()?;
    let bin = dir.path().join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(dir.path().join("rootfs/tmp"))?;
    std::fs::copy(busybox, bin.join("busybox"))?;
    let list = Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|a| *a != "busybox")
    {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    let archive = dir.path().join("rootfs.tar");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(dir.path().join("rootfs"))
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()?;
    anyhow::ensure!(tar.success(), "tar failed");
    let out = docker(&["import", &archive.to_string_lossy(), BUSYBOX])?;
    if !out.status.success() {
        bail!("docker import: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Whether dockerd has an image by this reference.
pub fn image_exists(reference: &str) -> anyhow::Result<bool> {
    Ok(docker(&["image", "inspect", reference])?.status.success())
}

/// Whether dockerd knows a container by this id.
pub fn container_exists(id: &str) -> anyhow::Result<bool> {
    Ok(docker(&["container", "inspect", id])?.status.success())
}

/// `docker container inspect --format FORMAT id`.
fn inspect(id: &str, format: &str) -> anyhow::Result<String> {
    let out = docker(&["container", "inspect", "--format", format, id])?;
    anyhow::ensure!(
        out.status.success(),
        "inspect {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the container runs, and since when (dockerd's StartedAt): the
/// same start time means the same process, never restarted.
pub fn container_started(id: &str) -> anyhow::Result<(bool, String)> {
    let text = inspect(id, "{{.State.Running}} {{.State.StartedAt}}")?;
    let (running, started) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    Ok((running == "true", started.to_string()))
}

/// The network namespace of a running container, for entering it.
pub fn container_netns(id: &str) -> anyhow::Result<std::path::PathBuf> {
    let pid = inspect(id, "{{.State.Pid}}")?;
    Ok(Path::new("/proc").join(pid.trim()).join("ns/net"))
}

/// Where dockerd writes the container's (current) log file.
pub fn log_path(id: &str) -> anyhow::Result<String> {
    Ok(inspect(id, "{{.LogPath}}")?.trim().to_string())
}

/// Every container (sandboxes included) dockerd has for a pod.
pub fn pod_containers(uid: &str) -> anyhow::Result<Vec<String>> {
    let out = docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label=io.arhat.pod.uid={uid}"),
    ])?;
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    ids.sort();
    Ok(ids)
}

/// The pod names of every container (sandboxes included) an agent for
/// `device` created.
pub fn device_pod_names(device: &str) -> anyhow::Result<Vec<String>> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=io.arhat.device={device}"),
        "--format",
        "{{.Label \"io.arhat.pod.name\"}}",
    ])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// A container's environment, as dockerd reports it.
pub fn container_env(id: &str) -> anyhow::Result<Vec<String>> {
    Ok(serde_json::from_str(&inspect(id, "{{json .Config.Env}}")?)?)
}

/// Removes every container an agent for `device` created (tests leave them
/// when they stop their agents).
pub fn remove_device_containers(device: &str) {
    let Ok(out) = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=io.arhat.device={device}"),
    ]) else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids.iter().map(String::as_str));
        let _ = docker(&args);
    }
}

/// Runs a command in a container through dockerd; its stdout.
pub fn exec(id: &str, command: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["exec", id];
    args.extend_from_slice(command);
    let out = docker(&args)?;
    anyhow::ensure!(
        out.status.success(),
        "docker exec {command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A container's memory limit and CPU quota (nano CPUs), as dockerd applies them.
pub fn container_limits(id: &str) -> anyhow::Result<(i64, i64)> {
    let text = inspect(id, "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}")?;
    let mut parts = text
        .split_whitespace()
        .map(|p| p.parse::<i64>().unwrap_or(-1));
    Ok((parts.next().unwrap_or(-1), parts.next().unwrap_or(-1)))
}
