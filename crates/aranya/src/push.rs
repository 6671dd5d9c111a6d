//! Settings aranya hands a device (its pod network, its service catalogue):
//! a stream each, one message, answered by the device's StreamReply.

use std::time::Duration;

use connectivity::{SessionHandle, StreamError};
use proto::api::{Open, StreamReply, open::Kind, stream_reply::Code};

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("the device refused it: {0}")]
    Refused(String),
    #[error("the device answered nothing")]
    NoAnswer,
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the device did not answer within {0:?}")]
    Timeout(Duration),
}

/// Sends `message` on a new stream opened with `kind`; Ok once the device
/// took it.
pub async fn push<M: prost::Message>(
    session: &SessionHandle,
    kind: Kind,
    message: &M,
    timeout: Duration,
) -> Result<(), PushError> {
    let header = Open { kind: Some(kind) };
    let answer = tokio::time::timeout(timeout, session.request::<_, StreamReply>(&header, message))
        .await
        .map_err(|_| PushError::Timeout(timeout))??;
    match answer {
        Some(reply) if reply.code == Code::Ok as i32 => Ok(()),
        Some(reply) => Err(PushError::Refused(reply.message)),
        None => Err(PushError::NoAnswer),
    }
}
