//! An alert event: which run endings raise one, and its JSON document. Pure: no I/O.
//!
//! One run ending raises at most one event, the most specific: a security-relevant
//! `error_kind` gives `security`, an out-of-memory kill `run_oom`, then `run_timeout` for status
//! `timeout` and `run_failed` for status `failed`. Successes and cancellations raise nothing; a
//! run rescued from an expired lease raises `run_rescued` whether it was requeued or failed.
//!
//! The same document goes out as the `NOTIFY` payload and as the webhook body, so it must fit
//! PostgreSQL's 8000-byte payload limit: the error message is truncated (on a character
//! boundary, marked with `…`) until it does.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// Largest serialised event, below PostgreSQL's 8000-byte `NOTIFY` payload limit.
pub const MAX_PAYLOAD_BYTES: usize = 7900;
/// Longest error message carried (bytes, before JSON escaping).
pub const MAX_MESSAGE_BYTES: usize = 2000;
/// Longest `error_kind` and `executor_id` carried.
const MAX_SHORT_BYTES: usize = 200;

/// `error_kind`s of sandbox violations and of app files that fail verification: an app doing or
/// shipping something it must not, not just failing.
pub const SECURITY_ERROR_KINDS: &[&str] = &[
    "output_too_large",
    "permission_not_granted",
    "checksum_mismatch",
    "unsafe_archive",
    "unsafe_path",
];

/// `error_kind`s of a kernel out-of-memory kill (of the app, or of its dependency install).
pub const OOM_ERROR_KINDS: &[&str] = &["oom_killed", "install_oom_killed"];

/// The `event` field, and the `X-App-Executor-Event` header of a webhook delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    RunFailed,
    RunTimeout,
    RunOom,
    RunRescued,
    Security,
    ResourceThreshold,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RunFailed => "run_failed",
            EventKind::RunTimeout => "run_timeout",
            EventKind::RunOom => "run_oom",
            EventKind::RunRescued => "run_rescued",
            EventKind::Security => "security",
            EventKind::ResourceThreshold => "resource_threshold",
        }
    }
}

/// The event a run that ended with `status` and `error_kind` raises, if any.
pub fn classify(status: &str, error_kind: Option<&str>) -> Option<EventKind> {
    if !matches!(status, "failed" | "timeout") {
        return None;
    }
    Some(match error_kind {
        Some(kind) if SECURITY_ERROR_KINDS.contains(&kind) => EventKind::Security,
        Some(kind) if OOM_ERROR_KINDS.contains(&kind) => EventKind::RunOom,
        _ if status == "timeout" => EventKind::RunTimeout,
        _ => EventKind::RunFailed,
    })
}

/// One alert, as sent. `executor_id` is the daemon that ran the attempt (for `run_rescued`, the
/// one whose lease expired); `at` is when the event was raised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertEvent {
    pub event: EventKind,
    pub run_id: Uuid,
    pub app_id: Uuid,
    pub company_id: Uuid,
    pub status: String,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub attempt: i32,
    pub executor_id: Option<String>,
    pub at: DateTime<Utc>,
    /// For `resource_threshold`: each resource at or above its threshold, as
    /// `{"resource", "used", "limit", "ratio"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<serde_json::Value>,
}

impl AlertEvent {
    /// The JSON document, at most [`MAX_PAYLOAD_BYTES`]: long fields are truncated first.
    pub fn to_json(&self) -> String {
        let mut event = self.clone();
        event.error_kind = event.error_kind.map(|k| truncate(&k, MAX_SHORT_BYTES));
        event.executor_id = event.executor_id.map(|e| truncate(&e, MAX_SHORT_BYTES));
        event.error_message = event.error_message.map(|m| truncate(&m, MAX_MESSAGE_BYTES));
        loop {
            let json = serde_json::to_string(&event).expect("an event serialises");
            if json.len() <= MAX_PAYLOAD_BYTES {
                return json;
            }
            // Escaping (control characters become \u00XX) can make the message longer in JSON
            // than in memory: shrink by the excess and try again.
            let excess = json.len() - MAX_PAYLOAD_BYTES;
            event.error_message = match event.error_message.take() {
                Some(m) if m.len() > excess + 8 => {
                    Some(truncate(&m, (m.len() - excess - 8).min(m.len() / 2)))
                }
                _ => None,
            };
        }
    }
}

/// `text` cut to at most `max` bytes on a character boundary, with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(message: &str) -> AlertEvent {
        AlertEvent {
            event: EventKind::RunFailed,
            run_id: Uuid::nil(),
            app_id: Uuid::nil(),
            company_id: Uuid::nil(),
            status: "failed".into(),
            error_kind: Some("nonzero_exit".into()),
            error_message: Some(message.into()),
            attempt: 1,
            executor_id: Some("host-1-abc".into()),
            at: DateTime::from_timestamp(1_754_000_000, 0).unwrap(),
            thresholds: None,
        }
    }

    #[test]
    fn the_most_specific_event_wins_and_successes_raise_none() {
        assert_eq!(classify("success", None), None);
        assert_eq!(classify("cancelled", Some("cancelled")), None);
        assert_eq!(classify("pending", Some("lease_expired")), None);
        assert_eq!(
            classify("failed", Some("nonzero_exit")),
            Some(EventKind::RunFailed)
        );
        assert_eq!(classify("failed", None), Some(EventKind::RunFailed));
        assert_eq!(
            classify("timeout", Some("timeout")),
            Some(EventKind::RunTimeout)
        );
        assert_eq!(
            classify("failed", Some("oom_killed")),
            Some(EventKind::RunOom)
        );
        assert_eq!(
            classify("failed", Some("install_oom_killed")),
            Some(EventKind::RunOom)
        );
        for kind in SECURITY_ERROR_KINDS {
            assert_eq!(classify("failed", Some(kind)), Some(EventKind::Security));
        }
    }

    #[test]
    fn the_document_has_the_documented_fields() {
        let json: serde_json::Value = serde_json::from_str(&event("boom").to_json()).unwrap();
        assert_eq!(json["event"], "run_failed");
        assert_eq!(json["status"], "failed");
        assert_eq!(json["error_kind"], "nonzero_exit");
        assert_eq!(json["error_message"], "boom");
        assert_eq!(json["attempt"], 1);
        assert_eq!(json["executor_id"], "host-1-abc");
        assert_eq!(json["run_id"], Uuid::nil().to_string());
        assert!(json["at"].as_str().unwrap().starts_with("2025-07-31T"));
        assert_eq!(json.as_object().unwrap().len(), 10);
    }

    #[test]
    fn long_messages_are_truncated_to_fit_a_notify_payload() {
        let long = "é".repeat(10_000);
        let json = event(&long).to_json();
        assert!(json.len() <= MAX_PAYLOAD_BYTES);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        let message = parsed["error_message"].as_str().unwrap();
        assert!(message.ends_with('…') && message.len() <= MAX_MESSAGE_BYTES);
        // Control characters escape to six bytes each: still under the limit.
        let escaped = event(&"\u{1}".repeat(MAX_MESSAGE_BYTES)).to_json();
        assert!(escaped.len() <= MAX_PAYLOAD_BYTES, "{}", escaped.len());
        assert!(serde_json::from_str::<serde_json::Value>(&escaped).is_ok());
    }

    #[test]
    fn truncation_keeps_short_text_and_cuts_on_char_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate("ééééé", 6);
        assert!(cut.len() <= 6 && cut.ends_with('…'), "{cut}");
    }
}
