//! The router in memory against a real gateway state (software key store, audit and approvals
//! stores in a temp dir, the development issuer): requests go through `tower::ServiceExt::oneshot`,
//! no sockets. The end-to-end tests (tests/e2e/test_approvals_api.py) cover TLS, PostgreSQL
//! and the OpenID provider.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use gatehouse_approvals::{NewRequest, RequestMode};
use serde_json::{json, Value};
use tower::ServiceExt as _;

use crate::config::LoadedConfig;
use crate::state::Gateway;

struct Fixture {
    _dir: tempfile::TempDir,
    gw: Arc<Gateway>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
[gateway]
data_dir = "{}"
[[listeners]]
name = "api"
protocol = "api"
bind = "127.0.0.1:0"
[identity.dev_issuer]
enabled = true
[approvals]
grant_issuers = ["dba"]
[[connections]]
name = "app"
kind = "postgres"
host = "127.0.0.1"
database = "app"
"#,
            dir.path().join("data").display()
        );
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, &text).unwrap();
        let loaded = LoadedConfig::load(&path).unwrap();
        let gw = Arc::new(Gateway::open(loaded).unwrap());
        Fixture { _dir: dir, gw }
    }

    fn token(&self, user: &str, groups: &[&str]) -> String {
        let cfg = self.gw.config.load();
        let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        crate::state::dev_issuer(&cfg.config)
            .unwrap()
            .mint(user, &groups, Duration::from_secs(600), SystemTime::now())
            .unwrap()
    }

    fn pending(&self, requester: &str, min_approvals: u32) -> String {
        let now = SystemTime::now();
        self.gw
            .approvals
            .create_request(NewRequest {
                requester: dev_user(requester),
                requester_groups: vec![gatehouse_approvals::Group::new(
                    gatehouse_approvals::IssuerId::new(gatehouse_identity::DEV_ISSUER),
                    "dba",
                )],
                connection: "app".into(),
                statement: "INSERT INTO t VALUES (1)".into(),
                rule: "rule:w".into(),
                reason: "writes need a dba".into(),
                approvers: vec!["dba".into()],
                min_approvals,
                mode: RequestMode::Ticket,
                expires_at: now + Duration::from_secs(600),
                now,
            })
            .unwrap()
            .id
            .to_string()
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value, axum::http::HeaderMap) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = super::router(self.gw.clone()).oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.status, v, parts.headers)
    }
}

#[tokio::test]
async fn decisions_follow_the_store_rules() {
    let f = Fixture::new();
    let alice = f.token("alice", &["dba"]);
    let bob = f.token("bob", &["dba"]);
    let carol = f.token("carol", &["analysts"]);
    let id = f.pending("alice", 1);
    let approve = format!("/v1/approvals/{id}/approve");

    let (s, v, h) = f.call(Method::POST, &approve, None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "unauthorized");
    assert!(h[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    assert_eq!(h[header::CACHE_CONTROL], "no-store");

    let (s, v, _) = f.call(Method::POST, &approve, Some(&alice), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("self_approval"))
    );
    let (s, v, _) = f.call(Method::POST, &approve, Some(&carol), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_an_approver"))
    );
    let (s, _, _) = f
        .call(
            Method::GET,
            &format!("/v1/approvals/{id}"),
            Some(&carol),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v, _) = f
        .call(Method::GET, "/v1/approvals", Some(&carol), None)
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"approvals": []})));

    let body = json!({"comment": "fine", "minutes": 5});
    let (s, v, _) = f.call(Method::POST, &approve, Some(&bob), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "approved");
    assert_eq!(v["votes"][0]["approver"], "bob");
    assert_eq!(v["votes"][0]["comment"], "fine");
    let (s, v, _) = f
        .call(
            Method::POST,
            &format!("/v1/approvals/{id}/deny"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_pending"))
    );

    // The store holds exactly the API's decision.
    let stored = f.gw.approvals.get(&id.parse().unwrap()).unwrap().unwrap();
    assert_eq!(stored.votes.len(), 1);
    assert_eq!(stored.votes[0].approver, dev_user("bob"));
}

#[tokio::test]
async fn a_quorum_needs_distinct_approvers() {
    let f = Fixture::new();
    let bob = f.token("bob", &["dba"]);
    let dan = f.token("dan", &["dba"]);
    let id = f.pending("alice", 2);
    let approve = format!("/v1/approvals/{id}/approve");
    let (_, v, _) = f.call(Method::POST, &approve, Some(&bob), None).await;
    assert_eq!(
        (v["status"].as_str(), v["approvals"].as_u64()),
        (Some("pending"), Some(1))
    );
    let (s, v, _) = f.call(Method::POST, &approve, Some(&bob), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_decided"))
    );
    let (_, v, _) = f.call(Method::POST, &approve, Some(&dan), None).await;
    assert_eq!(v["status"], "approved");
}

#[tokio::test]
async fn grants_are_issued_listed_and_revoked_by_issuers_only() {
    let f = Fixture::new();
    let bob = f.token("bob", &["dba"]);
    let alice = f.token("alice", &["analysts"]);
    let carol = f.token("carol", &[]);
    let order = json!({"user": "alice", "connection": "app", "minutes": 30});
    let (s, v, _) = f
        .call(
            Method::POST,
            "/v1/grants",
            Some(&carol),
            Some(order.clone()),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_an_approver"))
    );
    let mut to_self = order.clone();
    to_self["user"] = json!("bob");
    let (s, _, _) = f
        .call(Method::POST, "/v1/grants", Some(&bob), Some(to_self))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let mut unknown = order.clone();
    unknown["connection"] = json!("nope");
    let (s, _, _) = f
        .call(Method::POST, "/v1/grants", Some(&bob), Some(unknown))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    let (s, g, h) = f
        .call(Method::POST, "/v1/grants", Some(&bob), Some(order))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    let gid = g["id"].as_str().unwrap().to_owned();
    assert_eq!(h[header::LOCATION], format!("/v1/grants/{gid}").as_str());
    let (_, v, _) = f.call(Method::GET, "/v1/grants", Some(&alice), None).await;
    assert_eq!(v["grants"][0]["id"], gid.as_str());
    let (_, v, _) = f.call(Method::GET, "/v1/grants", Some(&carol), None).await;
    assert_eq!(v, json!({"grants": []}));

    let uri = format!("/v1/grants/{gid}");
    let (s, _, _) = f.call(Method::DELETE, &uri, Some(&alice), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v, _) = f.call(Method::DELETE, &uri, Some(&bob), None).await;
    assert_eq!((s, v["revoked_by"].as_str()), (StatusCode::OK, Some("bob")));
    let (s, _, _) = f.call(Method::DELETE, &uri, Some(&bob), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
}

#[tokio::test]
async fn framework_rejections_use_the_error_shape() {
    let f = Fixture::new();
    let bob = f.token("bob", &["dba"]);
    let (s, v, _) = f.call(Method::GET, "/v1/healthz", None, None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"status": "ok"})));
    let (s, v, _) = f.call(Method::GET, "/nope", Some(&bob), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (s, v, _) = f.call(Method::PATCH, "/v1/grants", Some(&bob), None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(v["error"]["code"], "method_not_allowed");
    let id = f.pending("alice", 1);
    let big = json!({"comment": "x".repeat(super::MAX_BODY_BYTES)});
    let (s, v, _) = f
        .call(
            Method::POST,
            &format!("/v1/approvals/{id}/approve"),
            Some(&bob),
            Some(big),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
    let (s, _, _) = f
        .call(
            Method::GET,
            "/v1/approvals?state=pending&bogus=1",
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// A user of the development issuer (the only issuer of these tests).
fn dev_user(name: &str) -> gatehouse_approvals::Principal {
    gatehouse_approvals::Principal::new(
        gatehouse_approvals::IssuerId::new(gatehouse_identity::DEV_ISSUER),
        name,
    )
}
