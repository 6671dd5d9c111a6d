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

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    fmt,
    hash::Hash,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use http::{HeaderValue, Method, StatusCode};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    core::v1::ConfigMap,
};
use kube::{Api, Client, api::PostParams};
use rustls::{
    DigitallySignedStruct, DistinguishedName, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, TrustAnchor, UnixTime, pem::PemObject},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};
use tracing::{debug, info, warn};

/// Where a kubelet-like component finds the cluster's client CA in-cluster.
pub const CA_CONFIGMAP_NAMESPACE: &str = "kube-system";
pub const CA_CONFIGMAP_NAME: &str = "extension-apiserver-authentication";
pub const CA_CONFIGMAP_KEY: &str = "client-ca-file";

/// `user.Extra` key naming the credential, as the apiserver's x509
/// authenticator sets it (SHA-256 of the leaf certificate).
const CREDENTIAL_ID_KEY: &str = "authentication.kubernetes.io/credential-id";
/// Kubernetes' subject attribute carrying a user UID (`AllowParsingUserUIDFromCertAuth`).
const UID_OID: &str = "1.3.6.1.4.1.57683.2";

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

/// One review call may take this long, and is tried this often when the
/// apiserver is briefly unavailable (5xx, 429, connection errors).
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
const REVIEW_ATTEMPTS: u32 = 3;
const REVIEW_BACKOFF: Duration = Duration::from_millis(250);

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

/// The kubelet's request attributes: the API verb for `method` and the
/// `nodes` subresources to try, in order, for `path` (the first allowed one
/// admits the request).
///
/// Paths match whole segments (`/stats` and `/stats/summary`, not `/statsx`),
/// after percent-decoding, as the kubelet matches `URL.Path`. Paths with `.`
/// or `..` segments are refused: the route served must be the one authorized.
pub fn attributes(
    method: &Method,
    path: &str,
) -> Result<(&'static str, Vec<&'static str>), AuthError> {
    let verb = match *method {
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => {
            return Err(AuthError::BadRequest(format!(
                "method {method} is not supported"
            )));
        }
    };
    let path = percent_decode(path)?;
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(AuthError::BadRequest(
            "the path must not contain \".\" or \"..\" segments".to_string(),
        ));
    }
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };

    let mut subresources = Vec::with_capacity(2);
    // KubeletFineGrainedAuthz (GA in 1.36): a narrower grant first, `proxy`
    // still admitting as before.
    if under("/pods") || under("/runningpods") {
        subresources.push("pods");
    } else if under("/healthz") {
        subresources.push("healthz");
    } else if under("/configz") {
        subresources.push("configz");
    } else if under("/statusz") {
        subresources.push("statusz");
    }
    subresources.push(if under("/stats") {
        "stats"
    } else if under("/metrics") {
        "metrics"
    } else if under("/logs") {
        // "log", like pods/log.
        "log"
    } else if under("/spec") {
        "spec"
    } else if under("/checkpoint") {
        "checkpoint"
    } else {
        "proxy"
    });
    Ok((verb, subresources))
}

fn percent_decode(path: &str) -> Result<Cow<'_, str>, AuthError> {
    if !path.contains('%') {
        return Ok(Cow::Borrowed(path));
    }
    let bad = || AuthError::BadRequest("the path has an invalid percent-encoding".to_string());
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(Cow::Owned(String::from_utf8_lossy(&out).into_owned()))
}

/// The token of an `Authorization: Bearer <token>` header, parsed as the
/// apiserver's bearer-token authenticator does (scheme case-insensitive,
/// exactly one space before the token).
fn bearer(header: Option<&HeaderValue>) -> Option<&str> {
    let value = header?.to_str().ok()?.trim();
    let mut parts = value.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

// --- client CA --------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading ConfigMap {CA_CONFIGMAP_NAMESPACE}/{CA_CONFIGMAP_NAME}: {0}")]
    Kube(#[from] kube::Error),
    #[error("ConfigMap {CA_CONFIGMAP_NAMESPACE}/{CA_CONFIGMAP_NAME} has no {CA_CONFIGMAP_KEY}")]
    Missing,
    #[error("client CA bundle: {0}")]
    Pem(String),
    #[error("client CA bundle holds no usable certificate")]
    Empty,
}

/// The CAs whose client certificates authenticate callers; replaced as a
/// whole when the bundle changes, so a CA rotation needs no restart.
#[derive(Clone, Default)]
pub struct ClientCa(Arc<RwLock<Bundle>>);

#[derive(Default)]
struct Bundle {
    anchors: Arc<[TrustAnchor<'static>]>,
    /// SHA-256 of the PEM it came from, to tell a change from a re-read.
    digest: Option<[u8; 32]>,
}

impl fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCa")
            .field("anchors", &self.len())
            .finish()
    }
}

impl ClientCa {
    /// Trusts nothing: every client certificate is refused (tokens still work).
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn from_pem(pem: &[u8]) -> Result<Self, CaError> {
        let ca = Self::empty();
        ca.replace_pem(pem)?;
        Ok(ca)
    }

    /// A PEM file (`--kubelet-client-ca`).
    pub fn from_pem_file(path: &Path) -> Result<Self, CaError> {
        let pem = std::fs::read(path).map_err(|source| CaError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(&pem)
    }

    /// `client-ca-file` of ConfigMap kube-system/extension-apiserver-authentication
    /// (aranya needs `get` on it: Role extension-apiserver-authentication-reader).
    pub async fn from_cluster(client: &Client) -> Result<Self, CaError> {
        let ca = Self::empty();
        ca.refresh_from_cluster(client).await?;
        Ok(ca)
    }

    /// Number of trusted CA certificates.
    pub fn len(&self) -> usize {
        self.read().anchors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Swaps in the bundle `pem`; `Ok(true)` if it differs from the current
    /// one. A bundle without a usable certificate is refused and the current
    /// one kept.
    pub fn replace_pem(&self, pem: &[u8]) -> Result<bool, CaError> {
        let digest = sha256(pem);
        if self.read().digest == Some(digest) {
            return Ok(false);
        }
        let mut anchors = Vec::new();
        for (i, der) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let der = der.map_err(|e| CaError::Pem(e.to_string()))?;
            match webpki::anchor_from_trusted_cert(&der) {
                Ok(anchor) => anchors.push(anchor.to_owned()),
                // Like Go's AppendCertsFromPEM: skip what cannot be used.
                Err(e) => warn!(index = i, error = %e, "client CA bundle: certificate skipped"),
            }
        }
        if anchors.is_empty() {
            return Err(CaError::Empty);
        }
        let mut bundle = self.0.write().unwrap_or_else(PoisonError::into_inner);
        *bundle = Bundle {
            anchors: anchors.into(),
            digest: Some(digest),
        };
        Ok(true)
    }

    pub async fn refresh_from_cluster(&self, client: &Client) -> Result<bool, CaError> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), CA_CONFIGMAP_NAMESPACE);
        let cm = api.get(CA_CONFIGMAP_NAME).await?;
        let pem = cm
            .data
            .as_ref()
            .and_then(|data| data.get(CA_CONFIGMAP_KEY))
            .ok_or(CaError::Missing)?;
        self.replace_pem(pem.as_bytes())
    }

    pub async fn refresh_from_file(&self, path: &Path) -> Result<bool, CaError> {
        let pem = tokio::fs::read(path)
            .await
            .map_err(|source| CaError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        self.replace_pem(&pem)
    }

    /// Re-reads the bundle from the cluster every `interval` until the task
    /// is aborted; a failed read keeps the current bundle.
    pub fn spawn_refresh(&self, client: Client, interval: Duration) -> tokio::task::JoinHandle<()> {
        let ca = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                ca.log_refresh(ca.refresh_from_cluster(&client).await);
            }
        })
    }

    /// Like [`ClientCa::spawn_refresh`], from a PEM file.
    pub fn spawn_refresh_file(
        &self,
        path: PathBuf,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let ca = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                ca.log_refresh(ca.refresh_from_file(&path).await);
            }
        })
    }

    fn log_refresh(&self, outcome: Result<bool, CaError>) {
        match outcome {
            Ok(true) => info!(anchors = self.len(), "client CA bundle changed"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "refreshing the client CA bundle; keeping the current one"),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Bundle> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn anchors(&self) -> Arc<[TrustAnchor<'static>]> {
        self.read().anchors.clone()
    }
}

/// Verifies `chain` (leaf first, then intermediates as the client sent them)
/// for client authentication at `now` and names its subject, as the
/// apiserver's x509 authenticator does: user = CN, groups = O, uid from the
/// Kubernetes UID attribute, credential id = SHA-256 of the leaf.
fn verify_chain(
    anchors: &[TrustAnchor<'_>],
    algs: &WebPkiSupportedAlgorithms,
    chain: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<Identity, String> {
    let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
    let end_entity = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("parsing the certificate: {e}"))?;
    end_entity
        .verify_for_usage(
            algs.all,
            anchors,
            intermediates,
            now,
            // Like Go's ExtKeyUsageClientAuth: a certificate without EKUs passes.
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| format!("verifying the certificate: {e}"))?;

    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("parsing the certificate: {e}"))?;
    let subject = cert.subject();
    // Go's pkix.Name keeps the last CN.
    let user = subject
        .iter_common_name()
        .filter_map(|attr| attr.as_str().ok())
        .last()
        .unwrap_or_default()
        .to_string();
    if user.is_empty() {
        return Err("the certificate's subject has no common name".to_string());
    }
    let groups = subject
        .iter_organization()
        .filter_map(|attr| attr.as_str().ok().map(str::to_string))
        .collect();
    let mut uids = subject
        .iter_attributes()
        .filter(|attr| attr.attr_type().to_id_string() == UID_OID);
    let uid = match (uids.next(), uids.next()) {
        (None, _) => String::new(),
        (Some(attr), None) => attr
            .as_str()
            .map_err(|_| "the certificate's UID is not a string".to_string())?
            .to_string(),
        (Some(_), Some(_)) => return Err("the certificate has more than one UID".to_string()),
    };
    let credential = format!("X509SHA256={}", hex(&sha256(leaf.as_ref())));
    Ok(Identity {
        user,
        groups,
        uid,
        extra: BTreeMap::from([(CREDENTIAL_ID_KEY.to_string(), vec![credential])]),
    })
}

// --- TLS ---------------------------------------------------------------------

/// Asks clients for a certificate, does not require one, and accepts any
/// chain: whether it is trusted is decided per request by
/// [`Auth::authenticate`], so an untrusted certificate gets a 401 (and may be
/// outranked by a valid token) instead of a handshake failure. The handshake
/// signature is still verified, so a peer certificate proves possession of
/// its key.
///
/// Peer certificates of such a connection are *unverified*: never use them
/// other than through [`Auth::authenticate`].
pub fn client_cert_verifier() -> Arc<dyn ClientCertVerifier> {
    Arc::new(AnyClientCert::new())
}

#[derive(Debug)]
struct AnyClientCert {
    algs: WebPkiSupportedAlgorithms,
}

impl AnyClientCert {
    fn new() -> Self {
        Self {
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints: Go clients (the apiserver) send no certificate when hints
    /// are given and theirs does not match, and CA rotation needs none.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

// --- caches ------------------------------------------------------------------

/// A map whose entries expire; bounded by dropping everything when full
/// (after dropping what expired). Time is passed in so tests control it.
struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    max: usize,
}

impl<K, V> fmt::Debug for TtlCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Sizes only: keys and values identify callers.
        f.debug_struct("TtlCache")
            .field("len", &self.lock().len())
            .field("max", &self.max)
            .finish()
    }
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    fn new(max: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            max,
        }
    }

    fn get(&self, key: &K, now: Instant) -> Option<V> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some((value, expires)) if *expires > now => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&self, key: K, value: V, ttl: Duration, now: Instant) {
        let mut entries = self.lock();
        if entries.len() >= self.max && !entries.contains_key(&key) {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= self.max {
                entries.clear();
            }
        }
        entries.insert(key, (value, now + ttl));
    }
}

impl<K, V> TtlCache<K, V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (V, Instant)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// --- reviews -------------------------------------------------------------------

/// A SubjectAccessReview's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decision {
    allowed: bool,
    reason: String,
}

/// What one authorization check asks about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Access {
    who: Identity,
    verb: &'static str,
    subresource: &'static str,
    node: String,
}

/// The apiserver's reviews, behind a trait so the caching and decision logic
/// is tested without a cluster. Errors are messages for logs and 503 bodies;
/// they never contain the token.
trait Reviewer: fmt::Debug + Send + Sync {
    /// `Ok(None)`: the token is not valid.
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<Identity>, String>>;
    fn review_access<'a>(&'a self, access: &'a Access) -> BoxFuture<'a, Result<Decision, String>>;
}

struct KubeReviewer {
    client: Client,
}

impl fmt::Debug for KubeReviewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeReviewer").finish_non_exhaustive()
    }
}

impl Reviewer for KubeReviewer {
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<Identity>, String>> {
        Box::pin(async move {
            let api: Api<TokenReview> = Api::all(self.client.clone());
            let review = TokenReview {
                // No audiences: the apiserver's own, as for the kubelet.
                spec: TokenReviewSpec {
                    token: token.to_string(),
                    audiences: None,
                },
                ..Default::default()
            };
            let params = PostParams::default();
            let reviewed = with_retries("TokenReview", || api.create(&params, &review)).await?;
            let status = reviewed.status.unwrap_or_default();
            if status.authenticated != Some(true) {
                debug!(
                    error = status.error.as_deref().unwrap_or(""),
                    "token not authenticated"
                );
                return Ok(None);
            }
            let user = status.user.unwrap_or_default();
            let name = user.username.unwrap_or_default();
            if name.is_empty() {
                debug!("token authenticated without a user name; refused");
                return Ok(None);
            }
            Ok(Some(Identity {
                user: name,
                groups: user.groups.unwrap_or_default(),
                uid: user.uid.unwrap_or_default(),
                extra: user.extra.unwrap_or_default(),
            }))
        })
    }

    fn review_access<'a>(&'a self, access: &'a Access) -> BoxFuture<'a, Result<Decision, String>> {
        Box::pin(async move {
            let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
            let who = &access.who;
            let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: non_empty(&who.user),
                    groups: (!who.groups.is_empty()).then(|| who.groups.clone()),
                    uid: non_empty(&who.uid),
                    extra: (!who.extra.is_empty()).then(|| who.extra.clone()),
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(access.verb.to_string()),
                        group: Some(String::new()),
                        version: Some("v1".to_string()),
                        resource: Some("nodes".to_string()),
                        subresource: Some(access.subresource.to_string()),
                        name: Some(access.node.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let params = PostParams::default();
            let reviewed =
                with_retries("SubjectAccessReview", || api.create(&params, &review)).await?;
            let status = reviewed.status.unwrap_or_default();
            if let Some(e) = status.evaluation_error.as_deref().filter(|e| !e.is_empty()) {
                debug!(error = e, "SubjectAccessReview evaluation error");
            }
            Ok(Decision {
                allowed: status.allowed,
                reason: status.reason.unwrap_or_default(),
            })
        })
    }
}

/// Runs `call` with a timeout, again after a short pause when the failure is
/// likely transient.
async fn with_retries<T, F, Fut>(what: &str, mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut pause = REVIEW_BACKOFF;
    let mut attempt = 1;
    loop {
        let error = match tokio::time::timeout(REVIEW_TIMEOUT, call()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => {
                let transient = match &e {
                    kube::Error::Api(status) => status.code >= 500 || status.code == 429,
                    _ => true,
                };
                if !transient {
                    return Err(format!("{what}: {e}"));
                }
                format!("{what}: {e}")
            }
            Err(_) => format!("{what}: no answer within {REVIEW_TIMEOUT:?}"),
        };
        if attempt >= REVIEW_ATTEMPTS {
            return Err(error);
        }
        debug!(attempt, %error, "review failed; retrying");
        tokio::time::sleep(pause).await;
        pause *= 2;
        attempt += 1;
    }
}

// --- Auth ----------------------------------------------------------------------

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
        let verifier = AnyClientCert::new();
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };

    // --- attributes ----------------------------------------------------------

    #[test]
    fn verbs_and_subresources_like_the_kubelet() {
        let get = Method::GET;
        let cases: &[(&Method, &str, &str, &[&str])] = &[
            (&get, "/stats/summary", "get", &["stats"]),
            (&get, "/stats", "get", &["stats"]),
            (&get, "/statsx", "get", &["proxy"]),
            (&get, "/metrics", "get", &["metrics"]),
            (&get, "/metrics/cadvisor", "get", &["metrics"]),
            (&get, "/metrics/resource", "get", &["metrics"]),
            (&get, "/logs/", "get", &["log"]),
            (&get, "/logs/syslog", "get", &["log"]),
            (&get, "/spec/", "get", &["spec"]),
            (
                &Method::POST,
                "/checkpoint/ns/pod/c",
                "create",
                &["checkpoint"],
            ),
            (&get, "/pods", "get", &["pods", "proxy"]),
            (&get, "/pods/", "get", &["pods", "proxy"]),
            (&get, "/runningpods/", "get", &["pods", "proxy"]),
            (&get, "/healthz", "get", &["healthz", "proxy"]),
            (&get, "/healthz/ping", "get", &["healthz", "proxy"]),
            (&get, "/configz", "get", &["configz", "proxy"]),
            (&get, "/statusz", "get", &["statusz", "proxy"]),
            (&get, "/containerLogs/ns/pod/c", "get", &["proxy"]),
            (&Method::POST, "/exec/ns/pod/c", "create", &["proxy"]),
            (&get, "/exec/ns/pod/c", "get", &["proxy"]),
            (&Method::POST, "/portForward/ns/pod", "create", &["proxy"]),
            (&get, "/", "get", &["proxy"]),
            (&get, "", "get", &["proxy"]),
            (&get, "/podsx", "get", &["proxy"]),
            (&Method::HEAD, "/healthz", "get", &["healthz", "proxy"]),
            (&Method::PUT, "/x", "update", &["proxy"]),
            (&Method::PATCH, "/x", "patch", &["proxy"]),
            (&Method::DELETE, "/x", "delete", &["proxy"]),
            // Percent-decoded first, as the kubelet matches URL.Path.
            (&get, "/%73tats/summary", "get", &["stats"]),
        ];
        for (method, path, verb, subresources) in cases {
            let got = attributes(method, path).expect("attributes");
            assert_eq!(got, (*verb, subresources.to_vec()), "{method} {path}");
        }
    }

    #[test]
    fn unsupported_methods_and_dot_segments_are_bad_requests() {
        for (method, path) in [
            (Method::OPTIONS, "/pods"),
            (Method::CONNECT, "/pods"),
            (Method::TRACE, "/pods"),
            (Method::GET, "/stats/../exec/ns/pod/c"),
            (Method::GET, "/stats/%2e%2e/exec/ns/pod/c"),
            (Method::GET, "/stats%2F..%2Fexec"),
            (Method::GET, "/./pods"),
            (Method::GET, "/stats/%zz"),
            (Method::GET, "/stats/%4"),
        ] {
            let err = attributes(&method, path).expect_err(path);
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{method} {path}");
        }
    }

    #[test]
    fn bearer_tokens_parse_like_the_apiserver() {
        let header = |s: &str| HeaderValue::from_str(s).expect("header");
        assert_eq!(bearer(Some(&header("Bearer abc"))), Some("abc"));
        assert_eq!(bearer(Some(&header("bearer abc"))), Some("abc"));
        assert_eq!(bearer(Some(&header("  Bearer abc  "))), Some("abc"));
        assert_eq!(bearer(Some(&header("Bearer abc extra"))), Some("abc"));
        assert_eq!(bearer(Some(&header("Bearer  abc"))), None);
        assert_eq!(bearer(Some(&header("Bearer"))), None);
        assert_eq!(bearer(Some(&header("Basic abc"))), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn statuses() {
        assert_eq!(
            AuthError::unauthenticated().status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            AuthError::Forbidden(String::new()).status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            AuthError::BadRequest(String::new()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            AuthError::Unavailable(String::new()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(AuthError::unauthenticated().to_string(), "Unauthorized");
    }

    // --- cache ---------------------------------------------------------------

    #[test]
    fn ttl_cache_expires_entries() {
        let cache = TtlCache::new(10);
        let t0 = Instant::now();
        cache.insert("a", 1, Duration::from_secs(10), t0);
        assert_eq!(cache.get(&"a", t0), Some(1));
        assert_eq!(cache.get(&"a", t0 + Duration::from_secs(9)), Some(1));
        assert_eq!(cache.get(&"a", t0 + Duration::from_secs(10)), None);
        assert_eq!(
            cache.lock().len(),
            0,
            "an expired entry is removed when seen"
        );
        assert_eq!(cache.get(&"b", t0), None);
    }

    #[test]
    fn ttl_cache_is_bounded() {
        let cache = TtlCache::new(3);
        let t0 = Instant::now();
        cache.insert(1, (), Duration::from_secs(1), t0);
        cache.insert(2, (), Duration::from_secs(100), t0);
        cache.insert(3, (), Duration::from_secs(100), t0);
        // Full: the expired entry makes room, the live ones stay.
        let t1 = t0 + Duration::from_secs(2);
        cache.insert(4, (), Duration::from_secs(100), t1);
        assert_eq!(cache.lock().len(), 3);
        assert_eq!(cache.get(&2, t1), Some(()));
        // Replacing an existing key needs no room.
        cache.insert(4, (), Duration::from_secs(100), t1);
        assert_eq!(cache.lock().len(), 3);
        // Full of live entries: all dropped.
        cache.insert(5, (), Duration::from_secs(100), t1);
        assert_eq!(cache.lock().len(), 1);
        assert_eq!(cache.get(&5, t1), Some(()));
        assert_eq!(cache.get(&2, t1), None);
    }

    // --- certificates --------------------------------------------------------

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-signed");
        Ca {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        }
    }

    fn intermediate(parent: &Ca, name: &str) -> (Ca, CertificateDer<'static>) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.signed_by(&key, &parent.issuer).expect("signed");
        let der = cert.der().clone();
        (
            Ca {
                issuer: Issuer::new(params, key),
                pem: cert.pem(),
            },
            der,
        )
    }

    fn leaf_with(
        ca: &Ca,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> (CertificateDer<'static>, KeyPair) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "system:kube-apiserver");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        // rcgen keeps one value per type; the O OID as a custom type adds a second O.
        params.distinguished_name.push(
            DnType::CustomDnType(vec![2, 5, 4, 10]),
            "kubeadm:cluster-admins",
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        edit(&mut params);
        let cert = params.signed_by(&key, &ca.issuer).expect("signed");
        (cert.der().clone(), key)
    }

    fn leaf(ca: &Ca) -> CertificateDer<'static> {
        leaf_with(ca, |_| {}).0
    }

    fn algs() -> WebPkiSupportedAlgorithms {
        rustls::crypto::ring::default_provider().signature_verification_algorithms
    }

    fn verify(ca: &ClientCa, chain: &[CertificateDer<'static>]) -> Result<Identity, String> {
        verify_chain(&ca.anchors(), &algs(), chain, UnixTime::now())
    }

    #[test]
    fn trusted_client_certificate_names_user_and_groups() {
        let root = ca("client-ca");
        let bundle = ClientCa::from_pem(root.pem.as_bytes()).expect("bundle");
        assert_eq!(bundle.len(), 1);
        let cert = leaf(&root);
        let who = verify(&bundle, std::slice::from_ref(&cert)).expect("trusted");
        assert_eq!(who.user, "system:kube-apiserver");
        assert_eq!(who.groups, ["system:masters", "kubeadm:cluster-admins"]);
        assert_eq!(who.uid, "");
        let credential = &who.extra[CREDENTIAL_ID_KEY];
        assert_eq!(
            credential,
            &vec![format!("X509SHA256={}", hex(&sha256(cert.as_ref())))]
        );
    }

    #[test]
    fn certificate_from_another_ca_is_refused() {
        let bundle = ClientCa::from_pem(ca("client-ca").pem.as_bytes()).expect("bundle");
        let foreign = leaf(&ca("client-ca"));
        assert!(verify(&bundle, &[foreign]).is_err());
        assert!(verify(&ClientCa::empty(), &[leaf(&ca("x"))]).is_err());
    }

    #[test]
    fn expired_certificate_is_refused() {
        let root = ca("client-ca");
        let bundle = ClientCa::from_pem(root.pem.as_bytes()).expect("bundle");
        let (expired, _) = leaf_with(&root, |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        });
        let err = verify(&bundle, &[expired]).expect_err("expired");
        assert!(err.contains("Expired"), "{err}");
    }

    #[test]
    fn certificate_without_client_auth_usage_is_refused() {
        let root = ca("client-ca");
        let bundle = ClientCa::from_pem(root.pem.as_bytes()).expect("bundle");
        let (server_only, _) = leaf_with(&root, |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        });
        assert!(verify(&bundle, &[server_only]).is_err());
        // No EKU at all is good for any use, as in Go.
        let (any_use, _) = leaf_with(&root, |p| p.extended_key_usages.clear());
        assert!(verify(&bundle, &[any_use]).is_ok());
    }

    #[test]
    fn certificate_without_common_name_is_refused() {
        let root = ca("client-ca");
        let bundle = ClientCa::from_pem(root.pem.as_bytes()).expect("bundle");
        let (nameless, _) = leaf_with(&root, |p| {
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name
                .push(DnType::OrganizationName, "system:masters");
        });
        assert!(verify(&bundle, &[nameless]).is_err());
    }

    #[test]
    fn uid_attribute_becomes_the_uid() {
        let root = ca("client-ca");
        let bundle = ClientCa::from_pem(root.pem.as_bytes()).expect("bundle");
        let uid_type = DnType::CustomDnType(vec![1, 3, 6, 1, 4, 1, 57683, 2]);
        let (with_uid, _) = leaf_with(&root, |p| {
            p.distinguished_name.push(uid_type.clone(), "1234-abcd");
        });
        let who = verify(&bundle, &[with_uid]).expect("trusted");
        assert_eq!(who.uid, "1234-abcd");
    }

    #[test]
    fn bundle_with_two_cas_trusts_both() {
        let (a, b) = (ca("ca-a"), ca("ca-b"));
        let pem = format!("{}\n{}", a.pem, b.pem);
        let bundle = ClientCa::from_pem(pem.as_bytes()).expect("bundle");
        assert_eq!(bundle.len(), 2);
        assert!(verify(&bundle, &[leaf(&a)]).is_ok());
        assert!(verify(&bundle, &[leaf(&b)]).is_ok());
        assert!(verify(&bundle, &[leaf(&ca("ca-c"))]).is_err());
    }

    #[test]
    fn intermediates_come_from_the_presented_chain() {
        let root = ca("root");
        let (mid, mid_der) = intermediate(&root, "intermediate");
        let bundle = ClientCa::from_pem(root.pem.as_bytes()).expect("bundle");
        let cert = leaf(&mid);
        assert!(verify(&bundle, &[cert.clone(), mid_der]).is_ok());
        assert!(verify(&bundle, &[cert]).is_err());
    }

    #[test]
    fn bundle_replacement() {
        let (a, b) = (ca("ca-a"), ca("ca-b"));
        let bundle = ClientCa::from_pem(a.pem.as_bytes()).expect("bundle");
        let shared = bundle.clone();
        assert!(!bundle.replace_pem(a.pem.as_bytes()).expect("same"));
        assert!(bundle.replace_pem(b.pem.as_bytes()).expect("changed"));
        // Clones share the bundle: a rotation reaches every listener.
        assert!(verify(&shared, &[leaf(&a)]).is_err());
        assert!(verify(&shared, &[leaf(&b)]).is_ok());
        // Garbage or nothing usable keeps what there was.
        assert!(bundle.replace_pem(b"no certificates here").is_err());
        assert!(
            bundle
                .replace_pem(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        assert!(verify(&shared, &[leaf(&b)]).is_ok());
        assert!(ClientCa::from_pem(b"").is_err());
    }

    #[tokio::test]
    async fn bundle_from_file() {
        let root = ca("client-ca");
        let dir = std::env::temp_dir().join(format!("aranya-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("client-ca.pem");
        std::fs::write(&path, &root.pem).expect("write");
        let bundle = ClientCa::from_pem_file(&path).expect("load");
        assert!(verify(&bundle, &[leaf(&root)]).is_ok());
        let rotated = ca("client-ca-2");
        std::fs::write(&path, &rotated.pem).expect("write");
        assert!(bundle.refresh_from_file(&path).await.expect("refresh"));
        assert!(verify(&bundle, &[leaf(&rotated)]).is_ok());
        let missing = ClientCa::from_pem_file(&dir.join("absent"));
        assert!(matches!(missing, Err(CaError::Read { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    // --- Auth with a fake apiserver ------------------------------------------

    #[derive(Debug, Default)]
    struct Fake {
        /// Token → identity it stands for; others are rejected.
        tokens: HashMap<String, Identity>,
        /// Subresources allowed for everyone.
        allowed: Vec<&'static str>,
        fail: bool,
        token_calls: Mutex<usize>,
        access_calls: Mutex<Vec<&'static str>>,
    }

    impl Reviewer for Arc<Fake> {
        fn review_token<'a>(
            &'a self,
            token: &'a str,
        ) -> BoxFuture<'a, Result<Option<Identity>, String>> {
            *self.token_calls.lock().expect("lock") += 1;
            let result = if self.fail {
                Err("apiserver down".to_string())
            } else {
                Ok(self.tokens.get(token).cloned())
            };
            Box::pin(async move { result })
        }

        fn review_access<'a>(
            &'a self,
            access: &'a Access,
        ) -> BoxFuture<'a, Result<Decision, String>> {
            self.access_calls
                .lock()
                .expect("lock")
                .push(access.subresource);
            let result = if self.fail {
                Err("apiserver down".to_string())
            } else {
                let allowed = self.allowed.contains(&access.subresource);
                Ok(Decision {
                    allowed,
                    reason: if allowed {
                        String::new()
                    } else {
                        "no RBAC policy matched".to_string()
                    },
                })
            };
            Box::pin(async move { result })
        }
    }

    fn fake_auth(fake: Fake, ca: ClientCa) -> (Auth, Arc<Fake>) {
        let fake = Arc::new(fake);
        (Auth::with_reviewer(Box::new(fake.clone()), ca), fake)
    }

    fn metrics_server() -> Identity {
        Identity {
            user: "system:serviceaccount:kube-system:metrics-server".to_string(),
            groups: vec!["system:serviceaccounts".to_string()],
            uid: "u-1".to_string(),
            extra: BTreeMap::new(),
        }
    }

    fn header(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header")
    }

    #[tokio::test]
    async fn certificate_first_then_token() {
        let root = ca("client-ca");
        let bundle = ClientCa::from_pem(root.pem.as_bytes()).expect("bundle");
        let fake = Fake {
            tokens: HashMap::from([("good".to_string(), metrics_server())]),
            ..Default::default()
        };
        let (auth, fake) = fake_auth(fake, bundle);
        let trusted = [leaf(&root)];
        let foreign = [leaf(&ca("other"))];

        // A trusted certificate wins; the token is not even reviewed.
        let who = auth
            .authenticate(Some(&trusted), Some(&header("good")))
            .await
            .expect("cert");
        assert_eq!(who.user, "system:kube-apiserver");
        assert_eq!(*fake.token_calls.lock().expect("lock"), 0);

        // An untrusted certificate falls through to the token.
        let who = auth
            .authenticate(Some(&foreign), Some(&header("good")))
            .await
            .expect("token");
        assert_eq!(who, metrics_server());

        // Untrusted certificate, no token; nothing at all; a bad token: 401.
        for (certs, token) in [
            (Some(&foreign[..]), None),
            (None, None),
            (Some(&[][..]), None),
            (None, Some(header("bad"))),
        ] {
            let err = auth
                .authenticate(certs, token.as_ref())
                .await
                .expect_err("refused");
            assert_eq!(err, AuthError::Unauthenticated("Unauthorized".to_string()));
        }
    }

    #[tokio::test]
    async fn token_reviews_are_cached() {
        let fake = Fake {
            tokens: HashMap::from([("good".to_string(), metrics_server())]),
            ..Default::default()
        };
        let (auth, fake) = fake_auth(fake, ClientCa::empty());
        let t0 = Instant::now();
        let calls = || *fake.token_calls.lock().expect("lock");
        let at = |token: &str, later: u64| {
            let header = header(token);
            let auth = auth.clone();
            async move {
                auth.authenticate_at(
                    None,
                    Some(&header),
                    UnixTime::now(),
                    t0 + Duration::from_secs(later),
                )
                .await
            }
        };

        assert!(at("good", 0).await.is_ok());
        assert!(at("good", 119).await.is_ok());
        assert_eq!(calls(), 1, "authenticated: cached 2 minutes");
        assert!(at("good", 120).await.is_ok());
        assert_eq!(calls(), 2);

        assert!(at("bad", 0).await.is_err());
        assert!(at("bad", 9).await.is_err());
        assert_eq!(calls(), 3, "rejected: cached 10 seconds");
        assert!(at("bad", 10).await.is_err());
        assert_eq!(calls(), 4);
    }

    #[tokio::test]
    async fn review_failures_are_unavailable_and_not_cached() {
        let (auth, fake) = fake_auth(
            Fake {
                fail: true,
                ..Default::default()
            },
            ClientCa::empty(),
        );
        for _ in 0..2 {
            let err = auth
                .authenticate(None, Some(&header("secret-token")))
                .await
                .expect_err("down");
            assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(!err.to_string().contains("secret-token"));
        }
        assert_eq!(*fake.token_calls.lock().expect("lock"), 2);

        let err = auth
            .authorize(&metrics_server(), "node-a", &Method::GET, "/pods")
            .await
            .expect_err("down");
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(*fake.access_calls.lock().expect("lock"), ["pods"]);
    }

    #[tokio::test]
    async fn fine_grained_then_proxy() {
        let who = metrics_server();
        // Only nodes/proxy granted: /pods passes on the fallback.
        let (auth, fake) = fake_auth(
            Fake {
                allowed: vec!["proxy"],
                ..Default::default()
            },
            ClientCa::empty(),
        );
        auth.authorize(&who, "node-a", &Method::GET, "/pods")
            .await
            .expect("proxy admits");
        assert_eq!(*fake.access_calls.lock().expect("lock"), ["pods", "proxy"]);

        // Only nodes/pods granted: no fallback needed; /exec still refused.
        let (auth, fake) = fake_auth(
            Fake {
                allowed: vec!["pods", "stats"],
                ..Default::default()
            },
            ClientCa::empty(),
        );
        auth.authorize(&who, "node-a", &Method::GET, "/runningpods/")
            .await
            .expect("pods admits");
        auth.authorize(&who, "node-a", &Method::GET, "/stats/summary")
            .await
            .expect("stats admits");
        let err = auth
            .authorize(&who, "node-a", &Method::POST, "/exec/ns/pod/c")
            .await
            .expect_err("forbidden");
        assert_eq!(
            err,
            AuthError::Forbidden(
                "Forbidden (user=system:serviceaccount:kube-system:metrics-server, verb=create, \
                 resource=nodes, subresource=proxy): no RBAC policy matched"
                    .to_string()
            )
        );
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            *fake.access_calls.lock().expect("lock"),
            ["pods", "stats", "proxy"]
        );

        // Nothing granted: both tried, both named.
        let (auth, _) = fake_auth(Fake::default(), ClientCa::empty());
        let err = auth
            .authorize(&who, "node-a", &Method::GET, "/healthz")
            .await
            .expect_err("forbidden");
        let expected = "Forbidden (user=system:serviceaccount:kube-system:metrics-server, \
                        verb=get, resource=nodes, subresource=healthz,proxy)";
        assert!(err.to_string().starts_with(expected), "{err}");
    }

    #[tokio::test]
    async fn decisions_are_cached() {
        let who = metrics_server();
        let (auth, fake) = fake_auth(
            Fake {
                allowed: vec!["stats"],
                ..Default::default()
            },
            ClientCa::empty(),
        );
        let t0 = Instant::now();
        let calls = || fake.access_calls.lock().expect("lock").len();
        let at = |node: &'static str, path: &'static str, later: u64| {
            let auth = auth.clone();
            let who = who.clone();
            async move {
                auth.authorize_at(
                    &who,
                    node,
                    &Method::GET,
                    path,
                    t0 + Duration::from_secs(later),
                )
                .await
            }
        };

        assert!(at("node-a", "/stats/summary", 0).await.is_ok());
        assert!(at("node-a", "/stats/summary", 299).await.is_ok());
        assert_eq!(calls(), 1, "allowed: cached 5 minutes");
        assert!(at("node-a", "/stats/summary", 300).await.is_ok());
        assert_eq!(calls(), 2);
        // Another node is another question.
        assert!(at("node-b", "/stats/summary", 0).await.is_ok());
        assert_eq!(calls(), 3);

        assert!(at("node-a", "/metrics", 0).await.is_err());
        assert!(at("node-a", "/metrics", 29).await.is_err());
        assert_eq!(calls(), 4, "denied: cached 30 seconds");
        assert!(at("node-a", "/metrics", 30).await.is_err());
        assert_eq!(calls(), 5);

        // Another identity is another question.
        let other = Identity {
            groups: vec![],
            ..who.clone()
        };
        auth.authorize_at(&other, "node-a", &Method::GET, "/stats", t0)
            .await
            .expect("allowed");
        assert_eq!(calls(), 6);
    }

    #[tokio::test]
    async fn check_combines_both() {
        let root = ca("client-ca");
        let bundle = ClientCa::from_pem(root.pem.as_bytes()).expect("bundle");
        let (auth, _) = fake_auth(
            Fake {
                allowed: vec!["proxy"],
                ..Default::default()
            },
            bundle,
        );
        let request = http::Request::get("/containerLogs/ns/pod/c?follow=true")
            .body(())
            .expect("request");
        let who = auth
            .check("node-a", Some(&[leaf(&root)]), &request)
            .await
            .expect("admitted");
        assert_eq!(who.user, "system:kube-apiserver");
        let err = auth
            .check("node-a", None, &request)
            .await
            .expect_err("no credentials");
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    }

    // --- TLS -----------------------------------------------------------------

    /// A real handshake: the client presents a certificate from a CA the
    /// server does not trust; TLS succeeds, the server sees the certificate,
    /// and authentication (not TLS) refuses it.
    async fn handshake(version: &'static rustls::SupportedProtocolVersion) {
        use rustls::{ClientConfig, RootCertStore, ServerConfig, pki_types::PrivateKeyDer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_key = KeyPair::generate().expect("key");
        let server_cert = CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&server_key)
            .expect("cert");
        let auth = Auth::with_reviewer(
            Box::new(Arc::new(Fake::default())),
            ClientCa::from_pem(ca("client-ca").pem.as_bytes()).expect("bundle"),
        );
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_client_cert_verifier(auth.client_cert_verifier())
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            )
            .expect("server config");

        let mut roots = RootCertStore::empty();
        roots.add(server_cert.der().clone()).expect("root");
        let foreign_ca = ca("foreign");
        let (client_cert, client_key) = leaf_with(&foreign_ca, |_| {});
        let with_cert = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(
                vec![client_cert.clone()],
                PrivateKeyDer::Pkcs8(client_key.serialize_der().into()),
            )
            .expect("client config");
        let without_cert = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();

        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        for (client, expect_cert) in [(with_cert, true), (without_cert, false)] {
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let client_side = async move {
                let mut tls = connector
                    .connect(name, client_io)
                    .await
                    .expect("client handshake");
                tls.write_all(b"ping").await.expect("write");
                tls.flush().await.expect("flush");
                tls
            };
            let server_side = async {
                let mut tls = acceptor.accept(server_io).await.expect("server handshake");
                let mut buf = [0; 4];
                tls.read_exact(&mut buf).await.expect("read");
                assert_eq!(&buf, b"ping");
                tls.get_ref().1.peer_certificates().map(|chain| {
                    chain
                        .iter()
                        .map(|c| c.clone().into_owned())
                        .collect::<Vec<_>>()
                })
            };
            let (_client, peer) = tokio::join!(client_side, server_side);
            if expect_cert {
                let peer = peer.expect("the client's certificate");
                assert_eq!(peer, vec![client_cert.clone()]);
                let err = auth
                    .authenticate(Some(&peer), None)
                    .await
                    .expect_err("untrusted");
                assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
            } else {
                assert!(peer.is_none_or(|chain| chain.is_empty()));
            }
        }
    }

    #[tokio::test]
    async fn tls13_accepts_an_untrusted_client_certificate() {
        handshake(&rustls::version::TLS13).await;
    }

    #[tokio::test]
    async fn tls12_accepts_an_untrusted_client_certificate() {
        handshake(&rustls::version::TLS12).await;
    }

    #[test]
    fn verifier_offers_but_does_not_require() {
        let verifier = client_cert_verifier();
        assert!(verifier.offer_client_auth());
        assert!(!verifier.client_auth_mandatory());
        assert!(verifier.root_hint_subjects().is_empty());
        assert!(!verifier.supported_verify_schemes().is_empty());
    }
}
