//! The apiserver's TokenReviews and SubjectAccessReviews.

use std::{fmt, time::Duration};

use futures::future::BoxFuture;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};
use tracing::debug;

use super::Identity;

/// One review call may take this long, and is tried this often when the
/// apiserver is briefly unavailable (5xx, 429, connection errors).
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
const REVIEW_ATTEMPTS: u32 = 3;
const REVIEW_BACKOFF: Duration = Duration::from_millis(250);

/// A SubjectAccessReview's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Decision {
    pub(super) allowed: bool,
    pub(super) reason: String,
}

/// What one authorization check asks about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Access {
    pub(super) who: Identity,
    pub(super) verb: &'static str,
    pub(super) subresource: &'static str,
    pub(super) node: String,
}

/// The apiserver's reviews, behind a trait so the caching and decision logic
/// is tested without a cluster. Errors are messages for logs and 503 bodies;
/// they never contain the token.
pub(super) trait Reviewer: fmt::Debug + Send + Sync {
    /// `Ok(None)`: the token is not valid.
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<Identity>, String>>;
    fn review_access<'a>(&'a self, access: &'a Access) -> BoxFuture<'a, Result<Decision, String>>;
}

pub(super) struct KubeReviewer {
    pub(super) client: Client,
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
