//! The dispatcher's metrics, exposed in the OpenMetrics text format (which Prometheus
//! scrapes) by the binary's `/metrics` through the `prometheus-client` crate.
//!
//! One [`Metrics`] lives as long as the process: the binary creates it, keeps the `Arc`, and
//! hands it to every [`crate::Dispatcher`] it builds ([`crate::Dispatcher::with_metrics`]), so
//! a SIGHUP reload keeps every counter (Prometheus' `rate()` sees no reset).
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `qmail_dispatch_attempts_total` … `qmail_dispatch_relay_failures_total` | counter | — |
//! | `qmail_delivery_attempts_total` | counter | `relay`, `outcome` (delivered, deferred, failed, partial) |
//! | `qmail_delivery_recipients_total` | counter | `relay`, `code_class` (2xx, 4xx, 5xx, local) |
//! | `qmail_relay_connections_total` | counter | `relay`, `outcome` (opened, failed) |
//! | `qmail_delivery_duration_seconds` | histogram | `relay` |
//! | `qmail_queue_time_seconds` | histogram (submit → 250) | `relay` |
//! | `qmail_queue_messages` | gauge | `spool`, `state` |
//! | `qmail_queue_oldest_age_seconds` | gauge | `spool`, `state` |
//! | `qmail_queue_fences_total` | counter (`run --queue` only) | `answer` (lease, database) |
//! | `qmail_build_info` | info | `version` |
//!
//! The queue gauges come from the spool's directory listings, refreshed at most every
//! [`QUEUE_GAUGE_TTL`] whatever the scrape rate. For a dispatcher of a PostgreSQL queue
//! (`run --queue`) they come from one `GROUP BY state` over the queue's rows
//! ([`crate::queue::postgres::PgQueue::status`]), labelled `spool="queue:SCHEMA"` (never the
//! URL: it may hold a password), with the row states `ready`, `scheduled`, `active`,
//! `deferred`, `hold`, `failed`, `corrupt` and `delivered` (tombstones); every dispatcher of a
//! queue exports the same queue-wide counts, so aggregate them with `max`, not `sum`.
//! `qmail_queue_fences_total{answer}` counts the fences before end-of-data of this process's
//! claims: `lease` answered from the lease without a statement, `database` asked the
//! database (docs/scale-out.md, "The fence"); a `database` rate near the delivery rate says
//! the local fence is off (`local_fence_ms = 0`, a version-1 dispatcher's lease row, a lease
//! connection on another server).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::Summary;
use crate::state::{Attempt, RcptStatus};

/// How long the queue gauges are reused before the directories are listed again.
pub const QUEUE_GAUGE_TTL: Duration = Duration::from_secs(5);

/// Minutes of per-minute history kept for the console's charts.
pub const HISTORY_MINUTES: usize = 60;

/// A counter [`Metrics::add`] can bump: the exported [`Counter`]s, and plain atomics.
pub trait Bump {
    /// Adds `n`.
    fn bump(&self, n: u64);
}

impl Bump for Counter {
    fn bump(&self, n: u64) {
        self.inc_by(n);
    }
}

impl Bump for AtomicU64 {
    fn bump(&self, n: u64) {
        self.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayOutcome {
    relay: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayCode {
    relay: String,
    code_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayLabel {
    relay: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpoolState {
    spool: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FenceAnswer {
    answer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// One minute of the console's throughput chart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MinuteCounts {
    /// Start of the minute, Unix seconds.
    pub minute: i64,
    /// Attempts that delivered every recipient tried.
    pub delivered: u64,
    /// Attempts that left recipients deferred.
    pub deferred: u64,
    /// Attempts with a permanent failure.
    pub failed: u64,
}

/// Every counter of one dispatcher process.
pub struct Metrics {
    /// Delivery attempts (counted ones).
    pub attempts: Counter,
    /// Messages delivered to every recipient.
    pub delivered: Counter,
    /// Attempts that ended deferred.
    pub deferred: Counter,
    /// Messages moved to failed/.
    pub failed: Counter,
    /// Messages refused before any relay (smuggling guard, bad envelope).
    pub refused: Counter,
    /// Files quarantined in corrupt/.
    pub corrupt: Counter,
    /// Recipients accepted by a relay.
    pub rcpts_delivered: Counter,
    /// Recipients failed for good.
    pub rcpts_failed: Counter,
    /// Claims taken back from dead dispatchers.
    pub reclaimed: Counter,
    /// SMTP connections opened.
    pub connections: Counter,
    /// Connection-level relay failures (refused, greeting, TLS, AUTH).
    pub relay_failures: Counter,
    /// Messages sent without a DKIM signature although keys are configured (no key for the
    /// From domain, no usable From).
    pub dkim_unsigned: Counter,
    attempts_by: Family<RelayOutcome, Counter>,
    connections_by: Family<RelayOutcome, Counter>,
    rcpts_by: Family<RelayCode, Counter>,
    duration: Family<RelayLabel, Histogram, fn() -> Histogram>,
    queue_time: Family<RelayLabel, Histogram, fn() -> Histogram>,
    queue_messages: Family<SpoolState, Gauge>,
    queue_oldest: Family<SpoolState, Gauge>,
    fences: Family<FenceAnswer, Counter>,
    registry: Registry,
    gauges_at: Mutex<Option<Instant>>,
    history: Mutex<VecDeque<MinuteCounts>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("attempts", &self.attempts.get())
            .field("delivered", &self.delivered.get())
            .finish_non_exhaustive()
    }
}

fn duration_histogram() -> Histogram {
    // 10 ms .. ~82 s
    Histogram::new([
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ])
}

fn queue_time_histogram() -> Histogram {
    // 100 ms .. 5 days (Postfix' maximal_queue_lifetime)
    Histogram::new([
        0.1,
        0.5,
        1.0,
        5.0,
        30.0,
        60.0,
        300.0,
        900.0,
        3600.0,
        4.0 * 3600.0,
        86400.0,
        432000.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let c = Counter::default;
        let m = Metrics {
            attempts: c(),
            delivered: c(),
            deferred: c(),
            failed: c(),
            refused: c(),
            corrupt: c(),
            rcpts_delivered: c(),
            rcpts_failed: c(),
            reclaimed: c(),
            connections: c(),
            relay_failures: c(),
            dkim_unsigned: c(),
            attempts_by: Family::default(),
            connections_by: Family::default(),
            rcpts_by: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            queue_time: Family::new_with_constructor(queue_time_histogram),
            queue_messages: Family::default(),
            queue_oldest: Family::default(),
            fences: Family::default(),
            registry: Registry::default(),
            gauges_at: Mutex::new(None),
            history: Mutex::new(VecDeque::new()),
        };
        for (name, help, counter) in [
            ("qmail_dispatch_attempts", "Delivery attempts", &m.attempts),
            (
                "qmail_dispatch_delivered",
                "Messages delivered to every recipient",
                &m.delivered,
            ),
            (
                "qmail_dispatch_deferred",
                "Attempts that ended deferred",
                &m.deferred,
            ),
            (
                "qmail_dispatch_failed",
                "Messages moved to failed/",
                &m.failed,
            ),
            (
                "qmail_dispatch_refused",
                "Messages refused before any relay",
                &m.refused,
            ),
            (
                "qmail_dispatch_corrupt",
                "Files quarantined in corrupt/",
                &m.corrupt,
            ),
            (
                "qmail_dispatch_recipients_delivered",
                "Recipients accepted by a relay",
                &m.rcpts_delivered,
            ),
            (
                "qmail_dispatch_recipients_failed",
                "Recipients failed for good",
                &m.rcpts_failed,
            ),
            (
                "qmail_dispatch_reclaimed",
                "Claims taken back from dead dispatchers",
                &m.reclaimed,
            ),
            (
                "qmail_dispatch_connections",
                "SMTP connections opened",
                &m.connections,
            ),
            (
                "qmail_dispatch_relay_failures",
                "Connection-level relay failures",
                &m.relay_failures,
            ),
            (
                "qmail_dispatch_dkim_unsigned",
                "Messages sent without a DKIM signature although keys are configured",
                &m.dkim_unsigned,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "qmail_delivery_attempts",
            "Delivery attempts by relay and outcome (delivered, deferred, failed, partial)",
            m.attempts_by.clone(),
        );
        registry.register(
            "qmail_relay_connections",
            "SMTP connections to each relay: opened, or failed (refused, greeting, TLS, AUTH)",
            m.connections_by.clone(),
        );
        registry.register(
            "qmail_delivery_recipients",
            "Recipient results by relay and reply code class (2xx, 4xx, 5xx, local)",
            m.rcpts_by.clone(),
        );
        registry.register(
            "qmail_delivery_duration_seconds",
            "Duration of one delivery attempt (connection reuse included)",
            m.duration.clone(),
        );
        registry.register(
            "qmail_queue_time_seconds",
            "Time from submit to the relay's 250 for the last recipient of a message",
            m.queue_time.clone(),
        );
        registry.register(
            "qmail_queue_messages",
            "Messages per spool and state (refreshed at most every 5 s)",
            m.queue_messages.clone(),
        );
        registry.register(
            "qmail_queue_oldest_age_seconds",
            "Age of the oldest message per spool and state (refreshed at most every 5 s)",
            m.queue_oldest.clone(),
        );
        registry.register(
            "qmail_queue_fences",
            "Fences before end-of-data of this process's claims on a PostgreSQL queue, by \
             answer: lease (no statement) or database",
            m.fences.clone(),
        );
        registry.register(
            "qmail_build",
            "The dispatcher's version",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
        );
        Metrics { registry, ..m }
    }
}

/// `2xx`, `4xx`, `5xx` from an SMTP code; `local` without one (connection refused, TLS, ...).
fn code_class(code: Option<u16>) -> String {
    match code {
        Some(c @ 200..=599) => format!("{}xx", c / 100),
        _ => "local".into(),
    }
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(&self, c: &impl Bump, n: u64) {
        c.bump(n);
    }

    /// Records a connection to `relay`: opened (`ok`), or failed at the connection level
    /// (refused, greeting, TLS, AUTH): `qmail_relay_connections_total{relay,outcome}` and the
    /// unlabelled `connections` / `relay_failures` counters.
    pub fn relay_connection(&self, relay: &str, ok: bool) {
        if ok {
            self.connections.inc();
        } else {
            self.relay_failures.inc();
        }
        self.connections_by
            .get_or_create(&RelayOutcome {
                relay: relay.to_owned(),
                outcome: if ok { "opened" } else { "failed" }.into(),
            })
            .inc();
    }

    /// Records one attempt (called once per attempt, with the message's submit time):
    /// `qmail_delivery_attempts_total{relay,outcome}`, `qmail_delivery_recipients_total{relay,
    /// code_class}`, the duration histogram, the queue time when every recipient tried was
    /// accepted, and the console's per-minute history.
    pub fn record_attempt(&self, a: &Attempt, submitted_secs: i64, now_ms: i64) {
        let relay = a.relay.clone();
        let (mut ok, mut def, mut bad) = (0, 0, 0);
        for r in &a.results {
            match r.status {
                RcptStatus::Delivered => ok += 1,
                RcptStatus::Deferred => def += 1,
                RcptStatus::Failed => bad += 1,
            }
            self.rcpts_by
                .get_or_create(&RelayCode {
                    relay: relay.clone(),
                    code_class: code_class(r.reply.code),
                })
                .inc();
        }
        let outcome = match (ok, def, bad) {
            (_, 0, 0) if ok > 0 => "delivered",
            (0, _, 0) => "deferred",
            (0, 0, _) => "failed",
            _ => "partial",
        };
        self.attempts_by
            .get_or_create(&RelayOutcome {
                relay: relay.clone(),
                outcome: outcome.into(),
            })
            .inc();
        let label = RelayLabel { relay };
        self.duration
            .get_or_create(&label)
            .observe(a.duration_ms as f64 / 1000.0);
        if outcome == "delivered" {
            let q = (now_ms - submitted_secs * 1000).max(0) as f64 / 1000.0;
            self.queue_time.get_or_create(&label).observe(q);
        }
        let minute = now_ms.div_euclid(60_000) * 60;
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if h.back().is_none_or(|m| m.minute != minute) {
            h.push_back(MinuteCounts {
                minute,
                ..MinuteCounts::default()
            });
            while h.len() > HISTORY_MINUTES {
                h.pop_front();
            }
        }
        if let Some(m) = h.back_mut() {
            match outcome {
                "delivered" => m.delivered += 1,
                "failed" => m.failed += 1,
                _ => m.deferred += 1,
            }
        }
    }

    /// The last hour, one entry per minute that had attempts, oldest first.
    pub fn history(&self) -> Vec<MinuteCounts> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.iter().copied().collect()
    }

    /// The drain summary.
    pub fn summary(&self) -> Summary {
        Summary {
            delivered: self.delivered.get(),
            deferred: self.deferred.get(),
            failed: self.failed.get(),
            corrupt: self.corrupt.get(),
        }
    }

    /// The counters of `qmail_queue_fences_total{answer}`: `[lease, database]` (created, so
    /// both are exported from the start). Shared: a reload's new queue counts into the same.
    pub fn fence_counters(&self) -> [Counter; 2] {
        ["lease", "database"].map(|a| {
            self.fences
                .get_or_create(&FenceAnswer { answer: a.into() })
                .clone()
        })
    }

    fn refresh_queues(&self, spools: &[PathBuf], queue: Option<&crate::queue::postgres::PgQueue>) {
        // one refresh at a time: a scrape that finds another one gathering (a slow listing,
        // a database that stopped answering) serves the gauges as they are, without waiting
        let mut at = match self.gauges_at.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if at.is_some_and(|t| t.elapsed() < QUEUE_GAUGE_TTL) {
            return;
        }
        // a failure backs off for the TTL too
        *at = Some(Instant::now());
        let mut rows: Vec<(SpoolState, i64, Option<i64>)> = Vec::new();
        if let Some(q) = queue {
            match q.status() {
                Ok(st) => {
                    let spool = format!("queue:{}", st.schema);
                    for c in &st.states {
                        let l = SpoolState {
                            spool: spool.clone(),
                            state: c.label().into(),
                        };
                        rows.push((l, c.count, c.oldest_age_secs));
                    }
                }
                // no gauges while the database is unreachable (an absent series, not a
                // stale one)
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: the queue's counts are unavailable");
                }
            }
        }
        for sp in spools {
            let st = crate::admin::status(sp);
            let spool = sp.display().to_string();
            for (state, c) in state_counts(&st) {
                let l = SpoolState {
                    spool: spool.clone(),
                    state: state.into(),
                };
                rows.push((l, c.count as i64, c.oldest_age_secs));
            }
        }
        self.queue_messages.clear();
        self.queue_oldest.clear();
        for (l, count, oldest) in rows {
            self.queue_messages.get_or_create(&l).set(count);
            if let Some(a) = oldest {
                self.queue_oldest.get_or_create(&l).set(a);
            }
        }
    }

    /// The OpenMetrics text exposition, with the queue gauges of `spools` (listed again only
    /// when older than [`QUEUE_GAUGE_TTL`]). Content type:
    /// `application/openmetrics-text; version=1.0.0; charset=utf-8`.
    pub fn render_with_queues(&self, spools: &[PathBuf]) -> String {
        self.render_with(spools, None)
    }

    /// As [`Metrics::render_with_queues`], with the gauges of a PostgreSQL `queue` too
    /// (labelled `spool="queue:SCHEMA"`; absent while the database is unreachable).
    pub fn render_with(
        &self,
        spools: &[PathBuf],
        queue: Option<&crate::queue::postgres::PgQueue>,
    ) -> String {
        self.refresh_queues(spools, queue);
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }

    /// The exposition without queue gauges.
    pub fn render(&self) -> String {
        self.render_with_queues(&[])
    }
}

/// The states of a [`crate::admin::SpoolStatus`], with their label names.
pub fn state_counts(
    st: &crate::admin::SpoolStatus,
) -> [(&'static str, &crate::admin::StateCount); 7] {
    [
        ("ready", &st.ready),
        ("scheduled", &st.scheduled),
        ("active", &st.active),
        ("deferred", &st.deferred),
        ("hold", &st.held),
        ("failed", &st.failed),
        ("corrupt", &st.corrupt),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{RcptResult, Reply};

    #[test]
    fn fence_counters_are_exported_from_the_start_and_shared() {
        let m = Metrics::default();
        assert!(
            !m.render().contains("qmail_queue_fences_total"),
            "not for a spool"
        );
        let [lease, database] = m.fence_counters();
        let text = m.render();
        assert!(
            text.contains("qmail_queue_fences_total{answer=\"lease\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("qmail_queue_fences_total{answer=\"database\"} 0"),
            "{text}"
        );
        lease.inc_by(3);
        database.inc();
        // a reload's new queue asks again and counts into the same series
        let [again, _] = m.fence_counters();
        again.inc();
        let text = m.render();
        assert!(
            text.contains("qmail_queue_fences_total{answer=\"lease\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("qmail_queue_fences_total{answer=\"database\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn queue_gauges_are_cached() {
        let d = tempfile::tempdir().unwrap();
        let sp = d.path().to_owned();
        std::fs::create_dir_all(sp.join("ready")).unwrap();
        let m = Metrics::default();
        let spools = [sp.clone()];
        let line = |s: &str| {
            s.lines()
                .find(|l| l.starts_with("qmail_queue_messages{") && l.contains("state=\"ready\""))
                .map(str::to_owned)
        };
        let first = m.render_with_queues(&spools);
        assert!(line(&first).unwrap().ends_with(" 0"), "{first}");
        let id = qmail_core::QueueId::generate();
        std::fs::write(sp.join("ready").join(id.as_str()), b"x").unwrap();
        // within the TTL: the same listing, however often it is scraped
        let again = m.render_with_queues(&spools);
        assert!(line(&again).unwrap().ends_with(" 0"), "{again}");
        let t0 = Instant::now();
        loop {
            let now = m.render_with_queues(&spools);
            if line(&now).unwrap().ends_with(" 1") {
                break;
            }
            assert!(t0.elapsed() < QUEUE_GAUGE_TTL * 3, "never refreshed: {now}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn labelled_counters_and_histograms() {
        let m = Metrics::default();
        m.add(&m.delivered, 2);
        let a = Attempt {
            number: 1,
            at_ms: 0,
            duration_ms: 120,
            relay: "mx1".into(),
            instance: "i".into(),
            results: vec![
                RcptResult {
                    rcpt: "a@x".into(),
                    status: RcptStatus::Delivered,
                    reply: Reply::smtp(250, "ok"),
                },
                RcptResult {
                    rcpt: "b@x".into(),
                    status: RcptStatus::Deferred,
                    reply: Reply::smtp(451, "later"),
                },
            ],
        };
        m.record_attempt(&a, 0, 5_000);
        let s = m.render();
        assert!(s.contains("qmail_dispatch_delivered_total 2"), "{s}");
        assert!(
            s.contains("qmail_delivery_attempts_total{relay=\"mx1\",outcome=\"partial\"} 1"),
            "{s}"
        );
        assert!(
            s.contains("qmail_delivery_recipients_total{relay=\"mx1\",code_class=\"4xx\"} 1"),
            "{s}"
        );
        assert!(s.contains("qmail_delivery_duration_seconds_count{relay=\"mx1\"} 1"));
        assert!(s.contains("qmail_build_info{version="));
        assert_eq!(m.history().len(), 1);
        // an AtomicU64 field added elsewhere still compiles against `add`
        let x = AtomicU64::new(0);
        m.add(&x, 3);
        assert_eq!(x.load(Ordering::Relaxed), 3);
    }
}
