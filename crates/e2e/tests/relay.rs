//! Edge clients reach cluster Services by name through the device's relay.
//! The device is a network namespace of its own whose default route leads
//! nowhere: it reaches aranya (and the broker), never the cluster. The
//! Services' endpoints are HTTP servers on this machine's address, which
//! record who connected: aranya, never the device.

use std::{
    net::{IpAddr, SocketAddr},
    process::Output,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use e2e::{TestEnv, transport::Transport, wait_for};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use proto::api::{Connect, ConnectRequest, Open, StreamReply, open::Kind, stream_reply::Code};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(60);

/// The device host opts in to the cluster's DNS.
const HOST_DNS: &str = "dns:\n  host: true\n";

/// An HTTP server answering its name and a UDP server answering each
/// datagram with its name and the datagram, both recording their clients'
/// addresses.
struct Server {
    addr: SocketAddr,
    udp_port: u16,
    clients: Arc<Mutex<Vec<IpAddr>>>,
}

impl Server {
    async fn start(name: &'static str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind((e2e::cluster::node_address(), 0)).await?;
        let addr = listener.local_addr()?;
        let clients = Arc::new(Mutex::new(Vec::new()));
        let udp = tokio::net::UdpSocket::bind((addr.ip(), 0)).await?;
        let udp_port = udp.local_addr()?.port();
        tokio::spawn(udp_echo_server(udp, name, clients.clone()));
        let seen = clients.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, from)) = listener.accept().await {
                if let Ok(mut c) = seen.lock() {
                    c.push(from.ip());
                }
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = format!("{name}\n");
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Ok(Self {
            addr,
            udp_port,
            clients,
        })
    }

    fn clients(&self) -> Vec<IpAddr> {
        self.clients.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// Answers each datagram with `name:` and the datagram, recording who sent it.
async fn udp_echo_server(
    udp: tokio::net::UdpSocket,
    name: &'static str,
    clients: Arc<Mutex<Vec<IpAddr>>>,
) {
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = udp.recv_from(&mut buf).await {
        if let Ok(mut c) = clients.lock() {
            c.push(from.ip());
        }
        let mut answer = format!("{name}:").into_bytes();
        answer.extend_from_slice(&buf[..n]);
        let _ = udp.send_to(&answer, from).await;
    }
}

/// A Service `name` labelled `app`, with a port named http on 80 (TCP)
/// and one named echo on 5353 (UDP); headless when `cluster_ip` is "None".
async fn service_with(
    env: &TestEnv,
    name: &str,
    app: &str,
    cluster_ip: Option<&str>,
) -> anyhow::Result<String> {
    let services: Api<Service> = Api::namespaced(env.client.clone(), &env.name);
    let service = json!({
        "metadata": { "name": name, "labels": { "app": app } },
        "spec": { "clusterIP": cluster_ip, "ports": [
            { "name": "http", "port": 80, "targetPort": "web" },
            { "name": "echo", "port": 5353, "protocol": "UDP", "targetPort": "echo" },
        ] },
    });
    let created = services
        .create(&PostParams::default(), &serde_json::from_value(service)?)
        .await?;
    Ok(created.spec.and_then(|s| s.cluster_ip).unwrap_or_default())
}

async fn service(env: &TestEnv, name: &str, app: &str) -> anyhow::Result<String> {
    service_with(env, name, app, None).await
}

/// An EndpointSlice `slice` of Service `service` with `server` as its one
/// ready endpoint, as the EndpointSlice controller would publish a pod.
async fn endpoint(
    env: &TestEnv,
    service: &str,
    slice: &str,
    server: &Server,
) -> anyhow::Result<()> {
    let slices: Api<EndpointSlice> = Api::namespaced(env.client.clone(), &env.name);
    let slice = json!({
        "metadata": { "name": slice, "labels": { "kubernetes.io/service-name": service } },
        "addressType": "IPv4",
        "ports": [
            { "name": "http", "port": server.addr.port() },
            { "name": "echo", "port": server.udp_port, "protocol": "UDP" },
        ],
        "endpoints": [{ "addresses": [server.addr.ip().to_string()], "conditions": { "ready": true } }],
    });
    slices
        .create(&PostParams::default(), &serde_json::from_value(slice)?)
        .await?;
    Ok(())
}

/// `args` run in the device host.
fn on_device(env: &TestEnv, program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let host = env
        .device_host
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the test has no device host"))?;
    Ok(host.command(program).args(args).output()?)
}

/// `curl` on the device host: the body, or the exit code and error.
fn curl(env: &TestEnv, url: &str) -> anyhow::Result<Result<String, (Option<i32>, String)>> {
    let out = on_device(env, "curl", &["-sS", "--max-time", "10", url])?;
    Ok(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err((
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    })
}

/// A datagram to `host`:5353 from the device host, and the answer (one
/// read: one datagram).
fn udp_echo(env: &TestEnv, host: &str) -> anyhow::Result<String> {
    let script = format!(
        "exec 3<>/dev/udp/{host}/5353 && printf ping >&3 && timeout 5 dd bs=2048 count=1 status=none <&3"
    );
    let out = on_device(env, "bash", &["-c", &script])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn wait_body(env: &TestEnv, url: &str, body: &str) -> anyhow::Result<()> {
    wait_for(&format!("{url} to answer {body:?}"), T, || async {
        (curl(env, url).ok()?.ok()? == body).then_some(())
    })
    .await
}

/// What writes the interception table: each transport's test takes one,
/// so both backends are covered (gRPC: nftables, MQTT: iptables).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Nftables,
    Iptables,
}

impl Backend {
    fn config(self) -> String {
        let name = match self {
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
        };
        format!("{HOST_DNS}relay:\n  backend: {name}\n")
    }

    /// How the table sends `ip`:`port` (TCP) on.
    fn intercepts(self, rules: &str, ip: &str, port: u16) -> bool {
        match self {
            Backend::Nftables => rules.contains(&format!("{ip} . {port}")),
            Backend::Iptables => {
                rules.contains(&format!("-d {ip}/32 -p tcp -m tcp --dport {port}"))
            }
        }
    }
}

/// The device host's interception table, if it has one.
fn table(env: &TestEnv, device: &str, backend: Backend) -> anyhow::Result<Option<String>> {
    let slot = e2e::podnet::slot(&env.arhat_data_dir(device))?;
    let name = e2e::podnet::table(slot);
    Ok(match backend {
        Backend::Nftables => {
            let out = on_device(env, "nft", &["list", "table", "inet", &name])?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Backend::Iptables => {
            let out = on_device(env, "iptables-save", &[])?;
            let rules = String::from_utf8_lossy(&out.stdout).into_owned();
            rules.contains(&format!(":{name}-PRE ")).then_some(rules)
        }
    })
}

async fn edge_clients_reach_services_through_the_relay(
    transport: Transport,
    backend: Backend,
) -> anyhow::Result<()> {
    let config = backend.config();
    let env = TestEnv::on_device_host("relay", transport).await?;
    let ns = env.name.clone();
    let (a, b, old, secret) = (
        Server::start("a").await?,
        Server::start("b").await?,
        Server::start("old").await?,
        Server::start("secret").await?,
    );
    let web_ip = service(&env, "web", "web").await?;
    endpoint(&env, "web", "web-a", &a).await?;
    let old_ip = service(&env, "old", "web").await?;
    endpoint(&env, "old", "old-1", &old).await?;
    let secret_ip = service(&env, "secret", "db").await?;
    endpoint(&env, "secret", "secret-1", &secret).await?;

    let up = env.device_up_configured("a", 3, json!({}), &config).await?;
    let allow = json!({ "spec": { "network": { "services": [{
        "namespaces": [ns],
        "selector": { "matchLabels": { "app": "web" } },
    }] } } });
    env.devices()
        .patch(&up.name, &PatchParams::default(), &Patch::Merge(&allow))
        .await?;
    let host = env
        .device_host
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no device host"))?;
    // The device host opted in to the cluster's DNS (dns.host).
    let resolv_conf = host.etc().join("resolv.conf");
    let own = std::fs::read_to_string(&resolv_conf)?;
    assert!(
        own.contains(&format!(
            "nameserver {}",
            e2e::podnet::dns_address(&env.arhat_data_dir(&up.name))?
        )),
        "{own}"
    );
    let web = format!("http://web.{ns}/");

    // By its full name and through the search path; the server saw aranya.
    wait_body(&env, &format!("http://web.{ns}.svc.cluster.local/"), "a\n").await?;
    assert_eq!(curl(&env, &web)?, Ok("a\n".into()));
    // A UDP datagram gets its answer, both ways through the relay (the
    // server saw aranya here too).
    assert_eq!(udp_echo(&env, &format!("web.{ns}"))?, "a:ping");
    let aranya_addr = e2e::cluster::node_address();
    let clients = a.clients();
    assert!(
        !clients.is_empty() && clients.iter().all(|c| *c == aranya_addr),
        "clients {clients:?}, aranya {aranya_addr}, device {}",
        host.device_addr
    );

    // From an edge pod (ClusterFirst DNS, its namespace's search path), by
    // the short and the full name. (Debian's static busybox has no NSS:
    // its wget crashes, so nslookup resolves and nc asks.)
    let script = format!(
        "for name in web web.{ns}.svc.cluster.local; do ip=$(nslookup $name | awk '/^Address/ {{a=$2}} END {{print a}}'); printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 $ip 80 | tail -n 1; done; echo done; exec sleep 3600"
    );
    e2e::pods::create_pod(
        &env,
        &up.name,
        "client",
        json!({ "containers": [e2e::pods::busybox("client", &script)] }),
    )
    .await?;
    let printed = e2e::pods::printed(&env, "client", "client").await?;
    assert_eq!(printed, "a\na\ndone\n");

    // The endpoints move: new connections follow.
    endpoint(&env, "web", "web-b", &b).await?;
    let slices: Api<EndpointSlice> = Api::namespaced(env.client.clone(), &ns);
    slices.delete("web-a", &DeleteParams::default()).await?;
    wait_body(&env, &web, "b\n").await?;

    // A headless Service: its name gives its endpoint's address, and a
    // connection to that address goes through the relay too.
    service_with(&env, "direct", "web", Some("None")).await?;
    endpoint(&env, "direct", "direct-1", &b).await?;
    wait_body(
        &env,
        &format!("http://direct.{ns}:{}/", b.addr.port()),
        "b\n",
    )
    .await?;
    let clients = b.clients();
    assert!(
        !clients.is_empty() && clients.iter().all(|c| *c == aranya_addr),
        "clients {clients:?}, aranya {aranya_addr}"
    );

    // Outside the policy, the Service has no name on the device, and its
    // ClusterIP is not intercepted.
    match curl(&env, &format!("http://secret.{ns}.svc.cluster.local/"))? {
        Err((Some(6), _)) => {}
        other => panic!("secret resolved: {other:?}"),
    }
    let rules = table(&env, &up.name, backend)?.unwrap_or_default();
    assert!(backend.intercepts(&rules, &web_ip, 80), "{rules}");
    assert!(!rules.contains(&secret_ip), "{rules}");

    // A Service deleted goes from the names and the rules.
    wait_body(&env, &format!("http://old.{ns}/"), "old\n").await?;
    let services: Api<Service> = Api::namespaced(env.client.clone(), &ns);
    services.delete("old", &DeleteParams::default()).await?;
    wait_for("the deleted Service's name and rule gone", T, || async {
        let gone = matches!(
            curl(&env, &format!("http://old.{ns}/")).ok()?,
            Err((Some(6), _))
        );
        let rules = table(&env, &up.name, backend).ok()??;
        (gone && !rules.contains(&old_ip)).then_some(())
    })
    .await?;

    // A stopped agent leaves no rules.
    let device = env.device("a");
    let e2e::cluster::DeviceUp {
        aranya, mut arhat, ..
    } = up;
    arhat.stop()?;
    assert_eq!(table(&env, &device, backend)?, None);
    let restored = std::fs::read_to_string(&resolv_conf)?;
    assert!(!restored.contains("arhat"), "{restored}");
    if matches!(transport, Transport::Grpc) {
        crafted_connections_are_refused(&env, &device, &secret_ip).await?;
    }
    assert!(
        secret.clients().is_empty(),
        "the secret Service was reached"
    );
    let mut again = env.start_arhat_with(&device, "2", &[], &config)?;
    wait_body(&env, &web, "b\n").await?;

    // Offline: names still resolve, connections are refused at once.
    drop(aranya);
    let started = Instant::now();
    let offline = curl(&env, &web)?;
    let took = started.elapsed();
    assert!(offline.is_err(), "{offline:?}");
    assert!(
        took < Duration::from_secs(3),
        "refused after {took:?}: {offline:?}"
    );
    let resolved = on_device(
        &env,
        "getent",
        &["hosts", &format!("web.{ns}.svc.cluster.local")],
    )?;
    assert!(
        String::from_utf8_lossy(&resolved.stdout).contains(&web_ip),
        "{resolved:?}"
    );

    // One killed leaves its table only until it starts again, which then
    // points at the new listener.
    again.kill();
    assert!(
        table(&env, &device, backend)?.is_some(),
        "SIGKILL runs no clean-up"
    );
    let _again = env.start_arhat_with(&device, "3", &[], &config)?;
    let _aranya = env.start_aranya("a")?;
    wait_body(&env, &web, "b\n").await?;
    Ok(())
}

/// A device that asks aranya itself for a Service outside its policy (a
/// request arhat would never make) is refused, and an Event says so.
async fn crafted_connections_are_refused(
    env: &TestEnv,
    device: &str,
    secret_ip: &str,
) -> anyhow::Result<()> {
    let credentials = e2e::impostor::DeviceCredentials::of_agent(&env.arhat_data_dir(device))?;
    // Once aranya has seen the stopped agent's link go.
    let session = wait_for("a session of the crafting device", T, || async {
        e2e::impostor::session_grpc(
            &env.grpc_address().to_string(),
            &env.cluster.ca_file,
            device,
            &credentials,
        )
        .await
        .ok()
    })
    .await?;
    let mut stream = session
        .open(&Open {
            kind: Some(Kind::Connect(Connect {})),
        })
        .await?;
    stream
        .send_message(&ConnectRequest {
            protocol: "TCP".into(),
            address: secret_ip.into(),
            port: 80,
            ..Default::default()
        })
        .await?;
    let reply = stream
        .recv_message::<StreamReply>()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no reply"))?;
    assert_eq!(reply.code(), Code::Forbidden, "{}", reply.message);
    assert!(
        reply.message.contains("spec.network.services"),
        "{}",
        reply.message
    );
    session.close("done");
    wait_for("the refusal's Event", T, || async {
        let events = env
            .device_events(device, aranya::relay::REASON_CONNECTION_REFUSED)
            .ok()?;
        events.contains(secret_ip).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn edge_clients_reach_services_through_the_relay_over_grpc() -> anyhow::Result<()> {
    edge_clients_reach_services_through_the_relay(Transport::Grpc, Backend::Nftables).await
}

#[tokio::test(flavor = "multi_thread")]
async fn edge_clients_reach_services_through_the_relay_over_mqtt() -> anyhow::Result<()> {
    edge_clients_reach_services_through_the_relay(e2e::transport::MQTT, Backend::Iptables).await
}

/// A Service selecting the pod labelled `test: <pod>`: port 80 to 8080
/// (TCP), and 5353 (UDP).
async fn service_of_pod(env: &TestEnv, name: &str, pod: &str) -> anyhow::Result<()> {
    let services: Api<Service> = Api::namespaced(env.client.clone(), &env.name);
    let service = json!({
        "metadata": { "name": name },
        "spec": {
            "selector": { "test": pod },
            "ports": [
                { "name": "http", "port": 80, "targetPort": 8080 },
                { "name": "echo", "port": 5353, "targetPort": 5353, "protocol": "UDP" },
            ],
        },
    });
    services
        .create(&PostParams::default(), &serde_json::from_value(service)?)
        .await?;
    Ok(())
}

/// A pod on `node` serving `body` on port 8080.
async fn web_pod(env: &TestEnv, node: &str, name: &str, body: &str) -> anyhow::Result<()> {
    let script =
        format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 8080 -h /www");
    e2e::pods::create_pod(
        env,
        node,
        name,
        json!({ "containers": [e2e::pods::busybox("web", &script)] }),
    )
    .await?;
    Ok(())
}

/// A UDP echo server on port 5353 in the network of pod `name`, answering
/// with `name:` (busybox has no UDP server: it is made in the pod's network
/// from here).
async fn udp_echo_in_pod(env: &TestEnv, name: &'static str) -> anyhow::Result<()> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(env.client.clone(), &env.name);
    let uid = pods.get(name).await?.metadata.uid.unwrap_or_default();
    let container = e2e::images::pod_containers(&uid)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("pod {name} has no container"))?;
    let socket = e2e::devicens::udp_socket_in(
        e2e::images::container_netns(&container)?,
        (std::net::Ipv4Addr::UNSPECIFIED, 5353).into(),
    )
    .await?;
    tokio::spawn(udp_echo_server(socket, name, Arc::default()));
    Ok(())
}

/// A datagram's answer from the device host, once there is one.
async fn wait_udp_echo(env: &TestEnv, host: &str, answer: &str) -> anyhow::Result<()> {
    wait_for(&format!("{host}:5353 to answer {answer:?}"), T, || async {
        (udp_echo(env, host).ok()? == answer).then_some(())
    })
    .await
}

/// Endpoints that are pods on edge devices: one on the asking device is
/// dialled there without leaving it; one on another device is reached
/// through that device's own tunnel (the cluster cannot route to it).
async fn endpoints_on_edge_devices(transport: Transport) -> anyhow::Result<()> {
    let env = TestEnv::on_device_host("edge-endpoints", transport).await?;
    let ns = env.name.clone();
    let up = env
        .device_up_configured("a", 3, json!({}), HOST_DNS)
        .await?;
    let other = env.device("b");
    env.create_device(&other, 3).await?;
    let _other_agent = env.start_arhat(&other, "1", &[])?;
    env.wait_ready(&other, "True", None, T).await?;
    let allow = json!({ "spec": { "network": { "services": [{ "namespaces": [ns] }] } } });
    env.devices()
        .patch(&up.name, &PatchParams::default(), &Patch::Merge(&allow))
        .await?;
    web_pod(&env, &up.name, "mine", "mine").await?;
    web_pod(&env, &other, "theirs", "theirs").await?;
    service_of_pod(&env, "mine", "mine").await?;
    service_of_pod(&env, "theirs", "theirs").await?;

    wait_body(&env, &format!("http://theirs.{ns}/"), "theirs\n").await?;
    wait_body(&env, &format!("http://mine.{ns}/"), "mine\n").await?;
    let log = std::fs::read_to_string(env.dir.join("aranya-a.log"))?;
    assert!(
        log.contains("relaying through the endpoint's device"),
        "aranya did not use the other device's tunnel"
    );
    assert!(
        log.contains("the endpoint is on the device itself"),
        "aranya did not send the device to its own pod"
    );
    let arhat_log = up.logs(2000);
    assert!(
        arhat_log.contains("a pod of this device: dialled locally"),
        "{arhat_log}"
    );

    // UDP: the other device's pod through its tunnel, this device's own
    // pod directly.
    udp_echo_in_pod(&env, "theirs").await?;
    udp_echo_in_pod(&env, "mine").await?;
    wait_udp_echo(&env, &format!("theirs.{ns}"), "theirs:ping").await?;
    wait_udp_echo(&env, &format!("mine.{ns}"), "mine:ping").await?;
    let arhat_log = up.logs(2000);
    assert!(
        arhat_log.contains("a pod of this device: its UDP flow goes there directly"),
        "{arhat_log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_on_edge_devices_over_grpc() -> anyhow::Result<()> {
    endpoints_on_edge_devices(Transport::Grpc).await
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_on_edge_devices_over_mqtt() -> anyhow::Result<()> {
    endpoints_on_edge_devices(e2e::transport::MQTT).await
}
