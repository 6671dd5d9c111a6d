//! Who may call a node's kubelet endpoint, decided the way a kubelet with
//! `--anonymous-auth=false`, `--authentication-token-webhook` and
//! `--authorization-mode=Webhook` decides it.
//!
//! - TLS asks for a client certificate but accepts any (see
//!   [`client_cert_verifier`]), so an untrusted one is answered with HTTP 401
//!   rather than a failed handshake.
//! - Authentication: a client certificate chaining to the cluster's client CA
//!   ([`ClientCa`]) names the user (CN) and groups (O); otherwise a bearer
//!   token is checked with a TokenReview. Neither: 401.
//! - Authorization: a SubjectAccessReview for `nodes/<subresource>` of the
//!   node, the subresource derived from the path ([`attributes`]), with the
//!   fine-grained subresources (`pods`, `healthz`, `configz`, `statusz`) tried
//!   before `proxy`. Denied: 403.
//!
//! Review results are cached with the kubelet's default lifetimes so a busy
//! caller (metrics-server every few seconds) does not cost an API round trip
//! per request.
//!
//! - [`attributes`]: the verb and `nodes` subresources of a request.
//! - [`client_ca`]: the client CA bundle and certificate chains verified against it.
//! - [`tls`]: what the listener's TLS asks of clients.
//! - [`review`]: TokenReviews and SubjectAccessReviews, with retries.
//! - [`cache`]: the review caches.

mod attributes;
mod cache;
mod client_ca;
mod review;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
mod tls;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use http::{HeaderValue, Method, StatusCode};
use kube::Client;
use rustls::{
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, UnixTime},
    server::danger::ClientCertVerifier,
};
use tracing::{debug, warn};

pub use attributes::attributes;
use attributes::bearer;
use cache::TtlCache;
use client_ca::verify_chain;
pub use client_ca::{
    CA_CONFIGMAP_KEY, CA_CONFIGMAP_NAME, CA_CONFIGMAP_NAMESPACE, CaError, ClientCa,
};
use review::{Access, Decision, KubeReviewer, Reviewer};
use tls::any_client_cert;
pub use tls::client_cert_verifier;

/// The kubelet's defaults (`authentication.webhook.cacheTTL`,
/// `authorization.webhook.cacheAuthorizedTTL` / `cacheUnauthorizedTTL`); the
/// apiserver's token cache keeps failures 10 s.
const TOKEN_TTL_AUTHENTICATED: Duration = Duration::from_secs(120);
const TOKEN_TTL_REJECTED: Duration = Duration::from_secs(10);
const DECISION_TTL_ALLOWED: Duration = Duration::from_secs(300);
const DECISION_TTL_DENIED: Duration = Duration::from_secs(30);
/// Bound on each cache; past it, everything is dropped (cheap, and only
/// reached under abuse or with very many distinct callers).
const CACHE_MAX_ENTRIES: usize = 10_000;

/// The body of every 401, as a kubelet writes it: why authentication failed is
/// logged, not told to the caller.
const UNAUTHORIZED: &str = "Unauthorized";

/// An authenticated caller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
    pub uid: String,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// A refused request; [`AuthError::status`] is the HTTP status to answer with
/// and the message (`Display`) the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    /// A review could not be made (the apiserver failed or timed out).
    #[error("{0}")]
    Unavailable(String),
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            // Transient by nature: callers (the apiserver) may retry.
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn unauthenticated() -> Self {
        Self::Unauthenticated(UNAUTHORIZED.to_string())
    }
}

/// Authentication and authorization of kubelet callers; cheap to clone.
#[derive(Debug, Clone)]
pub struct Auth(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    ca: ClientCa,
    reviewer: Box<dyn Reviewer>,
    algs: WebPkiSupportedAlgorithms,
    verifier: Arc<dyn ClientCertVerifier>,
    /// By SHA-256 of the token; `None`: rejected.
    tokens: TtlCache<[u8; 32], Option<Identity>>,
    decisions: TtlCache<Access, Decision>,
}

impl Auth {
    /// Reviews go to the cluster of `client` (aranya needs `create` on
    /// tokenreviews and subjectaccessreviews: ClusterRole system:auth-delegator).
    pub fn new(client: Client, ca: ClientCa) -> Self {
        Self::with_reviewer(Box::new(KubeReviewer { client }), ca)
    }

    fn with_reviewer(reviewer: Box<dyn Reviewer>, ca: ClientCa) -> Self {
        let verifier = any_client_cert();
        Self(Arc::new(Inner {
            ca,
            reviewer,
            algs: verifier.algs,
            verifier: Arc::new(verifier),
            tokens: TtlCache::new(CACHE_MAX_ENTRIES),
            decisions: TtlCache::new(CACHE_MAX_ENTRIES),
        }))
    }

    /// The CA bundle client certificates are checked against.
    pub fn client_ca(&self) -> &ClientCa {
        &self.0.ca
    }

    /// For the listener's `ServerConfig`: see [`client_cert_verifier`].
    pub fn client_cert_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.verifier.clone()
    }

    /// Who is calling: a client certificate chaining to the client CA, else a
    /// bearer token the apiserver accepts. `peer_certs` is the connection's
    /// chain as presented (leaf first).
    pub async fn authenticate(
        &self,
        peer_certs: Option<&[CertificateDer<'static>]>,
        authorization: Option<&HeaderValue>,
    ) -> Result<Identity, AuthError> {
        self.authenticate_at(peer_certs, authorization, UnixTime::now(), Instant::now())
            .await
    }

    async fn authenticate_at(
        &self,
        peer_certs: Option<&[CertificateDer<'static>]>,
        authorization: Option<&HeaderValue>,
        cert_time: UnixTime,
        now: Instant,
    ) -> Result<Identity, AuthError> {
        if let Some(chain) = peer_certs.filter(|chain| !chain.is_empty()) {
            let anchors = self.0.ca.anchors();
            match verify_chain(&anchors, &self.0.algs, chain, cert_time) {
                Ok(who) => return Ok(who),
                // Like the kubelet's union authenticator: on to the token.
                Err(reason) => debug!(%reason, "client certificate not accepted"),
            }
        }
        let Some(token) = bearer(authorization) else {
            return Err(AuthError::unauthenticated());
        };
        let key = sha256(token.as_bytes());
        let reviewed = match self.0.tokens.get(&key, now) {
            Some(cached) => cached,
            None => {
                let reviewed = self.0.reviewer.review_token(token).await.map_err(|e| {
                    warn!(error = %e, "token review failed");
                    AuthError::Unavailable(format!("Authentication unavailable: {e}"))
                })?;
                let ttl = if reviewed.is_some() {
                    TOKEN_TTL_AUTHENTICATED
                } else {
                    TOKEN_TTL_REJECTED
                };
                self.0.tokens.insert(key, reviewed.clone(), ttl, now);
                reviewed
            }
        };
        reviewed.ok_or_else(|| {
            debug!("bearer token not authenticated");
            AuthError::unauthenticated()
        })
    }

    /// Whether `who` may make this request of `node`'s kubelet API.
    pub async fn authorize(
        &self,
        who: &Identity,
        node: &str,
        method: &Method,
        path: &str,
    ) -> Result<(), AuthError> {
        self.authorize_at(who, node, method, path, Instant::now())
            .await
    }

    async fn authorize_at(
        &self,
        who: &Identity,
        node: &str,
        method: &Method,
        path: &str,
        now: Instant,
    ) -> Result<(), AuthError> {
        let (verb, subresources) = attributes(method, path)?;
        let mut reason = String::new();
        for &subresource in &subresources {
            let access = Access {
                who: who.clone(),
                verb,
                subresource,
                node: node.to_string(),
            };
            let decision = self.decide(access, now).await?;
            if decision.allowed {
                return Ok(());
            }
            if !decision.reason.is_empty() {
                reason = decision.reason;
            }
        }
        let mut message = format!(
            "Forbidden (user={}, verb={verb}, resource=nodes, subresource={})",
            who.user,
            subresources.join(",")
        );
        if !reason.is_empty() {
            message.push_str(": ");
            message.push_str(&reason);
        }
        debug!(%message, "kubelet request forbidden");
        Err(AuthError::Forbidden(message))
    }

    /// One SubjectAccessReview, or its cached answer.
    async fn decide(&self, access: Access, now: Instant) -> Result<Decision, AuthError> {
        if let Some(cached) = self.0.decisions.get(&access, now) {
            return Ok(cached);
        }
        let decision = self.0.reviewer.review_access(&access).await.map_err(|e| {
            let Access {
                who,
                verb,
                subresource,
                ..
            } = &access;
            warn!(user = %who.user, verb, subresource, error = %e, "authorization failed");
            AuthError::Unavailable(format!(
                "Authorization error (user={}, verb={verb}, resource=nodes, \
                 subresource={subresource}): {e}",
                who.user
            ))
        })?;
        let ttl = if decision.allowed {
            DECISION_TTL_ALLOWED
        } else {
            DECISION_TTL_DENIED
        };
        self.0.decisions.insert(access, decision.clone(), ttl, now);
        Ok(decision)
    }

    /// [`Auth::authenticate`] then [`Auth::authorize`] for `request` to `node`.
    pub async fn check<B>(
        &self,
        node: &str,
        peer_certs: Option<&[CertificateDer<'static>]>,
        request: &http::Request<B>,
    ) -> Result<Identity, AuthError> {
        let who = self
            .authenticate(
                peer_certs,
                request.headers().get(http::header::AUTHORIZATION),
            )
            .await?;
        self.authorize(&who, node, request.method(), request.uri().path())
            .await?;
        Ok(who)
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
