//! The fence answered from the lease (`docs/scale-out.md`, "The fence").
//!
//! [`crate::queue::Claim::still_mine`] is asked right before the end-of-data of every message.
//! Asking the database costs a round trip per message (about a tenth of the end-to-end CPU).
//! It can be answered here instead, from the lease alone, while five things hold:
//!
//! 1. **The claim was made under the current lease registration** ([`LeaseEpoch`]). A lease
//!    re-registered after its connection broke may follow a takeback of the old one.
//! 2. **The last renewal was sent less than [`super::PgOptions::local_fence_window`] ago**,
//!    measured on `CLOCK_BOOTTIME` ([`BootTime`]): it goes on while the process is stopped
//!    (SIGSTOP) and while the machine is suspended, which `Instant` does not.
//! 3. **The claim is younger than half a lease**, so this process's own orphan release
//!    (rows claimed more than a lease ago that no worker holds) cannot have touched it.
//! 4. **The claim and the renewal were made on the same server** ([`ServerId`]: its start
//!    time, address and port), so a lease renewed on an old primary that is still writable
//!    (split brain) cannot vouch for a claim made on the promoted standby.
//! 5. **No dispatcher of schema version 1 holds a lease** (a row with a NULL grace): those
//!    take lock-less leases back at once. The renewal answers that, and writes this owner's
//!    grace again.
//!
//! Why that is safe: a claim is taken back only when its owner's lease row is gone, and
//! `reclaim_expired` deletes a row only when its `renewed` (database time, written at or after
//! the renewal was sent) is older than the lease, or, when its advisory lock is gone too, older
//! than the `fence_grace_ms` the row itself carries: three windows. Every dispatcher reads the
//! grace from the row, and the expiry of a row whose lock is held waits for it too (a peer
//! with a shorter lease cannot shorten it). Between the window and the grace lie two windows
//! of margin for clock rates, for a forward step of the database server's clock, and, across
//! a failover, for the clocks of the old and the new primary. Outside these conditions the
//! database is asked, as before.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

/// A reading of `CLOCK_BOOTTIME` (Linux; `CLOCK_MONOTONIC` elsewhere): a monotonic clock that
/// also counts the time the machine was suspended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct BootTime(Duration);

impl BootTime {
    /// Now.
    pub(crate) fn now() -> BootTime {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let id = rustix::time::ClockId::Boottime;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let id = rustix::time::ClockId::Monotonic;
        let t = rustix::time::clock_gettime(id);
        BootTime(Duration::new(
            t.tv_sec.max(0) as u64,
            t.tv_nsec.clamp(0, 999_999_999) as u32,
        ))
    }

    /// How long ago `self` was (zero if it is in the future).
    pub(crate) fn elapsed(self) -> Duration {
        BootTime::now().0.saturating_sub(self.0)
    }
}

/// Which registration of this process's lease a claim was made under: bumped every time the
/// lease row is registered anew (the first heartbeat, and after its connection broke).
pub(crate) type LeaseEpoch = u64;

/// Which database server a connection reached: a hash of [`SERVER_IDENTITY`]'s text.
pub(crate) type ServerId = u64;

/// An SQL expression naming the server a connection reached: its start time, address and
/// port (a promoted standby differs from the old primary in all three; no privilege needed).
pub(crate) const SERVER_IDENTITY: &str = "pg_postmaster_start_time()::text || ' ' || \
     coalesce(host(inet_server_addr()), 'socket') || ':' || \
     coalesce(inet_server_port(), 0)::text";

/// The [`ServerId`] of [`SERVER_IDENTITY`]'s text.
pub(crate) fn server_id(identity: &str) -> ServerId {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    identity.hash(&mut h);
    h.finish()
}

/// What this process knows of its own lease, for the local fence.
#[derive(Debug, Default)]
pub(crate) struct LocalLease {
    /// The current registration.
    pub(crate) epoch: LeaseEpoch,
    /// When the last renewal that succeeded under `epoch` was sent (read before the
    /// statement left); `None` after a failed one, or while a version-1 dispatcher holds a
    /// lease.
    pub(crate) renewal_sent: Option<BootTime>,
    /// The server the lease connection reached.
    pub(crate) server: Option<ServerId>,
}

/// When and under which registration a claim statement was sent: read before it left.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClaimedUnder {
    pub(crate) epoch: LeaseEpoch,
    pub(crate) sent: BootTime,
    /// The server the claim's connection reached.
    pub(crate) server: ServerId,
}

/// How the fences of a [`super::PgQueue`] were answered so far ([`super::PgQueue::fences`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FenceCounts {
    /// Answered from the lease, without a statement.
    pub by_lease: u64,
    /// Answered by the database (`SELECT 1 … WHERE id AND owner AND claims`).
    pub by_database: u64,
}

#[derive(Debug, Default)]
pub(crate) struct FenceCounters {
    by_lease: AtomicU64,
    by_database: AtomicU64,
    /// The exported counters (`qmail_queue_fences_total{answer}`: lease, database), once
    /// [`super::PgQueue::export_fences`] set them.
    exported: OnceLock<[Counter; 2]>,
}

impl FenceCounters {
    pub(crate) fn count(&self, by_lease: bool) {
        let c = if by_lease {
            &self.by_lease
        } else {
            &self.by_database
        };
        c.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.exported.get() {
            e[usize::from(!by_lease)].inc();
        }
    }

    /// Counts into `counters` (`[lease, database]`) too from now on; the first call wins.
    pub(crate) fn export(&self, counters: [Counter; 2]) {
        let _ = self.exported.set(counters);
    }

    pub(crate) fn get(&self) -> FenceCounts {
        FenceCounts {
            by_lease: self.by_lease.load(Ordering::Relaxed),
            by_database: self.by_database.load(Ordering::Relaxed),
        }
    }
}

/// Whether a claim made under `claimed` may be fenced from the lease now, for a lease of
/// `lease` and a local window of `window`: conditions 1 to 4 of this module (5 is in
/// `local.renewal_sent`, `None` while a version-1 dispatcher holds a lease).
pub(crate) fn locally_fenced(
    local: &LocalLease,
    claimed: ClaimedUnder,
    window: Duration,
    lease: Duration,
) -> bool {
    if window.is_zero() || claimed.epoch != local.epoch || local.server != Some(claimed.server) {
        return false;
    }
    let Some(sent) = local.renewal_sent else {
        return false;
    };
    sent.elapsed() < window && claimed.sent.elapsed() < lease / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn under(epoch: LeaseEpoch) -> ClaimedUnder {
        ClaimedUnder {
            epoch,
            sent: BootTime::now(),
            server: 7,
        }
    }

    #[test]
    fn only_a_fresh_renewal_of_the_claims_own_registration_fences() {
        let lease = Duration::from_secs(30);
        let w = Duration::from_secs(1);
        let fresh = LocalLease {
            epoch: 3,
            renewal_sent: Some(BootTime::now()),
            server: Some(7),
        };
        assert!(locally_fenced(&fresh, under(3), w, lease));
        let elsewhere = LocalLease {
            server: Some(8),
            ..fresh
        };
        assert!(
            !locally_fenced(&elsewhere, under(3), w, lease),
            "renewed on another server than the claim's"
        );
        assert!(
            !locally_fenced(&fresh, under(2), w, lease),
            "claimed under an older registration"
        );
        assert!(
            !locally_fenced(&fresh, under(3), Duration::ZERO, lease),
            "a window of zero always asks the database"
        );
        let failed = LocalLease {
            epoch: 3,
            renewal_sent: None,
            server: Some(7),
        };
        assert!(!locally_fenced(&failed, under(3), w, lease));
        let old = LocalLease {
            epoch: 3,
            renewal_sent: Some(BootTime(BootTime::now().0.saturating_sub(w))),
            server: Some(7),
        };
        assert!(!locally_fenced(&old, under(3), w, lease), "renewal too old");
        let long_ago = ClaimedUnder {
            epoch: 3,
            sent: BootTime(BootTime::now().0.saturating_sub(lease / 2)),
            server: 7,
        };
        assert!(
            !locally_fenced(&fresh, long_ago, w, lease),
            "claims older than half a lease ask the database"
        );
    }

    #[test]
    fn boot_time_moves_forward() {
        let a = BootTime::now();
        let b = BootTime::now();
        assert!(b >= a);
        assert!(a.0 > Duration::ZERO);
    }
}
