//! Counters of one dispatcher, rendered in the Prometheus text format by the binary's
//! `--metrics` endpoint.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Summary;

/// Monotonic counters (since the dispatcher started).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Delivery attempts (counted ones).
    pub attempts: AtomicU64,
    /// Messages delivered to every recipient.
    pub delivered: AtomicU64,
    /// Attempts that ended deferred.
    pub deferred: AtomicU64,
    /// Messages moved to failed/.
    pub failed: AtomicU64,
    /// Messages refused before any relay (smuggling guard, bad envelope).
    pub refused: AtomicU64,
    /// Files quarantined in corrupt/.
    pub corrupt: AtomicU64,
    /// Recipients accepted by a relay.
    pub rcpts_delivered: AtomicU64,
    /// Recipients failed for good.
    pub rcpts_failed: AtomicU64,
    /// Claims taken back from dead dispatchers.
    pub reclaimed: AtomicU64,
    /// SMTP connections opened.
    pub connections: AtomicU64,
    /// Connection-level relay failures (refused, greeting, TLS, AUTH).
    pub relay_failures: AtomicU64,
    /// Messages sent without a DKIM signature although keys are configured (no key for the
    /// From domain, no usable From).
    pub dkim_unsigned: AtomicU64,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// The drain summary.
    pub fn summary(&self) -> Summary {
        Summary {
            delivered: self.delivered.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
        }
    }

    /// Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (name, help, c) in [
            (
                "qmail_dispatch_attempts_total",
                "Delivery attempts.",
                &self.attempts,
            ),
            (
                "qmail_dispatch_delivered_total",
                "Messages delivered to every recipient.",
                &self.delivered,
            ),
            (
                "qmail_dispatch_deferred_total",
                "Attempts that ended deferred.",
                &self.deferred,
            ),
            (
                "qmail_dispatch_failed_total",
                "Messages moved to failed/.",
                &self.failed,
            ),
            (
                "qmail_dispatch_refused_total",
                "Messages refused before any relay.",
                &self.refused,
            ),
            (
                "qmail_dispatch_corrupt_total",
                "Files quarantined in corrupt/.",
                &self.corrupt,
            ),
            (
                "qmail_dispatch_recipients_delivered_total",
                "Recipients accepted by a relay.",
                &self.rcpts_delivered,
            ),
            (
                "qmail_dispatch_recipients_failed_total",
                "Recipients failed for good.",
                &self.rcpts_failed,
            ),
            (
                "qmail_dispatch_reclaimed_total",
                "Claims taken back from dead dispatchers.",
                &self.reclaimed,
            ),
            (
                "qmail_dispatch_connections_total",
                "SMTP connections opened.",
                &self.connections,
            ),
            (
                "qmail_dispatch_relay_failures_total",
                "Connection-level relay failures.",
                &self.relay_failures,
            ),
            (
                "qmail_dispatch_dkim_unsigned_total",
                "Messages sent without a DKIM signature although keys are configured.",
                &self.dkim_unsigned,
            ),
        ] {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Ordering::Relaxed)
            );
        }
        s
    }
}
