//! The one place where errors of the REST API become HTTP responses: a status, a JSON body
//! `{"error": {"code": "...", "message": "..."}}`, and `WWW-Authenticate` on 401 (RFC 6750).
//! Messages name ids, users and states, never tokens, statement text, paths or SQLite details.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gatehouse_approvals::{ApprovalError, ErrorKind};
use gatehouse_identity::AuthError;

/// Everything a request can fail with.
#[derive(Debug)]
pub enum ApiError {
    /// No `Authorization: Bearer …` header.
    MissingToken,
    /// The header is there but is not a bearer token.
    MalformedAuthorization,
    /// The token was checked and refused, or could not be checked (issuer unavailable).
    BadToken(AuthError),
    /// The approvals store refused or failed.
    Approval(ApprovalError),
    /// The caller may not see this object.
    NotVisible(&'static str),
    /// No such route or object.
    NotFound(&'static str),
    /// Query string or JSON syntax the server cannot read.
    BadRequest(String),
    /// Well-formed JSON with the wrong fields, types or values.
    Unprocessable(String),
    /// A body with another content type than JSON.
    UnsupportedMediaType,
    PayloadTooLarge,
    MethodNotAllowed,
    /// The request did not complete in time.
    Timeout,
    /// Anything else; the detail is logged, not sent.
    Internal,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::MissingToken => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "an OIDC bearer token is required (Authorization: Bearer <token>)".into(),
            ),
            ApiError::MalformedAuthorization => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the Authorization header must be: Bearer <token>".into(),
            ),
            ApiError::BadToken(e) if e.is_unavailable() => (
                StatusCode::SERVICE_UNAVAILABLE,
                "identity_unavailable",
                e.client_message().into(),
            ),
            ApiError::BadToken(e) => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                e.client_message().into(),
            ),
            ApiError::Approval(e) => approval_parts(e),
            ApiError::NotVisible(what) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("you are not an approver of this {what}"),
            ),
            ApiError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no such {what}"),
            ),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone()),
            ApiError::Unprocessable(m) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", m.clone())
            }
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "request bodies must be application/json".into(),
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "request bodies are limited to {} bytes",
                    super::MAX_BODY_BYTES
                ),
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this path".into(),
            ),
            ApiError::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the request did not complete in time".into(),
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the gateway log".into(),
            ),
        }
    }

    /// The HTTP status this error is answered with.
    #[cfg(test)]
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }
}

/// Store errors by kind, with a specific code per refusal (clients branch on codes).
fn approval_parts(e: &ApprovalError) -> (StatusCode, &'static str, String) {
    let code = match e {
        ApprovalError::RequestNotFound { .. } | ApprovalError::GrantNotFound { .. } => "not_found",
        ApprovalError::SelfApproval { .. } => "self_approval",
        ApprovalError::NotAnApprover { .. } => "not_an_approver",
        ApprovalError::AlreadyDecided { .. } => "already_decided",
        ApprovalError::NotPending { .. } => "not_pending",
        ApprovalError::Expired { .. } => "expired",
        ApprovalError::NotApproved { .. } => "not_approved",
        ApprovalError::GrantNotActive { .. } => "grant_not_active",
        ApprovalError::GrantExpired { .. } => "grant_expired",
        ApprovalError::Invalid(_) => "invalid_value",
        ApprovalError::TooManyPending { .. } => "too_many_pending",
        _ => "internal",
    };
    let status = match e.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Limit => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, code, e.client_message())
}

impl From<ApprovalError> for ApiError {
    fn from(e: ApprovalError) -> Self {
        ApiError::Approval(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        if status.is_server_error() {
            match &self {
                ApiError::Approval(e) => tracing::error!(error = %e, "api: approvals store failed"),
                other => tracing::error!(error = ?other, "api: request failed"),
            }
        }
        let body = serde_json::json!({"error": {"code": code, "message": message}});
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3: the scheme, and for a presented token the reason.
            let value = match code {
                "invalid_token" => format!(
                    "Bearer realm=\"gatehouse\", error=\"invalid_token\", error_description=\"{message}\""
                ),
                _ => "Bearer realm=\"gatehouse\"".to_owned(),
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_error_kind() {
        let e = |x: ApprovalError| ApiError::from(x).status();
        assert_eq!(
            e(ApprovalError::RequestNotFound { id: "x".into() }),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            e(ApprovalError::SelfApproval { user: "a".into() }),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            e(ApprovalError::AlreadyDecided {
                approver: "a".into(),
                id: "x".into()
            }),
            StatusCode::CONFLICT
        );
        assert_eq!(
            e(ApprovalError::Corrupt("/secret/path".into())),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            ApiError::BadToken(AuthError::Expired).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            ApiError::BadToken(AuthError::IssuerUnavailable("x".into())).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn internal_details_never_reach_the_body() {
        let (_, code, msg) =
            ApiError::from(ApprovalError::Corrupt("/var/lib/gatehouse/x".into())).parts();
        assert_eq!(code, "internal");
        assert!(!msg.contains("/var/lib"), "{msg}");
        let (_, _, msg) =
            ApiError::BadToken(AuthError::IssuerUnavailable("http://idp.internal:1".into()))
                .parts();
        assert!(!msg.contains("idp.internal"), "{msg}");
    }
}
