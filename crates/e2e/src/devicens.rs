//! A device host of its own: a network namespace whose only link is a veth
//! to this machine, as a real edge host has only its uplink. Slot n (from
//! [`crate::podnet::slot`]) is namespace `arhat-d<n>` with the /29 at
//! 100.64.0.0 + 8n: this machine is .1, the device .2, and the device's
//! default route points at .3, where nothing answers. So the device reaches
//! aranya (and a broker) on .1, but nothing of the cluster: cluster
//! Services only through arhat's relay.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

#[derive(Debug)]
pub struct DeviceHost {
    pub netns: String,
    /// This machine's end of the veth: where the device dials aranya.
    pub host_addr: Ipv4Addr,
    /// The device's own address.
    pub device_addr: Ipv4Addr,
}

fn name(slot: u32) -> String {
    format!("arhat-d{slot}")
}

fn etc_dir(netns: &str) -> PathBuf {
    Path::new("/etc/netns").join(netns)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Removes slot `slot`'s namespace (its veth goes with it) and its files.
pub fn remove(slot: u32) {
    let netns = name(slot);
    let _ = Command::new("ip")
        .args(["netns", "del", &netns])
        .stderr(std::process::Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(etc_dir(&netns));
}

impl DeviceHost {
    /// The device host of the slot claimed for `key` (any path unique to
    /// its test), made afresh.
    pub fn create(key: &Path) -> anyhow::Result<Self> {
        let slot = crate::podnet::slot(key)?;
        remove(slot);
        let base = u32::from(Ipv4Addr::new(100, 64, 0, 0)) + 8 * slot;
        let host_addr = Ipv4Addr::from(base + 1);
        let device_addr = Ipv4Addr::from(base + 2);
        let nowhere = Ipv4Addr::from(base + 3);
        let netns = name(slot);
        let (host_if, device_if) = (format!("ad{slot}h"), format!("ad{slot}d"));
        let _ = Command::new("ip")
            .args(["link", "del", &host_if])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", &netns])?;
        let host = DeviceHost {
            netns: netns.clone(),
            host_addr,
            device_addr,
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &device_if, "netns", &netns,
        ])?;
        ip(&["addr", "add", &format!("{host_addr}/29"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", netns.as_str()];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["link", "set", "lo", "up"])?;
        inside(&[
            "addr",
            "add",
            &format!("{device_addr}/29"),
            "dev",
            &device_if,
        ])?;
        inside(&["link", "set", &device_if, "up"])?;
        inside(&["route", "add", "default", "via", &nowhere.to_string()])?;
        // Its own resolv.conf, this machine's to begin with, for arhat's
        // `dns.host` to take over.
        std::fs::create_dir_all(host.etc())?;
        std::fs::copy("/etc/resolv.conf", host.etc().join("resolv.conf"))?;
        Ok(host)
    }

    /// The namespace's file, for entering it.
    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.netns)
    }

    /// A TCP connection made from inside the device host.
    pub async fn connect(
        &self,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<tokio::net::TcpStream> {
        arhat::netns::dial_host(
            self.path(),
            addr.ip().to_string(),
            addr.port(),
            std::time::Duration::from_secs(10),
        )
        .await
    }

    /// A UDP socket made inside the device host (it stays there, whichever
    /// thread uses it).
    pub async fn udp_socket(&self) -> anyhow::Result<tokio::net::UdpSocket> {
        udp_socket_in(self.path(), (Ipv4Addr::UNSPECIFIED, 0).into()).await
    }

    /// Lets the device host reach `addr` directly through this machine (a
    /// benchmark's baseline: the same server without the relay).
    pub fn route_to(&self, addr: std::net::IpAddr) -> anyhow::Result<()> {
        ip(&[
            "-n",
            &self.netns,
            "route",
            "replace",
            &format!("{addr}/32"),
            "via",
            &self.host_addr.to_string(),
        ])
    }

    /// `program` run inside the device host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// The device host's own /etc files (`ip netns exec` mounts them over
    /// this machine's).
    pub fn etc(&self) -> PathBuf {
        etc_dir(&self.netns)
    }
}

impl Drop for DeviceHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = std::fs::remove_dir_all(etc_dir(&self.netns));
    }
}

/// A UDP socket bound to `addr` inside the network namespace at `namespace`.
pub async fn udp_socket_in(
    namespace: PathBuf,
    addr: std::net::SocketAddr,
) -> anyhow::Result<tokio::net::UdpSocket> {
    let socket = arhat::netns::inside(namespace, move || {
        let socket = std::net::UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    })
    .await?;
    Ok(tokio::net::UdpSocket::from_std(socket)?)
}
