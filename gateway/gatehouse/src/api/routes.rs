//! The `/v1` routes: authentication, request bodies and the handlers. Every decision goes
//! through `crate::decisions` (the same functions as the CLI), which calls the approvals store;
//! the gateway's watcher then audits it exactly as a CLI decision.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use gatehouse_approvals::{GrantFilter, GrantId, RequestFilter, RequestId, RequestStatus, Verdict};
use gatehouse_identity::Identity;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::ConnInfo;
use crate::decisions;
use crate::state::Gateway;

/// Most objects one list returns.
pub const MAX_LIST: u32 = 1000;
const DEFAULT_LIST: u32 = 100;

/// The caller, from a verified `Authorization: Bearer <token>`.
#[derive(Debug)]
pub struct Caller(pub Identity);

impl FromRequestParts<Arc<Gateway>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        gw: &Arc<Gateway>,
    ) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::MissingToken)?;
        let value = value
            .to_str()
            .map_err(|_| ApiError::MalformedAuthorization)?;
        let (scheme, token) = value
            .split_once(' ')
            .ok_or(ApiError::MalformedAuthorization)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(ApiError::MalformedAuthorization);
        }
        let verifier = gw.verifier.load_full();
        match verifier.verify(token, SystemTime::now()).await {
            Ok(id) => Ok(Caller(id)),
            Err(e) => {
                tracing::info!(reason = %e.reason(), "api: token refused");
                audit_refused_token(gw, parts.extensions.get::<ConnInfo>(), &e).await;
                Err(ApiError::BadToken(e))
            }
        }
    }
}

/// A refused bearer token is an unsuccessful logon attempt (AC-7), recorded like a refused
/// PostgreSQL login: `login.failure` with the listener, source and reason (never the token).
async fn audit_refused_token(
    gw: &Gateway,
    conn: Option<&ConnInfo>,
    e: &gatehouse_identity::AuthError,
) {
    let mut rec = gw.record(gatehouse_audit::EventKind::LoginFailure);
    if let Some(c) = conn {
        rec.listener = Some(c.listener.clone());
        rec.source = Some(c.peer.to_string());
        rec.protocol = Some(c.scheme.to_owned());
    }
    rec.decision = Some(gatehouse_audit::Decision::Deny);
    rec.reason = Some(format!("api bearer token refused: {}", e.reason()));
    if let Err(err) = gw.audit.append(rec).await {
        tracing::error!(error = %err, "api: could not record a refused token");
    }
}

/// Runs a store call off the async threads (SQLite blocks for milliseconds).
async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, gatehouse_approvals::ApprovalError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => {
            tracing::error!(error = %e, "api: store task failed");
            Err(ApiError::Internal)
        }
    }
}

/// A JSON body: empty means `T::default()` when `optional`; otherwise it must be
/// `application/json`, parse (400), and fit the schema (422). Size is bounded before this
/// (413) by the body limit layer.
fn parse_body<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &Bytes,
    optional: bool,
) -> Result<T, ApiError> {
    if body.is_empty() && optional {
        return Ok(T::default());
    }
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err(ApiError::UnsupportedMediaType);
    }
    // An object, not merely something serde can read into the struct (`[null, null]` is).
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::BadRequest("the body is not valid JSON".to_owned()))?;
    if !value.is_object() {
        return Err(ApiError::Unprocessable(
            "the body must be a JSON object".to_owned(),
        ));
    }
    serde_json::from_value(value).map_err(|e| ApiError::Unprocessable(format!("invalid body: {e}")))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))
}

fn limit(l: Option<u32>) -> Result<usize, ApiError> {
    match l.unwrap_or(DEFAULT_LIST) {
        n @ 1..=MAX_LIST => Ok(n as usize),
        _ => Err(ApiError::BadRequest(format!("limit must be 1-{MAX_LIST}"))),
    }
}

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[derive(Debug, Clone, Copy, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    #[default]
    Pending,
    Approved,
    Denied,
    Expired,
    Executed,
    All,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListApprovals {
    #[serde(default)]
    state: ApprovalState,
    limit: Option<u32>,
}

/// `GET /v1/approvals`: the requests the caller may see (approver of, or requester of).
pub async fn list_approvals(
    State(gw): State<Arc<Gateway>>,
    Caller(who): Caller,
    q: Result<Query<ListApprovals>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let limit = limit(q.limit)?;
    let store = gw.approvals.clone();
    let all = blocking(move || {
        store.expire(SystemTime::now())?;
        match q.state {
            ApprovalState::Pending => store.list(RequestFilter::Pending, 10_000),
            _ => store.list(RequestFilter::All, 10_000),
        }
    })
    .await?;
    let wanted = |s: RequestStatus| match q.state {
        ApprovalState::Pending => s == RequestStatus::Pending,
        ApprovalState::Approved => s == RequestStatus::Approved,
        ApprovalState::Denied => s == RequestStatus::Denied,
        ApprovalState::Expired => s == RequestStatus::Expired,
        ApprovalState::Executed => s == RequestStatus::Executed,
        ApprovalState::All => true,
    };
    let acting = decisions::Acting::of(&who);
    let issuers = decisions::issuers(&gw.config.load().config)?;
    let items: Vec<Value> = all
        .iter()
        .filter(|r| wanted(r.status) && r.visible_to(acting.actor(), &issuers))
        .take(limit)
        .map(decisions::request_json)
        .collect();
    Ok(Json(json!({ "approvals": items })))
}

fn request_id(id: &str) -> Result<RequestId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound("approval request"))
}

fn grant_id(id: &str) -> Result<GrantId, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound("grant"))
}

/// `GET /v1/approvals/{id}`.
pub async fn get_approval(
    State(gw): State<Arc<Gateway>>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = request_id(&id)?;
    let store = gw.approvals.clone();
    let r = blocking(move || store.get(&id))
        .await?
        .ok_or(ApiError::NotFound("approval request"))?;
    let issuers = decisions::issuers(&gw.config.load().config)?;
    if !r.visible_to(decisions::Acting::of(&who).actor(), &issuers) {
        return Err(ApiError::NotVisible("approval request"));
    }
    Ok(Json(decisions::request_json(&r)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    comment: Option<String>,
    /// How long the approval may be used (default 15, at most 1440).
    #[serde(default, deserialize_with = "opt_whole_number")]
    minutes: Option<u64>,
}

/// A non-negative whole number; JSON Schema counts `10.0` as the integer 10, so do we.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(v) = n.as_u64() {
        return Ok(v);
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= 9_007_199_254_740_992.0 => Ok(f as u64),
        _ => Err(serde::de::Error::custom(
            "expected a non-negative whole number",
        )),
    }
}

fn opt_whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<serde_json::Value>::deserialize(d)?
        .map(|v| whole_number(v).map_err(serde::de::Error::custom))
        .transpose()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyBody {
    reason: Option<String>,
}

async fn decide(
    gw: Arc<Gateway>,
    who: Identity,
    id: &str,
    verdict: Verdict,
    comment: Option<String>,
    minutes: Option<u64>,
) -> Result<Json<Value>, ApiError> {
    let id = request_id(id)?;
    let store = gw.approvals.clone();
    let cfg = gw.config.load_full();
    let r = blocking(move || {
        decisions::decide(
            &store,
            &cfg.config,
            &who,
            &id,
            decisions::Ballot {
                verdict,
                comment: comment.as_deref(),
                minutes,
            },
            SystemTime::now(),
        )
        .inspect(|r| {
            tracing::info!(id = %r.id, approver = %who.username, verdict = verdict.as_str(),
                status = %r.status, "api: decision recorded");
        })
    })
    .await?;
    Ok(Json(decisions::request_json(&r)))
}

/// `POST /v1/approvals/{id}/approve`.
pub async fn approve(
    State(gw): State<Arc<Gateway>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: ApproveBody = parse_body(&headers, &body, true)?;
    decide(gw, who, &id, Verdict::Approve, b.comment, b.minutes).await
}

/// `POST /v1/approvals/{id}/deny`.
pub async fn deny(
    State(gw): State<Arc<Gateway>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: DenyBody = parse_body(&headers, &body, true)?;
    decide(gw, who, &id, Verdict::Deny, b.reason, None).await
}

#[derive(Debug, Clone, Copy, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GrantState {
    #[default]
    Active,
    All,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListGrants {
    #[serde(default)]
    state: GrantState,
    limit: Option<u32>,
}

/// `GET /v1/grants`: every grant for grant issuers, one's own grants for anyone else.
pub async fn list_grants(
    State(gw): State<Arc<Gateway>>,
    Caller(who): Caller,
    q: Result<Query<ListGrants>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let limit = limit(q.limit)?;
    let store = gw.approvals.clone();
    let all = blocking(move || {
        let now = SystemTime::now();
        match q.state {
            GrantState::Active => store.list_grants(GrantFilter::Effective(now), 10_000),
            GrantState::All => store.list_grants(GrantFilter::All, 10_000),
        }
    })
    .await?;
    let cfg = gw.config.load();
    let issuers = decisions::grant_issuers(&cfg.config)?;
    let acting = decisions::Acting::of(&who);
    let items: Vec<Value> = all
        .iter()
        .filter(|g| g.visible_to(acting.actor(), &issuers))
        .take(limit)
        .map(decisions::grant_json)
        .collect();
    Ok(Json(json!({ "grants": items })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGrantBody {
    user: String,
    connection: String,
    #[serde(deserialize_with = "whole_number")]
    minutes: u64,
    #[serde(default = "default_scope")]
    scope: String,
    comment: Option<String>,
}

fn default_scope() -> String {
    "writes".to_owned()
}

/// `POST /v1/grants`: issue a time-boxed grant (201).
pub async fn issue_grant(
    State(gw): State<Arc<Gateway>>,
    Caller(who): Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: NewGrantBody = parse_body(&headers, &body, false)?;
    let store = gw.approvals.clone();
    let cfg = gw.config.load_full();
    let g = blocking(move || {
        decisions::issue_grant(
            &store,
            &cfg.config,
            &who,
            decisions::GrantOrder {
                user: &b.user,
                connection: &b.connection,
                minutes: b.minutes,
                scope: &b.scope,
                comment: b.comment.as_deref(),
            },
            SystemTime::now(),
        )
        .inspect(|g| {
            tracing::info!(id = %g.id, user = %g.user, connection = %g.connection,
                issued_by = %who.username, "api: grant issued");
        })
    })
    .await?;
    let location = format!("/v1/grants/{}", g.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(decisions::grant_json(&g)),
    )
        .into_response())
}

/// `DELETE /v1/grants/{id}`: revoke now (grant issuers only).
pub async fn revoke_grant(
    State(gw): State<Arc<Gateway>>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = grant_id(&id)?;
    let store = gw.approvals.clone();
    let cfg = gw.config.load_full();
    let g = blocking(move || {
        decisions::revoke_grant(&store, &cfg.config, &who, &id, SystemTime::now()).inspect(|g| {
            tracing::info!(id = %g.id, by = %who.username, "api: grant revoked");
        })
    })
    .await?;
    Ok(Json(decisions::grant_json(&g)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        h
    }

    fn status(e: ApiError) -> StatusCode {
        e.status()
    }

    #[test]
    fn bodies_are_json_objects_with_known_fields() {
        let h = json_headers();
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        let ok: ApproveBody =
            parse_body(&h, &b(r#"{"comment":"ok","minutes":10.0}"#), true).unwrap();
        assert_eq!((ok.comment.as_deref(), ok.minutes), (Some("ok"), Some(10)));
        let empty: ApproveBody = parse_body(&HeaderMap::new(), &Bytes::new(), true).unwrap();
        assert!(empty.comment.is_none() && empty.minutes.is_none());
        let nulls: ApproveBody =
            parse_body(&h, &b(r#"{"comment":null,"minutes":null}"#), true).unwrap();
        assert!(nulls.minutes.is_none());
        let err = |s: &'static str| status(parse_body::<ApproveBody>(&h, &b(s), true).unwrap_err());
        assert_eq!(err("{oops"), StatusCode::BAD_REQUEST);
        assert_eq!(err("[null, null]"), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            err(r#"{"verdict":"approve"}"#),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(err(r#"{"minutes":1.5}"#), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err(r#"{"minutes":-1}"#), StatusCode::UNPROCESSABLE_ENTITY);
        let e = parse_body::<ApproveBody>(&HeaderMap::new(), &b("{}"), true).unwrap_err();
        assert_eq!(status(e), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        // A grant order has required fields; an empty body is not a default order.
        let e = parse_body::<NewGrantBody>(&h, &Bytes::new(), false).unwrap_err();
        assert_eq!(status(e), StatusCode::BAD_REQUEST);
        let g: NewGrantBody = parse_body(
            &h,
            &b(r#"{"user":"a","connection":"c","minutes":5}"#),
            false,
        )
        .unwrap();
        assert_eq!((g.scope.as_str(), g.minutes), ("writes", 5));
    }

    #[test]
    fn list_limits_are_bounded() {
        assert_eq!(limit(None).unwrap(), DEFAULT_LIST as usize);
        assert_eq!(limit(Some(MAX_LIST)).unwrap(), MAX_LIST as usize);
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(MAX_LIST + 1)).is_err());
    }
}
