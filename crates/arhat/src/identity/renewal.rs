//! Renewal at two thirds of the certificate's life, over the session the
//! certificate authenticated: a new key, a request for it, the new
//! certificate stored. The session and its streams carry on untouched; the
//! next link presents the new certificate.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use connectivity::{SessionHandle, StreamError};
use identity::{DeviceCert, DeviceKey, KeyError};
use proto::api::{Open, RenewCertificate, RenewReply, RenewRequest, open::Kind};
use tracing::{info, warn};

use super::{Credentials, IdentityError};

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("renewal stream: {0}")]
    Stream(#[from] StreamError),
    #[error("aranya refused the renewal: {0}")]
    Refused(String),
    #[error("aranya did not answer the renewal")]
    NoReply,
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Renews whenever the certificate is due, until the session ends.
pub async fn run(creds: Arc<Credentials>, session: SessionHandle) {
    loop {
        let Some(at) = creds.renew_at() else {
            return;
        };
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = crate::agent::closed(&session) => return,
        }
        let delay = match renew(&creds, &session).await {
            Ok(cert) => {
                info!(serial = %cert.serial, not_after = %cert.not_after_rfc3339(), "device certificate renewed");
                continue;
            }
            Err(e) => {
                let delay = retry_delay(creds.session().map(|h| h.cert.not_after));
                warn!(error = %e, retry_in = ?delay, "renewing the device certificate");
                delay
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = crate::agent::closed(&session) => return,
        }
    }
}

/// A tenth of what is left, within 5 s and 10 min.
fn retry_delay(not_after: Option<SystemTime>) -> Duration {
    let left = not_after
        .and_then(|t| t.duration_since(SystemTime::now()).ok())
        .unwrap_or_default();
    (left / 10).clamp(Duration::from_secs(5), Duration::from_secs(600))
}

async fn renew(creds: &Credentials, session: &SessionHandle) -> Result<DeviceCert, RenewError> {
    let key = DeviceKey::generate()?;
    let request = RenewRequest {
        csr: key.csr_der(creds.device())?.into(),
    };
    let header = Open {
        kind: Some(Kind::RenewCertificate(RenewCertificate {})),
    };
    let mut stream = session.open(&header).await?;
    stream.send_message(&request).await?;
    stream.finish();
    let reply: RenewReply = stream.recv_message().await?.ok_or(RenewError::NoReply)?;
    if reply.certificate.is_empty() {
        return Err(RenewError::Refused(reply.error));
    }
    Ok(creds.store(&reply.certificate, key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_tenth_of_what_is_left_within_bounds() {
        let now = SystemTime::now();
        assert_eq!(retry_delay(None), Duration::from_secs(5));
        assert_eq!(
            retry_delay(Some(now + Duration::from_secs(24 * 3600))),
            Duration::from_secs(600)
        );
        let d = retry_delay(Some(now + Duration::from_secs(1000)));
        assert!(
            d <= Duration::from_secs(100) && d >= Duration::from_secs(99),
            "{d:?}"
        );
    }
}
