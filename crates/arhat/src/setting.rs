//! Settings aranya hands the device (the pod network, the service
//! catalogue): one message on a stream, answered with a StreamReply, OK or
//! Unavailable with the reason.

use connectivity::{Stream, StreamError};
use proto::api::{StreamReply, stream_reply::Code};
use tracing::warn;

/// Reads the stream's one `M`, applies it, answers.
pub async fn take<M, E>(
    stream: &mut Stream,
    what: &str,
    apply: impl AsyncFnOnce(M) -> Result<(), E>,
) -> Result<(), StreamError>
where
    M: prost::Message + Default,
    E: std::fmt::Display,
{
    let Some(setting) = stream.recv_message::<M>().await? else {
        return stream.expect_end().await;
    };
    stream.expect_end().await?;
    let reply = match apply(setting).await {
        Ok(()) => StreamReply::default(),
        Err(e) => {
            warn!(error = %e, "taking {what}");
            StreamReply {
                code: Code::Unavailable as i32,
                message: e.to_string(),
            }
        }
    };
    stream.send_message(&reply).await?;
    stream.finish();
    Ok(())
}
