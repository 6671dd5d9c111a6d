//! The kubelet's request attributes: the verb and the `nodes` subresources a
//! request is authorized for, and the bearer token it carries.

use std::borrow::Cow;

use http::{HeaderValue, Method};

use super::AuthError;

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
pub(super) fn bearer(header: Option<&HeaderValue>) -> Option<&str> {
    let value = header?.to_str().ok()?.trim();
    let mut parts = value.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

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
}
