//! The seam between the engine and where its work is kept: a [`Queue`] hands out [`Claim`]s,
//! and a claim leaves only through [`Claim::settle`].
//!
//! The scheduler, the relays, retries, SMTP, DSN and metrics work over these traits and never
//! see a path or a row. Two implementations:
//! - the directory spool (`docs/spool-format.md`): a claim is the rename of `ready/ID` into
//!   `active/ID+INSTANCE`, its fence the existence of that name and a fresh lease;
//! - PostgreSQL (`docs/scale-out.md`): a claim is a row taken with `FOR UPDATE SKIP LOCKED`,
//!   its fence the `owner` and claim counter every settle is guarded by.
//!
//! The contract every implementation keeps (it is what the delivery guarantee rests on):
//! 1. a message is claimed by at most one live owner at a time;
//! 2. [`Claim::still_mine`] is `false` once another owner may have taken the message back, and
//!    the engine checks it right before DATA (and before the final dot of a long body): after
//!    that point a duplicate can only come from the end-of-DATA window (RFC 5321 §4.1.1.4 has
//!    no way to close it);
//! 3. [`Claim::settle`] of a claim that was taken back changes nothing and says
//!    [`SettleError::LostClaim`];
//! 4. once any recipient was accepted, the message never goes back with its old state: a
//!    settle that cannot be written is retried by the caller, never turned into a release.

pub mod dir;
pub mod postgres;

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use qmail_core::SpoolHeader;

use crate::state::MessageState;

/// The health of this process's lease on a queue (a lease file's age in the spool's clock, or
/// a heartbeat row in the database's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseHealth {
    /// Renewed within half a lease: claiming and starting DATA are allowed.
    Fresh,
    /// Not renewed for this long (renewal failing, or the process was stopped): claim
    /// nothing and start no DATA until it is fresh again.
    Stale {
        /// Age of the last successful renewal.
        age: Duration,
    },
    /// The lease is gone and could not be recreated: serve nothing.
    Lost(String),
}

/// How one attempt ends for the queue. Every variant carries the state to keep (attempt
/// history, recipients delivered and failed, the diagnosis).
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Every recipient is done and none failed: the message leaves the queue (or is archived
    /// in `sent/` when `sent_retention_secs` is set).
    Delivered(MessageState),
    /// Some recipients are left to retry: back in the queue, not before `due` (Unix seconds).
    Deferred {
        /// The state, with `remaining` set to the recipients still to do.
        state: MessageState,
        /// Not before this Unix time (seconds).
        due: i64,
    },
    /// Nothing left to retry and some recipient failed for good (or the message as a whole):
    /// moved to the failed queue with its diagnosis.
    Failed(MessageState),
    /// The stored message cannot be read (bad framing, bad envelope, a state file that does
    /// not fit its envelope): quarantined with this reason, never sent.
    Corrupt(String),
    /// Put on hold by an operator: claimed by nobody until released.
    Held,
    /// Given back untouched (shutdown, or claimed before it was due).
    Release,
}

/// Why a settle did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// The claim was taken back by another owner (its lease expired): nothing was changed
    /// here, the other owner's attempt decides.
    #[error("the claim was taken back by another dispatcher")]
    LostClaim,
    /// The queue could not be written: the caller keeps the claim and what it learnt, and
    /// retries with backoff.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// A queue operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Spool I/O, naming the path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The queue's backend cannot be reached (database down, failover in progress).
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// A stored message or state that does not parse.
    #[error("corrupt entry {id}: {reason}")]
    Corrupt {
        /// The queue id (or file name).
        id: String,
        /// What is wrong.
        reason: String,
    },
}

/// Where a dispatcher gets work. One per configured queue (a spool directory, or a
/// PostgreSQL schema).
pub trait Queue: Send + Sync + 'static {
    /// A message claimed from this queue.
    type Claim: Claim;

    /// Claims up to `max` messages that are due, best first (priority with aging), waiting up
    /// to `wait` for one to arrive (inotify, LISTEN/NOTIFY or polling inside). An empty
    /// vector after `wait` is not an error. Claims nothing while the lease is not
    /// [`LeaseHealth::Fresh`].
    ///
    /// # Errors
    /// [`QueueError`] when the queue cannot be read.
    fn claim(&self, max: usize, wait: Duration) -> Result<Vec<Self::Claim>, QueueError>;

    /// Renews this process's lease and says how fresh it is.
    ///
    /// # Errors
    /// [`QueueError`] when the renewal cannot be attempted at all.
    fn heartbeat(&self) -> Result<LeaseHealth, QueueError>;

    /// Takes back the claims of owners whose lease expired; returns how many.
    ///
    /// # Errors
    /// [`QueueError`] when the claims cannot be listed.
    fn reclaim_expired(&self) -> Result<usize, QueueError>;
}

/// One claimed message. Dropping a claim without settling it leaves it claimed until the
/// lease expires (a crash looks the same); settle with [`Settlement::Release`] to give it back.
pub trait Claim: Send {
    /// The queue id.
    fn id(&self) -> &str;
    /// The spool header: envelope, priority, times.
    fn header(&self) -> &SpoolHeader;
    /// The dispatcher state so far (default for a first attempt).
    fn state(&self) -> &MessageState;
    /// Length of the message in bytes.
    fn body_len(&self) -> u64;
    /// A fresh stream over the message bytes (one per attempt).
    ///
    /// # Errors
    /// [`QueueError`] when the body cannot be opened.
    fn body(&self) -> Result<Box<dyn Read + Send + '_>, QueueError>;
    /// The fence: `true` while no other owner can have taken the message back (the claim
    /// still exists under this owner and the lease is fresh). Checked right before DATA.
    fn still_mine(&self) -> bool;
    /// Records how the attempt ended and lets the message go.
    ///
    /// # Errors
    /// [`SettleError::LostClaim`] when another owner took it back (nothing changed);
    /// [`SettleError::Queue`] when it could not be written (keep the claim, retry).
    fn settle(self, outcome: Settlement) -> Result<(), SettleError>
    where
        Self: Sized;
}
