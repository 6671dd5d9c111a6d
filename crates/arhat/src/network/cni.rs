//! Running CNI plugins (the container network interface, spec 1.0): each
//! plugin is an executable given its configuration on stdin and the
//! operation in `CNI_*` variables; it answers a result, or an error, as JSON
//! on stdout. A list of plugins runs in order on ADD, each given the result
//! so far as `prevResult`, and in reverse on DEL, each given the final one.

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// The spec version arhat speaks (Debian's plugins 1.1 accept it).
pub const VERSION: &str = "1.0.0";
/// A plugin that runs longer is killed: it holds the pod's start.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI plugin {plugin}: cannot run it: {source}")]
    Exec {
        plugin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} did not finish within {PLUGIN_TIMEOUT:?}")]
    Timeout { plugin: PathBuf },
    /// The plugin's own error: code and message as the spec carries them.
    #[error("CNI plugin {plugin} failed (code {code}): {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Plugin {
        plugin: PathBuf,
        code: u32,
        msg: String,
        details: String,
    },
    #[error("encoding the network config for CNI plugin {plugin}: {source}")]
    Config {
        plugin: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("CNI plugin {plugin} answered something that is not a result: {source}")]
    Answer {
        plugin: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// ADD or DEL, on one sandbox's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
}

/// What every plugin of one operation is told besides its configuration.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub command: Command,
    /// The sandbox's id: plugins key what they keep by it.
    pub container_id: &'a str,
    /// The namespace to wire; empty on a DEL once it is gone.
    pub netns: &'a str,
    pub ifname: &'a str,
    /// Where the plugins are (CNI_PATH: they find their IPAM plugin there).
    pub bin_dir: &'a std::path::Path,
}

/// Runs the list on ADD; returns the final result.
pub async fn add(plugins: &[Value], network: &str, at: &Invocation<'_>) -> Result<Value, CniError> {
    let mut result: Option<Value> = None;
    for plugin in plugins {
        let answer = run(plugin, network, result.as_ref(), at).await?;
        result = Some(answer);
    }
    Ok(result.unwrap_or(Value::Null))
}

/// Runs the list in reverse on DEL, each told the result ADD gave. Every
/// plugin runs even when one before it failed (what each keeps is its own);
/// the first failure is returned.
pub async fn del(
    plugins: &[Value],
    network: &str,
    result: Option<&Value>,
    at: &Invocation<'_>,
) -> Result<(), CniError> {
    let mut first = None;
    for plugin in plugins.iter().rev() {
        if let Err(e) = run(plugin, network, result, at).await {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// One plugin, one operation.
async fn run(
    plugin: &Value,
    network: &str,
    prev: Option<&Value>,
    at: &Invocation<'_>,
) -> Result<Value, CniError> {
    let kind = plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let path = at.bin_dir.join(kind);
    let mut config = plugin.clone();
    if let Value::Object(map) = &mut config {
        map.insert("cniVersion".into(), VERSION.into());
        map.insert("name".into(), network.into());
        if let Some(prev) = prev {
            map.insert("prevResult".into(), prev.clone());
        }
    }
    let stdin = serde_json::to_vec(&config).map_err(|source| CniError::Config {
        plugin: path.clone(),
        source,
    })?;
    let exec = |source| CniError::Exec {
        plugin: path.clone(),
        source,
    };
    let mut child = tokio::process::Command::new(&path)
        .env(
            "CNI_COMMAND",
            match at.command {
                Command::Add => "ADD",
                Command::Del => "DEL",
            },
        )
        .env("CNI_CONTAINERID", at.container_id)
        .env("CNI_NETNS", at.netns)
        .env("CNI_IFNAME", at.ifname)
        .env("CNI_PATH", at.bin_dir)
        // The plugins run iptables and friends: make sure sbin is searched.
        .env("PATH", search_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(exec)?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin may fail and exit before reading its config: its answer
        // and exit status say why, not the broken pipe.
        match input.write_all(&stdin).await {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(exec(e)),
            _ => {}
        }
    }
    let output = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| CniError::Timeout {
            plugin: path.clone(),
        })?
        .map_err(exec)?;
    if !output.status.success() {
        #[derive(Deserialize, Default)]
        struct Failure {
            #[serde(default)]
            code: u32,
            #[serde(default)]
            msg: String,
            #[serde(default)]
            details: String,
        }
        let failure: Failure = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| Failure {
            msg: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            ..Default::default()
        });
        return Err(CniError::Plugin {
            plugin: path,
            code: failure.code,
            msg: failure.msg,
            details: failure.details,
        });
    }
    if at.command == Command::Del || output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(prev.cloned().unwrap_or(Value::Null));
    }
    serde_json::from_slice(&output.stdout).map_err(|source| CniError::Answer {
        plugin: path,
        source,
    })
}

pub(crate) fn search_path() -> String {
    let inherited = std::env::var("PATH").unwrap_or_default();
    let mut dirs: Vec<&str> = inherited.split(':').filter(|d| !d.is_empty()).collect();
    for needed in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        if !dirs.contains(&needed) {
            dirs.push(needed);
        }
    }
    dirs.join(":")
}

/// The first address of a result, without its prefix length.
pub fn first_address(result: &Value) -> Option<std::net::IpAddr> {
    result
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| ip.get("address")?.as_str())
        .find_map(|cidr| cidr.split('/').next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_address_of_a_result() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{ "name": "eth0", "sandbox": "/proc/1/ns/net" }],
            "ips": [{ "address": "10.87.0.5/16", "gateway": "10.87.0.1", "interface": 0 }],
        });
        assert_eq!(first_address(&result), "10.87.0.5".parse().ok());
        assert_eq!(first_address(&json!({ "ips": [] })), None);
        assert_eq!(first_address(&Value::Null), None);
    }

    /// A plugin is any executable: a shell script stands in for one to show
    /// what it is given and how its error is read.
    #[tokio::test]
    async fn plugins_get_their_configuration_and_errors_come_back_typed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        // Echoes back what it was given, as its result.
        write("echo", "cat");
        write(
            "broken",
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"try again later","details":"busy"}'; exit 1"#,
        );
        let at = Invocation {
            command: Command::Add,
            container_id: "abc",
            netns: "/proc/1/ns/net",
            ifname: "eth0",
            bin_dir: dir.path(),
        };
        let result = add(
            &[json!({ "type": "echo", "x": 1 }), json!({ "type": "echo" })],
            "net",
            &at,
        )
        .await
        .expect("add");
        // The second saw the first's answer as its prevResult.
        assert_eq!(result["prevResult"]["x"], 1);
        assert_eq!(result["name"], "net");
        assert_eq!(result["cniVersion"], VERSION);

        match add(&[json!({ "type": "broken" })], "net", &at).await {
            Err(CniError::Plugin {
                code, msg, details, ..
            }) => {
                assert_eq!(
                    (code, msg.as_str(), details.as_str()),
                    (11, "try again later", "busy")
                );
            }
            other => panic!("expected the plugin's error, got {other:?}"),
        }
        match add(&[json!({ "type": "absent" })], "net", &at).await {
            Err(CniError::Exec { .. }) => {}
            other => panic!("expected an exec error, got {other:?}"),
        }
    }
}
