//! Authentication and authorization against a fake apiserver.

use std::collections::HashMap;

use super::test_support::*;
use super::*;

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
