//! The listeners: one port per node, TLS, authentication and authorization of
//! every request, then the route.

use std::{convert::Infallible, net::IpAddr, sync::Arc, time::Duration};

use connectivity::{LinkState, SessionHandle};
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info};

use super::{
    Body, Problem, auth::Auth, cert::ServingCerts, exec, hostpod, logs, podlist, portforward, text,
};
use crate::config::PortRange;

/// What every node's listener shares.
pub struct Kubelet {
    pub(super) client: Client,
    pub(super) auth: Auth,
    serving: ServingCerts,
    ports: PortRange,
    bind: IpAddr,
    /// Where the device host pods live (aranya's namespace).
    pub(super) host_namespace: String,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet")
            .field("ports", &self.ports)
            .field("bind", &self.bind)
            .field("host_namespace", &self.host_namespace)
            .finish_non_exhaustive()
    }
}

impl Kubelet {
    /// `bind` is the address listeners bind; `ports` where they may.
    pub fn new(
        client: Client,
        auth: Auth,
        serving: ServingCerts,
        ports: PortRange,
        bind: IpAddr,
        host_namespace: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            client,
            auth,
            serving,
            ports,
            bind,
            host_namespace,
        })
    }

    pub fn serving(&self) -> &ServingCerts {
        &self.serving
    }

    pub fn host_namespace(&self) -> &str {
        &self.host_namespace
    }

    /// Binds a port for `node` and serves it until the task is aborted.
    /// `session` follows the device's current session.
    pub fn serve(
        self: &Arc<Self>,
        node: &str,
        session: watch::Receiver<Option<SessionHandle>>,
    ) -> anyhow::Result<(u16, tokio::task::JoinHandle<()>)> {
        let listener = self.bind_port()?;
        let port = listener.local_addr()?.port();
        let tls = super::tls::server_config(
            node,
            self.serving.clone(),
            self.auth.client_cert_verifier(),
        )?;
        let endpoint = Arc::new(NodeEndpoint {
            kubelet: self.clone(),
            node: node.to_string(),
            session,
        });
        info!(%node, port, "kubelet endpoint listening");
        let task = tokio::spawn(
            accept(endpoint, TlsAcceptor::from(Arc::new(tls)), listener).in_current_span(),
        );
        Ok((port, task))
    }

    fn bind_port(&self) -> anyhow::Result<tokio::net::TcpListener> {
        let mut last = None;
        for port in self.ports.candidates() {
            match std::net::TcpListener::bind((self.bind, port)) {
                Ok(listener) => {
                    listener.set_nonblocking(true)?;
                    return Ok(tokio::net::TcpListener::from_std(listener)?);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(anyhow::anyhow!(
            "no free kubelet port in {:?} on {}: {}",
            self.ports,
            self.bind,
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    }
}

/// How long a new node's first callers wait for its signed serving
/// certificate. They queue in the listen backlog meanwhile; the bound stays
/// under the apiserver's 10 s TLS handshake timeout.
const FIRST_CERTIFICATE_WAIT: Duration = Duration::from_secs(6);

/// Serves every TLS connection the shared acceptor hands over (each
/// handshake in its own task, with a deadline).
async fn accept(endpoint: Arc<NodeEndpoint>, tls: TlsAcceptor, listener: tokio::net::TcpListener) {
    // The cluster usually signs within a second: callers of a node that just
    // appeared get the certificate an apiserver verifying kubelets accepts,
    // not the interim one it rejects.
    if !endpoint
        .kubelet
        .serving
        .issued(&endpoint.node, FIRST_CERTIFICATE_WAIT)
        .await
    {
        info!(node = %endpoint.node, "serving certificate not signed yet: presenting a self-signed one meanwhile");
    }
    let mut accepted = connectivity::tls::accept(listener, tls);
    while let Some(stream) = accepted.next().await {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                debug!(error = %e, "accepting a kubelet connection");
                continue;
            }
        };
        let endpoint = endpoint.clone();
        tokio::spawn(
            async move {
                if let Err(e) = connection(endpoint, stream).await {
                    debug!(error = %e, "kubelet connection ended");
                }
            }
            .in_current_span(),
        );
    }
}

async fn connection(
    endpoint: Arc<NodeEndpoint>,
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
) -> anyhow::Result<()> {
    let peer: Arc<[CertificateDer<'static>]> = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let service = service_fn(move |request| {
        let endpoint = endpoint.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(endpoint.handle(request, &peer).await) }
    });
    http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await?;
    Ok(())
}

/// One virtual node's kubelet endpoint.
#[derive(Debug)]
pub struct NodeEndpoint {
    pub(super) kubelet: Arc<Kubelet>,
    pub(super) node: String,
    session: watch::Receiver<Option<SessionHandle>>,
}

impl NodeEndpoint {
    async fn handle(
        &self,
        request: Request<Incoming>,
        peer: &[CertificateDer<'static>],
    ) -> Response<Body> {
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        let auth = &self.kubelet.auth;
        let checked = async {
            let chain = (!peer.is_empty()).then_some(peer);
            let who = auth
                .authenticate(chain, request.headers().get(http::header::AUTHORIZATION))
                .await?;
            auth.authorize(&who, &self.node, &method, &path).await?;
            Ok::<_, super::auth::AuthError>(who)
        };
        let who = match checked.await {
            Ok(who) => who,
            Err(e) => {
                debug!(%method, %path, error = %e, "kubelet request refused");
                return Problem::new(e.status(), e.to_string()).into_response();
            }
        };
        debug!(%method, %path, user = %who.user, "kubelet request");
        match self.route(request).await {
            Ok(response) => response,
            Err(problem) => {
                debug!(%method, %path, status = %problem.status, message = %problem.message, "kubelet request failed");
                problem.into_response()
            }
        }
    }

    async fn route(&self, request: Request<Incoming>) -> Result<Response<Body>, Problem> {
        let path = request.uri().path().trim_start_matches('/').to_string();
        let segments: Vec<&str> = path.split('/').collect();
        let get = request.method() == Method::GET || request.method() == Method::HEAD;
        match segments.as_slice() {
            ["healthz"] if get => Ok(text(StatusCode::OK, "ok")),
            ["pods"] | ["pods", ""] if get => podlist::pods(self).await,
            ["runningpods"] | ["runningpods", ""] if get => podlist::running(self).await,
            ["containerLogs", namespace, pod, container] if get => {
                logs::serve(self, namespace, pod, container, request.uri().query()).await
            }
            // A kubelet also takes the pod's UID before the container.
            ["exec" | "run", namespace, pod, container]
            | ["exec" | "run", namespace, pod, _, container] => {
                let (namespace, pod, container) = (
                    namespace.to_string(),
                    pod.to_string(),
                    container.to_string(),
                );
                exec::serve(self, request, &namespace, &pod, &container, false).await
            }
            ["attach", namespace, pod, container] | ["attach", namespace, pod, _, container] => {
                let (namespace, pod, container) = (
                    namespace.to_string(),
                    pod.to_string(),
                    container.to_string(),
                );
                exec::serve(self, request, &namespace, &pod, &container, true).await
            }
            ["portForward", namespace, pod] | ["portForward", namespace, pod, _] => {
                let (namespace, pod) = (namespace.to_string(), pod.to_string());
                portforward::serve(self, request, &namespace, &pod).await
            }
            _ => Err(Problem::not_found(format!(
                "no kubelet endpoint at /{path}"
            ))),
        }
    }

    /// The device's session, if it is connected now.
    pub(super) fn session(&self) -> Result<SessionHandle, Problem> {
        self.session
            .borrow()
            .clone()
            .filter(|s| matches!(*s.state().borrow(), LinkState::Connected { .. }))
            .ok_or_else(|| Problem::disconnected(&self.node))
    }

    /// The pod, if it is bound to this node.
    pub(super) async fn pod(&self, namespace: &str, name: &str) -> Result<Pod, Problem> {
        let api: Api<Pod> = Api::namespaced(self.kubelet.client.clone(), namespace);
        let pod = api.get_opt(name).await.map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading pod {namespace}/{name}: {e}"),
            )
        })?;
        let on_node = pod
            .as_ref()
            .and_then(|p| p.spec.as_ref())
            .and_then(|s| s.node_name.as_deref())
            == Some(self.node.as_str());
        match pod {
            Some(pod) if on_node => Ok(pod),
            _ => Err(Problem::not_found(format!(
                "pod \"{namespace}/{name}\" not found on node {}",
                self.node
            ))),
        }
    }

    /// Ok if `pod` has `container` (any kind, as kubectl allows), or, for
    /// the host pod, it is the host container; 404 naming it otherwise.
    pub(super) fn container(&self, pod: &Pod, container: &str) -> Result<(), Problem> {
        let known = if self.is_host_pod(pod) {
            container == hostpod::CONTAINER
        } else {
            pod.spec.as_ref().is_some_and(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
                    .any(|c| c.name == container)
                    || s.ephemeral_containers
                        .iter()
                        .flatten()
                        .any(|c| c.name == container)
            })
        };
        if known {
            return Ok(());
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        Err(Problem::not_found(format!(
            "container \"{container}\" not found in pod \"{ns}/{name}\""
        )))
    }

    /// The UID the device knows `pod` by; none for the host pod, which the
    /// device serves itself.
    pub(super) fn device_uid(&self, pod: &Pod) -> String {
        if self.is_host_pod(pod) {
            String::new()
        } else {
            pod.metadata.uid.clone().unwrap_or_default()
        }
    }

    /// Whether `pod` is this node's device host pod.
    pub(super) fn is_host_pod(&self, pod: &Pod) -> bool {
        hostpod::is_host_pod(pod, &self.kubelet.host_namespace, &self.node)
    }
}
