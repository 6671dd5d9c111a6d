//! The first answer of a stream that carries data after it (logs, exec,
//! port-forward): OK, or why not, as a [`StreamReply`].

use connectivity::{Stream, StreamError};
use proto::api::{StreamReply, stream_reply::Code};
use tracing::debug;

use super::LookupError;
use crate::{host::logs::HostLogsError, runtime::RuntimeError};

/// A request answered with no data: the reply's code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub code: Code,
    pub message: String,
}

impl Refusal {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<LookupError> for Refusal {
    fn from(e: LookupError) -> Self {
        let code = if e.is_not_found() {
            Code::NotFound
        } else {
            Code::BadRequest
        };
        Self::new(code, e.to_string())
    }
}

impl From<RuntimeError> for Refusal {
    fn from(e: RuntimeError) -> Self {
        let code = match e {
            RuntimeError::NotFound(_) => Code::NotFound,
            _ => Code::Unavailable,
        };
        Self::new(code, e.to_string())
    }
}

impl From<HostLogsError> for Refusal {
    fn from(e: HostLogsError) -> Self {
        let code = match e {
            HostLogsError::NoneReadable(_) => Code::NotFound,
            HostLogsError::Io(_) => Code::Unavailable,
        };
        Self::new(code, e.to_string())
    }
}

impl From<std::io::Error> for Refusal {
    fn from(e: std::io::Error) -> Self {
        HostLogsError::Io(e).into()
    }
}

pub async fn refuse(stream: &mut Stream, refusal: Refusal) -> Result<(), StreamError> {
    debug!(code = ?refusal.code, message = %refusal.message, "request refused");
    let reply = StreamReply {
        code: refusal.code.into(),
        message: refusal.message,
    };
    stream.send_message(&reply).await?;
    stream.finish();
    Ok(())
}

/// Tells aranya the request is accepted; data follows.
pub async fn accept(stream: &mut Stream) -> Result<(), StreamError> {
    stream
        .send_message(&StreamReply {
            code: Code::Ok.into(),
            message: String::new(),
        })
        .await
}
