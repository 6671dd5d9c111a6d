//! `kubectl logs` on the device: aranya sends one [`LogsRequest`]; the answer
//! is one [`StreamReply`] and, when it is OK, the log as raw bytes to the end.
//!
//! The log is pulled from its source only as fast as the stream takes it
//! (each send waits for the peer's credit), in batches so that short lines
//! do not each cost a send. When the client goes away the source is dropped
//! at once, which ends the runtime's log request or the file polling.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use connectivity::{Stream, StreamError};
use futures::{FutureExt, StreamExt, stream::BoxStream};
use jiff::{SignedDuration, Timestamp};
use proto::{
    api::{LogsRequest, StreamReply, stream_reply::Code},
    session::ResetCode,
};
use tracing::{debug, warn};

use super::{
    PodManager,
    reply::{Refusal, refuse},
};
use crate::{
    config::HostConfig,
    runtime::{LogEntry, LogOptions, RuntimeError},
};

/// Largest send: big enough that a log of short lines moves quickly, small
/// enough to stay a few frames.
const BATCH: usize = 32 * 1024;
/// How long the first piece of the log may take to decide the reply: a source
/// that fails at once (a log driver Docker cannot read back) gets a proper
/// error instead of an empty log cut short.
const FIRST_WAIT: Duration = Duration::from_millis(200);
/// While the source is quiet, how often to check the client is still there.
const PROBE: Duration = Duration::from_secs(1);

/// The request's options, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    follow: bool,
    previous: bool,
    timestamps: bool,
    tail_lines: Option<u64>,
    since: Option<Timestamp>,
    limit_bytes: Option<u64>,
}

fn options(r: &LogsRequest, now: Timestamp) -> Result<Options, Refusal> {
    let bad = |m: String| Refusal::new(Code::BadRequest, m);
    let tail_lines = r
        .tail_lines
        .map(|n| u64::try_from(n).map_err(|_| bad(format!("tailLines {n}: must be 0 or more"))))
        .transpose()?;
    let limit_bytes = r
        .limit_bytes
        .map(|n| {
            u64::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(format!("limitBytes {n}: must be 1 or more")))
        })
        .transpose()?;
    let since = match (r.since_seconds, r.since_unix_nanos) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "at most one of sinceSeconds or sinceTime may be specified".into(),
            ));
        }
        (Some(s), None) if s < 1 => {
            return Err(bad(format!("sinceSeconds {s}: must be 1 or more")));
        }
        // Relative to this device's clock, which stamped the lines.
        (Some(s), None) => Some(
            now.checked_sub(SignedDuration::from_secs(s))
                .unwrap_or(Timestamp::MIN),
        ),
        (None, Some(ns)) => Some(
            Timestamp::from_nanosecond(i128::from(ns))
                .map_err(|e| bad(format!("sinceTime: {e}")))?,
        ),
        (None, None) => None,
    };
    Ok(Options {
        follow: r.follow,
        previous: r.previous,
        timestamps: r.timestamps,
        tail_lines,
        since,
        limit_bytes,
    })
}

/// Serves one ContainerLogs stream.
pub async fn serve(
    stream: &mut Stream,
    pods: Option<&Arc<PodManager>>,
    host: &HostConfig,
) -> Result<(), StreamError> {
    let Some(request) = stream.recv_message::<LogsRequest>().await? else {
        return stream.expect_end().await;
    };
    stream.expect_end().await?;
    debug!(
        pod = %request.pod_uid,
        container = %request.container,
        host = request.host,
        follow = request.follow,
        "logs requested"
    );
    let options = match options(&request, Timestamp::now()) {
        Ok(o) => o,
        Err(r) => return refuse(stream, r).await,
    };
    let limit = options.limit_bytes;
    if request.host {
        match host_source(&options, host).await {
            Ok(source) => {
                pump(
                    stream,
                    source,
                    |c: Bytes, out| out.extend_from_slice(&c),
                    limit,
                )
                .await
            }
            Err(r) => refuse(stream, r).await,
        }
    } else {
        match container_source(&request, &options, pods).await {
            Ok(source) => {
                let mut lines = Lines::new(options.since, options.timestamps);
                pump(stream, source, move |e, out| lines.append(e, out), limit).await
            }
            Err(r) => refuse(stream, r).await,
        }
    }
}

async fn container_source(
    request: &LogsRequest,
    options: &Options,
    pods: Option<&Arc<PodManager>>,
) -> Result<BoxStream<'static, Result<LogEntry, RuntimeError>>, Refusal> {
    let Some(pods) = pods else {
        return Err(Refusal::new(
            Code::Unavailable,
            "this device runs no container runtime (arhat config runtime.kind)",
        ));
    };
    let id = pods.container_instance(&request.pod_uid, &request.container, options.previous)?;
    let wanted = LogOptions {
        follow: options.follow,
        tail_lines: options.tail_lines,
        since: options.since,
    };
    pods.container_logs(&request.pod_uid, &id, &wanted)
        .await
        .map_err(|e| match e {
            // Removed between the lookup and now (the pod is being deleted).
            RuntimeError::NotFound(_) => Refusal::new(
                Code::NotFound,
                format!(
                    "container \"{}\" ({id}) is no longer on this device",
                    request.container
                ),
            ),
            e => e.into(),
        })
}

async fn host_source(
    options: &Options,
    host: &HostConfig,
) -> Result<BoxStream<'static, std::io::Result<Bytes>>, Refusal> {
    if host.log_files.is_empty() {
        return Err(Refusal::new(
            Code::Forbidden,
            "host logs are disabled on this device: list files under `host.logFiles` in arhat's config",
        ));
    }
    let plain_files = "the host's log files are plain files, with no time per line";
    if options.timestamps {
        return Err(Refusal::new(
            Code::BadRequest,
            format!("timestamps are not available: {plain_files}"),
        ));
    }
    if options.since.is_some() {
        return Err(Refusal::new(
            Code::BadRequest,
            format!("sinceSeconds and sinceTime are not available: {plain_files}"),
        ));
    }
    if options.previous {
        return Err(Refusal::new(
            Code::BadRequest,
            "the host's log files have no previous instance",
        ));
    }
    Ok(crate::host::logs::open(host.log_files.clone(), options.follow, options.tail_lines).await?)
}

/// Container log entries as a kubelet prints them: only those at or after
/// `since`, each prefixed with its time when asked.
struct Lines {
    since: Option<Timestamp>,
    timestamps: bool,
    /// Whether the entry being continued was kept.
    keep: bool,
}

impl Lines {
    fn new(since: Option<Timestamp>, timestamps: bool) -> Self {
        Self {
            since,
            timestamps,
            keep: true,
        }
    }

    fn append(&mut self, entry: LogEntry, out: &mut BytesMut) {
        if let Some(time) = entry.time {
            self.keep = self.since.is_none_or(|since| time >= since);
        }
        if !self.keep {
            return;
        }
        if self.timestamps
            && let Some(time) = entry.time
        {
            // RFC 3339 in UTC with all nine fractional digits, so the prefix
            // has one width, as a kubelet writes it.
            let _ = write!(out, "{time:.9} ");
        }
        out.extend_from_slice(&entry.text);
    }
}

/// The first look at the source.
enum First<T> {
    Item(T),
    End,
    Nothing,
}

/// Replies OK and streams the source, appended into sends by `append`, until
/// it ends, `limit` bytes were sent, or the client goes away.
async fn pump<T, E, S>(
    stream: &mut Stream,
    mut source: S,
    mut append: impl FnMut(T, &mut BytesMut),
    limit: Option<u64>,
) -> Result<(), StreamError>
where
    S: futures::Stream<Item = Result<T, E>> + Unpin,
    E: Into<Refusal>,
{
    let first = match tokio::time::timeout(FIRST_WAIT, source.next()).await {
        Ok(Some(Err(e))) => return refuse(stream, e.into()).await,
        Ok(Some(Ok(item))) => First::Item(item),
        Ok(None) => First::End,
        Err(_) => First::Nothing,
    };
    stream
        .send_message(&StreamReply {
            code: Code::Ok.into(),
            message: String::new(),
        })
        .await?;
    let mut buf = BytesMut::with_capacity(BATCH);
    let mut ended = false;
    let mut failure: Option<Refusal> = None;
    match first {
        First::Item(item) => append(item, &mut buf),
        First::End => ended = true,
        First::Nothing => {}
    }
    let mut remaining = limit;
    let mut sent: u64 = 0;
    let mut probe = tokio::time::interval_at(tokio::time::Instant::now() + PROBE, PROBE);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Whatever is ready already joins this send.
        while !ended && buf.len() < BATCH {
            match source.next().now_or_never() {
                Some(Some(Ok(item))) => append(item, &mut buf),
                Some(Some(Err(e))) => {
                    failure = Some(e.into());
                    ended = true;
                }
                Some(None) => ended = true,
                None => break,
            }
        }
        let mut at_limit = false;
        if let Some(left) = remaining.as_mut() {
            if buf.len() as u64 >= *left {
                buf.truncate(usize::try_from(*left).unwrap_or(usize::MAX));
                at_limit = true;
            }
            *left -= buf.len() as u64;
        }
        if !buf.is_empty() {
            let chunk = std::mem::replace(&mut buf, BytesMut::with_capacity(BATCH)).freeze();
            sent += chunk.len() as u64;
            if let Err(e) = stream.send(chunk).await {
                debug!(sent, error = %e, "log client went away");
                return Ok(());
            }
        }
        if at_limit || ended {
            match failure {
                Some(f) => {
                    warn!(sent, error = %f, "log source failed; ending the log early");
                    stream.reset(ResetCode::Internal, &f.message);
                }
                None => {
                    debug!(sent, "log sent");
                    stream.finish();
                }
            }
            return Ok(());
        }
        tokio::select! {
            biased;
            item = source.next() => match item {
                Some(Ok(item)) => append(item, &mut buf),
                Some(Err(e)) => {
                    failure = Some(e.into());
                    ended = true;
                }
                None => ended = true,
            },
            _ = probe.tick() => {
                // An empty send carries nothing but fails once the stream was
                // reset or the session closed: a quiet follow must not outlive
                // its client.
                if let Err(e) = stream.send(Bytes::new()).await {
                    debug!(sent, error = %e, "log client went away");
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
