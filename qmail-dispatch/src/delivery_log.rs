//! One flat record per delivery attempt (Postfix's maillog line): appended as a JSON line to
//! `delivery_log` when configured, and logged as an event of target `qmail::delivery` whose
//! fields are the record's (with `log_format = "json"`, one flat JSON object: no record
//! escaped inside `message`). Also where each attempt is counted in [`crate::Metrics`].
//!
//! Record fields: `ts_ms` (start, Unix ms), `id`, `message_id`, `spool`, `attempt`, `relay`,
//! `recipients`, `outcome` (delivered, deferred, failed, partial), `code` and `reply` (the
//! deciding result: a deferred recipient's, else the last), `results` (per recipient: rcpt,
//! status, reply), `duration_ms`, `instance`, `submitted` (Unix seconds).

use std::io::Write;

use std::path::Path;

use qmail_core::SpoolHeader;

use crate::dispatcher::Shared;
use crate::state::{Attempt, RcptStatus, Reply};
use crate::worker::now_ms;

fn outcome(a: &Attempt) -> &'static str {
    let has = |s: RcptStatus| a.results.iter().any(|r| r.status == s);
    match (
        has(RcptStatus::Delivered),
        has(RcptStatus::Deferred),
        has(RcptStatus::Failed),
    ) {
        (true, false, false) => "delivered",
        (false, _, false) => "deferred",
        (false, false, true) => "failed",
        _ => "partial",
    }
}

/// Records attempt `a` of message `id` in `queue` (its spool header `header`).
pub(crate) fn record(sh: &Shared, id: &str, queue: &Path, header: &SpoolHeader, a: &Attempt) {
    sh.metrics.record_attempt(a, header.created, now_ms());
    let to_log = tracing::enabled!(target: "qmail::delivery", tracing::Level::INFO);
    if !to_log && sh.delivery_log.is_none() {
        return;
    }
    let deciding = a
        .results
        .iter()
        .find(|r| r.status == RcptStatus::Deferred)
        .or(a.results.last())
        .map(|r| r.reply.clone())
        .unwrap_or_else(|| Reply::local(""));
    let outcome = outcome(a);
    let recipients: Vec<&str> = a.results.iter().map(|r| r.rcpt.as_str()).collect();
    if to_log {
        let results = serde_json::to_string(&a.results).unwrap_or_default();
        tracing::info!(
            target: "qmail::delivery",
            ts_ms = a.at_ms,
            id = id,
            message_id = header.message_id.as_str(),
            spool = %queue.display(),
            attempt = a.number,
            relay = a.relay.as_str(),
            recipients = recipients.join(",").as_str(),
            outcome,
            code = deciding.code,
            reply = deciding.text.as_str(),
            results = results.as_str(),
            duration_ms = a.duration_ms,
            instance = a.instance.as_str(),
            submitted = header.created,
            "delivery attempt"
        );
    }
    if let Some(f) = &sh.delivery_log {
        let line = serde_json::json!({
            "ts_ms": a.at_ms,
            "id": id,
            "message_id": header.message_id,
            "spool": queue,
            "attempt": a.number,
            "relay": a.relay,
            "recipients": recipients,
            "outcome": outcome,
            "code": deciding.code,
            "reply": deciding.text,
            "results": a.results,
            "duration_ms": a.duration_ms,
            "instance": a.instance,
            "submitted": header.created,
        })
        .to_string();
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}
