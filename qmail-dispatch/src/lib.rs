//! qmail's dispatch engine: claims spooled messages and relays them over SMTP (or, with no relay
//! configured, writes them to `SPOOL/outbox/ID.eml`).
//!
//! # Overview
//! - [`Dispatcher`] (`dispatcher.rs`): the lifecycle (build, `run`, `drain`, the lease thread, the
//!   directory watch); `worker.rs`: claim, attempt, settle; `route.rs`: relay choice and
//!   failover within one attempt; `housekeeping.rs`: stale temporaries and `sent/` retention.
//! - [`claim`]: the claim protocol (rename into `active/ID+INSTANCE`, per-instance leases with
//!   the owner's identity); [`clock`]: the spool's own clock (`utimensat(UTIME_NOW)`) and the
//!   exclusive, no-follow file operations; [`queue::dir`]: the directory spool behind the
//!   [`queue`] seam (the claim's fence and settle).
//! - [`state`]: the per-message JSON sidecar (attempts, remaining recipients, diagnosis).
//! - [`schedule`]: which message next (priority with aging, not-before, retry due times),
//!   directory scans and the inotify wake-up.
//! - [`relay`] and [`smtp`]: relay choice (priority, weight, cooldown, limits) and qmail's own
//!   SMTP client (replies, deadlines, STARTTLS, AUTH, PIPELINING, SIZE) with per-recipient
//!   outcomes.
//! - [`content`]: the re-check of every message read from a spool (no bare CR/LF).
//! - [`retry`]: backoff; [`admin`]: `status`, `show`, `retry`, `requeue-failed`;
//!   [`dsn`]: delivery status notifications; [`metrics`]: counters.
//!
//! # Threads, not async
//! Each worker is a blocking OS thread driving its own synchronous [`smtp::Session`]s. A
//! dispatcher runs a handful to a few dozen concurrent SMTP sessions, not thousands, so a
//! thread per session costs little memory (the body is streamed in 64 KiB chunks), and the
//! blocking code keeps the per-recipient protocol logic linear and easy to audit. The spool
//! work (rename, fsync, unlink) is blocking filesystem I/O anyway, which async runtimes
//! would push to a thread pool. One more thread watches the directories and schedules, one
//! renews the lease.
//!
//! # Outcomes
//! After each attempt the message is, durably: deleted (or moved to `sent/`) once every
//! recipient is delivered; moved to `failed/` when some recipient failed for good and none
//! is left to retry; moved to `deferred/` with a due time otherwise. The state file is
//! written before the rename, so a crash in between is seen and corrected at the next claim.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod claim;
pub mod clock;
pub mod config;
pub mod content;
mod delivery_log;
mod dispatcher;
pub mod dkim;
pub mod dsn;
pub mod housekeeping;
pub mod metrics;
pub mod queue;
pub mod queue_worker;
pub mod relay;
pub mod retry;
mod route;
pub mod schedule;
pub mod smtp;
pub mod state;
mod worker;

pub use config::{DispatchConfig, DsnConfig, RelayConfig, RetryConfig, TimeoutConfig, TlsMode};
pub use dispatcher::{Dispatcher, prepare_spool};
pub use dkim::DkimConfig;
pub use metrics::Metrics;
pub use queue_worker::QueueDispatcher;
pub use state::{Attempt, FailedRcpt, MessageState, RcptResult, RcptStatus, Reply};

/// Directory of the embedded default's delivered messages.
pub const OUTBOX_DIR: &str = "outbox";
/// Directory of delivered messages kept for `sent_retention_secs`.
pub const SENT_DIR: &str = "sent";

/// What a `drain` (or a `run`, at its end) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Messages whose every recipient was delivered.
    pub delivered: u64,
    /// Attempts that left a message deferred.
    pub deferred: u64,
    /// Messages moved to `failed/`.
    pub failed: u64,
    /// Files quarantined in `corrupt/`.
    pub corrupt: u64,
}
