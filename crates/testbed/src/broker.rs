//! A real Mosquitto broker (Debian's) on loopback, with its own config file,
//! for tests, benchmarks and the demo.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{ChildGuard, Error};

/// Where `scripts/mosquitto.sh` (run by `make test` and `make up`) installs it.
const MOSQUITTO_PATHS: [&str; 2] = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"];
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the broker enforces.
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// Largest payload it accepts (`message_size_limit`); larger ones are dropped.
    pub max_payload: Option<usize>,
    /// Keep sessions and retained messages across restarts (on disk).
    pub persistence: bool,
    /// Users and passwords; when any are given, anonymous clients are refused.
    pub users: Vec<(String, String)>,
    /// Contents of an ACL file (Mosquitto syntax).
    pub acl: Option<String>,
    /// Listen here instead of on a free port (the demo's broker keeps its address).
    pub port: Option<u16>,
    /// Listen on this address instead of loopback (a device in a network
    /// namespace of its own reaches this machine on its veth).
    pub address: Option<std::net::IpAddr>,
    /// Serve TLS instead of plain MQTT.
    pub tls: Option<BrokerTls>,
    /// Leave Nagle's algorithm on for client sockets (Mosquitto's default;
    /// the test bed turns it off, as a broker carrying shells should).
    pub nagle: bool,
}

/// The broker's TLS listener.
#[derive(Debug, Clone)]
pub struct BrokerTls {
    /// CA that signs client certificates.
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Refuse clients without a certificate from `ca_file`, and take each
    /// client's username from its certificate's common name (so ACL
    /// patterns on `%u` follow the certificate).
    pub require_client_cert: bool,
}

/// A running Mosquitto; stopped when dropped.
#[derive(Debug)]
pub struct Broker {
    dir: PathBuf,
    host: std::net::IpAddr,
    port: u16,
    child: Option<ChildGuard>,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

fn mosquitto() -> Result<PathBuf, Error> {
    MOSQUITTO_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| Error::Io {
            context: "mosquitto is not installed: run scripts/mosquitto.sh (make test does)".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
}

impl Broker {
    /// Writes the config under `dir` and starts the broker on loopback, on
    /// `options.port` or a free port.
    pub fn start(dir: &Path, options: &BrokerOptions) -> Result<Broker, Error> {
        std::fs::create_dir_all(dir.join("data"))
            .map_err(io(format!("creating {}", dir.display())))?;
        // Bound here first, so a port another broker holds is an error, not
        // a readiness check answered by that broker.
        let host = options
            .address
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let port = std::net::TcpListener::bind((host, options.port.unwrap_or(0)))
            .and_then(|l| l.local_addr())
            .map_err(io(format!(
                "binding the broker port {}",
                options.port.unwrap_or(0)
            )))?
            .port();
        let mut conf = format!(
            "listener {port} {host}\nlog_dest file {log}\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\nconnection_messages true\nmax_queued_messages 1000\n",
            log = dir.join("mosquitto.log").display(),
        );
        // As root, Mosquitto would switch to its own user and lose access here.
        if crate::sys::is_root() {
            conf.push_str("user root\n");
        }
        if !options.nagle {
            conf.push_str("set_tcp_nodelay true\n");
        }
        if let Some(tls) = &options.tls {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                tls.ca_file.display(),
                tls.cert_file.display(),
                tls.key_file.display()
            ));
            if tls.require_client_cert {
                conf.push_str("require_certificate true\nuse_identity_as_username true\n");
            }
        }
        if options.persistence {
            conf.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.join("data").display()
            ));
        }
        if let Some(limit) = options.max_payload {
            conf.push_str(&format!("message_size_limit {limit}\n"));
        }
        if options.users.is_empty() {
            conf.push_str("allow_anonymous true\n");
        } else {
            let passwd = dir.join("passwd");
            let _ = std::fs::remove_file(&passwd);
            for (user, password) in &options.users {
                let mut cmd = Command::new("mosquitto_passwd");
                if !passwd.exists() {
                    cmd.arg("-c");
                }
                let status = cmd
                    .arg("-b")
                    .arg(&passwd)
                    .arg(user)
                    .arg(password)
                    .status()
                    .map_err(io("running mosquitto_passwd"))?;
                if !status.success() {
                    return Err(Error::Io {
                        context: format!("mosquitto_passwd for {user}: {status}"),
                        source: std::io::Error::other("failed"),
                    });
                }
            }
            conf.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                passwd.display()
            ));
        }
        if let Some(acl) = &options.acl {
            let path = dir.join("acl");
            std::fs::write(&path, acl).map_err(io("writing the ACL file"))?;
            conf.push_str(&format!("acl_file {}\n", path.display()));
        }
        std::fs::write(dir.join("mosquitto.conf"), conf).map_err(io("writing mosquitto.conf"))?;
        let mut broker = Broker {
            dir: dir.to_path_buf(),
            host,
            port,
            child: None,
        };
        broker.run()?;
        Ok(broker)
    }

    fn run(&mut self) -> Result<(), Error> {
        let mut cmd = Command::new(mosquitto()?);
        cmd.arg("-c").arg(self.dir.join("mosquitto.conf"));
        // Its start-up warnings (running as root) go to a file, not the test output.
        let stderr = std::fs::File::create(self.dir.join("mosquitto.stderr"))
            .map_err(io("creating mosquitto.stderr"))?;
        cmd.stdout(std::process::Stdio::null()).stderr(stderr);
        self.child = Some(ChildGuard::spawn("mosquitto", cmd).map_err(io("starting mosquitto"))?);
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect((self.host, self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(Error::Io {
                    context: format!(
                        "mosquitto did not listen on {} within {READY_TIMEOUT:?}; log:\n{}",
                        self.port,
                        self.log_tail(20)
                    ),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `<host>:<port>`.
    pub fn address(&self) -> String {
        std::net::SocketAddr::new(self.host, self.port).to_string()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the broker the hard way (no chance to save state) and starts it
    /// again on the same port: what a crash and a supervisor restart look like.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        self.run()
    }

    /// Kills the broker (SIGKILL): every client connection drops at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Some(c) = child.child_mut()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
