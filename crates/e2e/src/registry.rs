//! A real image registry on loopback (Debian's docker-registry, htpasswd auth),
//! holding a private copy of the busybox test image.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, bail};
use tokio::sync::OnceCell;

use crate::{images::BUSYBOX, process::Proc};

#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:<port>`
    pub address: String,
    pub username: String,
    pub password: String,
    /// A docker client config of our own: the machine's ~/.docker is left alone.
    client_config: std::path::PathBuf,
    _process: Proc,
}

static SHARED: OnceCell<Registry> = OnceCell::const_new();

impl Registry {
    /// One per test process, started on first use, with the private image pushed.
    pub async fn shared(dir: &Path) -> anyhow::Result<&'static Registry> {
        SHARED.get_or_try_init(|| Registry::start(dir)).await
    }

    async fn start(dir: &Path) -> anyhow::Result<Registry> {
        let dir = dir.join("registry");
        std::fs::create_dir_all(&dir)?;
        let (username, password) = ("edge".to_string(), format!("pw-{}", rand::random::<u32>()));
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", &username, &password])
            .output()
            .context("htpasswd (apache2-utils) is needed; scripts/docker.sh installs it")?;
        anyhow::ensure!(htpasswd.status.success(), "htpasswd failed");
        std::fs::write(dir.join("htpasswd"), &htpasswd.stdout)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let address = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\nauth:\n  htpasswd:\n    realm: e2e\n    path: {}\n",
            dir.join("data").display(),
            dir.join("htpasswd").display()
        );
        std::fs::write(dir.join("config.yml"), config)?;
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(dir.join("config.yml"));
        let process = Proc::spawn("registry", cmd, &dir.join("registry.log"))?;
        crate::wait::wait_for(
            "the registry to listen",
            Duration::from_secs(20),
            || async { std::net::TcpStream::connect(&address).ok().map(|_| ()) },
        )
        .await?;
        let client_config = dir.join("docker-client");
        std::fs::create_dir_all(&client_config)?;
        let registry = Registry {
            address,
            username,
            password,
            client_config,
            _process: process,
        };
        registry.push(BUSYBOX, &registry.private_image())?;
        Ok(registry)
    }

    /// A `docker-registry` Secret `name` in `namespace` with this registry's credentials.
    pub fn create_pull_secret(
        &self,
        cluster: &crate::Cluster,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        cluster.kubectl(&[
            "create",
            "secret",
            "docker-registry",
            name,
            "-n",
            namespace,
            &format!("--docker-server={}", self.address),
            &format!("--docker-username={}", self.username),
            &format!("--docker-password={}", self.password),
        ])?;
        Ok(())
    }

    /// The private image: only pullable with credentials.
    pub fn private_image(&self) -> String {
        format!("{}/e2e/busybox:1", self.address)
    }

    /// An image of its own (its own ID: busybox with a label), pushed as
    /// `e2e/<name>:<random>` and only in the registry.
    pub fn push_unique(&self, name: &str) -> anyhow::Result<String> {
        let tag = rand::random::<u32>();
        let reference = format!("{}/e2e/{name}:{tag}", self.address);
        let container = format!("e2e-commit-{name}-{tag}");
        self.docker(&["create", "--name", &container, BUSYBOX, "true"], None)?;
        let committed = self.docker(
            &[
                "commit",
                "--change",
                &format!("LABEL e2e.unique={tag}"),
                &container,
                &reference,
            ],
            None,
        );
        self.docker(&["rm", &container], None)?;
        committed?;
        self.push(&reference, &reference)?;
        Ok(reference)
    }

    /// Pushes `source` as `reference`; then only the registry has it under
    /// that name, so pods must pull it.
    fn push(&self, source: &str, reference: &str) -> anyhow::Result<()> {
        self.docker(
            &[
                "login",
                "-u",
                &self.username,
                "--password-stdin",
                &self.address,
            ],
            Some(&self.password),
        )?;
        if source != reference {
            self.docker(&["tag", source, reference], None)?;
        }
        let pushed = self.docker(&["push", reference], None);
        self.docker(&["rmi", reference], None)?;
        self.docker(&["logout", &self.address], None)?;
        pushed
    }

    fn docker(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<()> {
        use std::io::Write;
        let mut child = Command::new("/usr/bin/docker")
            .arg("--config")
            .arg(&self.client_config)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}
