//! `GET /containerLogs/{namespace}/{pod}/{container}`: a container's log (or
//! the host's log files, for the host pod) streamed from the device. The body
//! is pulled from the session stream only as the client reads it, so a slow
//! `kubectl logs -f` holds the device back instead of filling memory.

use http::Response;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use proto::api::{ContainerLogs, LogsRequest, Open, open::Kind};

use super::{Body, Problem, server::NodeEndpoint};

/// The kubelet's log options, from the query string.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<i64>,
    pub since_seconds: Option<i64>,
    pub since_unix_nanos: Option<i64>,
    pub limit_bytes: Option<i64>,
}

impl Options {
    pub fn parse(query: Option<&str>) -> Result<Self, Problem> {
        let mut o = Self::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let int = |min: i64| {
                value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= min)
                    .ok_or_else(|| {
                        Problem::bad_request(format!(
                            "{key}={value:?}: expected an integer >= {min}"
                        ))
                    })
            };
            match &*key {
                "follow" => o.follow = flag(&key, &value)?,
                "previous" => o.previous = flag(&key, &value)?,
                "timestamps" => o.timestamps = flag(&key, &value)?,
                "tailLines" => o.tail_lines = Some(int(0)?),
                "sinceSeconds" => o.since_seconds = Some(int(1)?),
                "limitBytes" => o.limit_bytes = Some(int(1)?),
                "sinceTime" => {
                    let at: jiff::Timestamp = value.parse().map_err(|e| {
                        Problem::bad_request(format!(
                            "sinceTime={value:?}: not an RFC 3339 time: {e}"
                        ))
                    })?;
                    o.since_unix_nanos = Some(i64::try_from(at.as_nanosecond()).map_err(|_| {
                        Problem::bad_request(format!("sinceTime={value:?}: out of range"))
                    })?);
                }
                // Parameters kubelets ignore here (insecureSkipTLSVerifyBackend, stream).
                _ => {}
            }
        }
        if o.since_seconds.is_some() && o.since_unix_nanos.is_some() {
            return Err(Problem::bad_request(
                "at most one of sinceSeconds or sinceTime may be specified",
            ));
        }
        Ok(o)
    }
}

fn flag(key: &str, value: &str) -> Result<bool, Problem> {
    match value {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(Problem::bad_request(format!(
            "{key}={value:?}: expected true or false"
        ))),
    }
}

pub async fn serve(
    endpoint: &NodeEndpoint,
    namespace: &str,
    pod_name: &str,
    container: &str,
    query: Option<&str>,
) -> Result<Response<Body>, Problem> {
    let options = Options::parse(query)?;
    let pod = endpoint.pod(namespace, pod_name).await?;
    let host = endpoint.is_host_pod(&pod);
    endpoint.container(&pod, container)?;
    let request = LogsRequest {
        pod_uid: endpoint.device_uid(&pod),
        container: container.to_string(),
        host,
        follow: options.follow,
        previous: options.previous,
        timestamps: options.timestamps,
        tail_lines: options.tail_lines,
        since_seconds: options.since_seconds,
        since_unix_nanos: options.since_unix_nanos,
        limit_bytes: options.limit_bytes,
    };
    let header = Open {
        kind: Some(Kind::ContainerLogs(ContainerLogs {})),
    };
    let stream = super::upgrade::ask_device(endpoint, &header, &request, true).await?;
    let chunks = futures::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        match stream.recv_bytes().await {
            Ok(Some(data)) => Some((Ok(Frame::data(data)), Some(stream))),
            Ok(None) => None,
            // Ends the body mid-way: the client sees a truncated log, as when
            // a kubelet's runtime fails while streaming.
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
        }
    });
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(chunks)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::Options;

    #[test]
    fn parses_every_option() {
        let o = Options::parse(Some(
            "follow=true&previous=true&timestamps=true&tailLines=3&limitBytes=10&sinceTime=2026-11-25T05%3A00%3A00Z",
        ))
        .unwrap_or_default();
        assert_eq!(
            o,
            Options {
                follow: true,
                previous: true,
                timestamps: true,
                tail_lines: Some(3),
                since_seconds: None,
                since_unix_nanos: Some(1_795_582_800_000_000_000),
                limit_bytes: Some(10),
            }
        );
        assert_eq!(
            Options::parse(Some("sinceSeconds=5")).map(|o| o.since_seconds),
            Ok(Some(5))
        );
    }

    #[test]
    fn refuses_bad_options_naming_them() {
        for (query, names) in [
            ("tailLines=-1", "tailLines"),
            ("limitBytes=0", "limitBytes"),
            ("sinceSeconds=x", "sinceSeconds"),
            ("sinceTime=yesterday", "sinceTime"),
            ("follow=maybe", "follow"),
            (
                "sinceSeconds=5&sinceTime=2026-11-25T05:00:00Z",
                "sinceSeconds",
            ),
        ] {
            let problem = Options::parse(Some(query)).err();
            assert!(
                problem.as_ref().is_some_and(|p| p.message.contains(names)),
                "{query}: {problem:?}"
            );
        }
    }
}
