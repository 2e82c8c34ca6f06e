//! Approval webhooks: a JSON POST on each new approval request and each decision, in a
//! generic shape or Slack's incoming-webhook shape (`{"text": …}`). Delivery is best effort
//! (5 s timeout, failures logged); the audit trail, not the webhook, is the record.

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::{WebhookConfig, WebhookFormat};

/// Longest statement text put into a webhook (approvers see the rest in `approvals list`).
pub const STATEMENT_PREVIEW_CHARS: usize = 500;

fn preview(s: &str) -> String {
    let mut out: String = s.chars().take(STATEMENT_PREVIEW_CHARS).collect();
    if s.chars().count() > STATEMENT_PREVIEW_CHARS {
        out.push('…');
    }
    out
}

/// The payload for `event` (`approval.requested`, …) about request `r`.
pub fn payload(
    format: WebhookFormat,
    gateway: &str,
    event: &str,
    r: &gatehouse_approvals::Request,
) -> Value {
    let votes: Vec<Value> = r
        .votes
        .iter()
        .map(|v| {
            json!({"approver": v.approver.name, "approver_issuer": v.approver.issuer.as_str(),
            "verdict": v.verdict.as_str(), "comment": v.comment})
        })
        .collect();
    match format {
        WebhookFormat::Json => json!({
            "event": event,
            "gateway": gateway,
            "id": r.id.to_string(),
            "status": r.status.as_str(),
            "mode": r.mode.as_str(),
            "requester": r.requester.name,
            "requester_issuer": r.requester.issuer.as_str(),
            "connection": r.connection,
            "rule": r.rule,
            "reason": r.reason,
            "statement": preview(&r.statement),
            "statement_sha256": r.statement_sha256,
            "approvers": r.approvers,
            "min_approvals": r.min_approvals,
            "votes": votes,
        }),
        WebhookFormat::Slack => {
            let what = match event {
                "approval.requested" => "needs approval",
                "approval.approved" => "was approved",
                "approval.denied" => "was denied",
                "approval.expired" => "expired",
                "approval.executed" => "ran",
                _ => "changed",
            };
            json!({
                "text": format!(
                    "Gatehouse {gateway}: request {} by {} on {} {what} ({}).\n```{}```\nApprove: gatehouse approvals approve {} — approvers: {}",
                    r.id,
                    r.requester,
                    r.connection,
                    r.rule,
                    preview(&r.statement).replace("```", "'''"),
                    r.id,
                    r.approvers.join(", ")
                )
            })
        }
    }
}

/// POSTs `body` to the webhook. Blocking: call from `spawn_blocking`.
pub fn deliver(cfg: &WebhookConfig, body: &Value) -> Result<(), String> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .max_redirects(0)
        .proxy(None)
        .build()
        .new_agent();
    agent
        .post(cfg.url.as_str())
        .header("content-type", "application/json")
        .send(body.to_string())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn preview_truncates_by_characters() {
        let long = "é".repeat(STATEMENT_PREVIEW_CHARS + 10);
        let p = preview(&long);
        assert_eq!(p.chars().count(), STATEMENT_PREVIEW_CHARS + 1);
        assert!(p.ends_with('…'));
        assert_eq!(preview("select 1"), "select 1");
    }
}
