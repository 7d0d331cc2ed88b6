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

/// One of a relay's fleet-wide connection slots, as [`RelayLimits::fleet_slot`] hands it out:
/// an owned guard, released when dropped. The engine keeps it with the SMTP session it was
/// taken for and drops it right after that session ends (QUIT, an error, the end of
/// `max_messages_per_connection`, idle close), never before.
pub struct FleetSlot {
    _guard: Box<dyn Send>,
}

impl FleetSlot {
    /// Wraps the backend's guard (whose `Drop` gives the slot back).
    pub fn new(guard: impl Send + 'static) -> FleetSlot {
        FleetSlot {
            _guard: Box::new(guard),
        }
    }
}

impl std::fmt::Debug for FleetSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetSlot")
    }
}

/// The answer of [`RelayLimits::fleet_token`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateDecision {
    /// A token was taken: send one message now.
    Granted,
    /// The bucket is empty: ask again after this long.
    Wait(Duration),
}

/// The token bucket's burst for a rate of `per_sec` messages a second: `max(1, per_sec / 20)`
/// tokens, i.e. at most 50 ms of saved-up sending.
///
/// Over any interval of `T` seconds a bucket grants at most `burst + per_sec × T` tokens, so
/// this burst keeps every 1 s window within `1.05 × per_sec` (for `per_sec ≥ 20`; below that
/// a single message is the granularity) and every 10 s window within `10.05 × per_sec`:
/// inside the 10 % the fleet limit promises (issue 12: "≤ 50 × 1.1 over 10 s"), with the
/// rest left for the time between a grant and the relay's reply. A larger burst would let a
/// fleet that was idle send a burst above the rate a relay's own limiter counts in; a burst
/// of exactly 1 loses tokens whenever no worker asks within one interval.
pub fn rate_burst(per_sec: f64) -> f64 {
    (per_sec / 20.0).max(1.0)
}

/// Fleet-wide relay limits: `max_connections` and `max_messages_per_second` of a relay held
/// together by every dispatcher sharing a queue, not per process (issue 12). The PostgreSQL
/// queue implements it ([`postgres::PgQueue`]: session advisory locks as connection slots, a
/// token bucket row in database time); the directory spool has none, and its dispatchers keep
/// the per-process limits of [`crate::relay::RelayPool`] alone.
///
/// A relay is known by its configured `name` (default `host:port`): dispatchers that share a
/// queue must name a relay the same way to share its limits.
///
/// The engine falls back to the per-process limits while an implementation answers
/// [`QueueError`] (see [`FallbackLimits`]).
pub trait RelayLimits: Send + Sync + 'static {
    /// Takes a free one of `relay`'s `max` fleet-wide connection slots, held until the
    /// returned guard drops; `Ok(None)` when all `max` are held (by any process).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the backend cannot be reached.
    fn fleet_slot(&self, relay: &str, max: u32) -> Result<Option<FleetSlot>, QueueError>;

    /// Takes one token of `relay`'s fleet-wide bucket (`per_sec` tokens a second, at most
    /// `burst ≥ 1` saved up): [`RateDecision::Granted`] means one message may be sent now.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the backend cannot be reached; [`QueueError::Corrupt`]
    /// (field `rate`) for a rate or burst that is not positive and finite.
    fn fleet_token(
        &self,
        relay: &str,
        per_sec: f64,
        burst: f64,
    ) -> Result<RateDecision, QueueError>;
}

/// How long [`FallbackLimits`] leaves the backend alone after it failed (no connect attempt,
/// and so no connect timeout, per message meanwhile).
pub const LIMITS_RETRY: Duration = Duration::from_secs(5);
/// At most one warning this often while the fleet-wide limits are unavailable.
pub const LIMITS_WARN_EVERY: Duration = Duration::from_secs(60);

/// [`RelayLimits`] as the engine uses them: while the backend fails (the database is down or
/// failing over), every call answers [`QueueError::Unavailable`] at once for
/// [`LIMITS_RETRY`], so the caller uses its per-process limits without waiting on the
/// network; one warning at the first failure and at most one per [`LIMITS_WARN_EVERY`] after,
/// and one line when the limits answer again.
pub struct FallbackLimits<L> {
    inner: L,
    state: std::sync::Mutex<FallbackState>,
}

#[derive(Default)]
struct FallbackState {
    /// Calls fail fast until then.
    down_until: Option<std::time::Instant>,
    /// The last warning.
    warned: Option<std::time::Instant>,
    /// Failed calls since the last warning.
    failures: u64,
}

impl<L: RelayLimits> FallbackLimits<L> {
    /// Wraps a backend.
    pub fn new(inner: L) -> FallbackLimits<L> {
        FallbackLimits {
            inner,
            state: std::sync::Mutex::new(FallbackState::default()),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, FallbackState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn call<T>(
        &self,
        relay: &str,
        f: impl FnOnce(&L) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let now = std::time::Instant::now();
        {
            let mut st = self.st();
            if st.down_until.is_some_and(|t| now < t) {
                st.failures += 1;
                return Err(QueueError::Unavailable(
                    "fleet-wide relay limits unavailable (retried shortly)".into(),
                ));
            }
        }
        let r = f(&self.inner);
        let mut st = self.st();
        match &r {
            Ok(_) => {
                if st.down_until.take().is_some() {
                    tracing::info!(
                        relay,
                        "fleet-wide relay limits answer again: max_connections and \
                         max_messages_per_second hold across the fleet again (sessions opened \
                         meanwhile take a fleet slot at their next message or close)"
                    );
                    st.warned = None;
                    st.failures = 0;
                }
            }
            // Corrupt (a rate the configuration check let through) is treated alike: this
            // process's own limits, and a warning a minute
            Err(e) => {
                st.down_until = Some(now + LIMITS_RETRY);
                st.failures += 1;
                if st.warned.is_none_or(|t| t.elapsed() >= LIMITS_WARN_EVERY) {
                    tracing::warn!(relay, error = %e, calls = st.failures,
                        "fleet-wide relay limits unavailable: falling back to this \
                         dispatcher's own max_connections and max_messages_per_second (the \
                         fleet together may exceed them until the database answers)");
                    st.warned = Some(now);
                    st.failures = 0;
                }
            }
        }
        r
    }
}

impl<L: RelayLimits> RelayLimits for FallbackLimits<L> {
    fn fleet_slot(&self, relay: &str, max: u32) -> Result<Option<FleetSlot>, QueueError> {
        self.call(relay, |l| l.fleet_slot(relay, max))
    }

    fn fleet_token(
        &self,
        relay: &str,
        per_sec: f64,
        burst: f64,
    ) -> Result<RateDecision, QueueError> {
        self.call(relay, |l| l.fleet_token(relay, per_sec, burst))
    }
}
