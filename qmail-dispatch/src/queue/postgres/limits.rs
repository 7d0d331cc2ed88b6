//! Fleet-wide relay limits: what every dispatcher sharing the queue respects together.
//!
//! - `max_connections` per relay: slot `i` of relay `R` is the session advisory lock
//!   `(key(SCHEMA:slot:R), i)`, taken with `pg_try_advisory_lock` on this process's limits
//!   connection. A process that dies (or whose connection drops) frees its slots at once.
//! - messages per second per relay: a token bucket row in `SCHEMA.rate`, refilled and taken
//!   in one statement under the row lock, in database time (`clock_timestamp()`).
//!
//! Both are the queue's [`RelayLimits`], which the route of a queue dispatcher uses (through
//! [`crate::queue::FallbackLimits`]: the per-process limits while the database is down).

use std::sync::Arc;
use std::time::Duration;

use super::{Inner, PgQueue, advisory_key, db_error, lock};
pub use crate::queue::RateDecision;
use crate::queue::{FleetSlot, QueueError, RelayLimits};

/// One of a relay's fleet-wide connection slots; released when dropped.
pub struct ConnectionSlot {
    inner: Arc<Inner>,
    key: (i32, i32),
    /// The backend process of the limits session that holds the lock: the unlock runs only
    /// in that session (after a reconnect the lock went with the old one, and the same key
    /// may be another slot's now).
    backend: i32,
}

impl std::fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSlot")
            .field("slot", &self.key.1)
            .finish()
    }
}

impl ConnectionSlot {
    /// Which slot (0-based) of the relay this is.
    pub fn index(&self) -> i32 {
        self.key.1
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = lock(&self.inner.limits);
        let Some(client) = c.as_mut().filter(|c| !c.is_closed()) else {
            // the session ended, and its locks with it; a new one cleared `held_slots`
            return;
        };
        let same_session = client.query_opt(
            "SELECT pg_advisory_unlock($1, $2) WHERE pg_backend_pid() = $3",
            &[&self.key.0, &self.key.1, &self.backend],
        );
        if let Ok(Some(_)) = same_session {
            lock(&self.inner.held_slots).remove(&self.key);
        }
    }
}

impl PgQueue {
    /// Takes a free connection slot of `relay` among `max` fleet-wide, or `None` when all
    /// are held (by this or other processes). Hold the slot for the SMTP session.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the database cannot be reached (the caller decides:
    /// the route falls back to its per-process limit).
    pub fn connection_slot(
        &self,
        relay: &str,
        max: u32,
    ) -> Result<Option<ConnectionSlot>, QueueError> {
        let ns = advisory_key(&self.inner.s, &format!("slot:{relay}"));
        let mut guard = lock(&self.inner.limits);
        let mut fresh = false;
        loop {
            if guard.as_ref().is_none_or(|c| c.is_closed()) {
                // a new session holds none of the old one's locks
                lock(&self.inner.held_slots).clear();
                // keepalives and tcp_user_timeout as every connection (db.rs): a dead
                // server is noticed in seconds
                *guard = Some(self.inner.db.connect()?);
                fresh = true;
            }
            let Some(client) = guard.as_mut() else {
                return Err(QueueError::Unavailable("no limits connection".into()));
            };
            match self.try_slots(client, ns, max) {
                Ok(got) => return Ok(got),
                // the session died since the last call (a restart, a failover): once more on
                // a new one
                Err(_) if !fresh && client.is_closed() => continue,
                Err(e) => return Err(db_error(e)),
            }
        }
    }

    /// Tries slots `0..max` of `ns` on the limits session `client`, skipping those this
    /// process holds.
    fn try_slots(
        &self,
        client: &mut postgres::Client,
        ns: i32,
        max: u32,
    ) -> Result<Option<ConnectionSlot>, postgres::Error> {
        for i in 0..max.min(i32::MAX as u32) as i32 {
            if lock(&self.inner.held_slots).contains(&(ns, i)) {
                continue;
            }
            let row = client.query_one(
                "SELECT pg_try_advisory_lock($1, $2), pg_backend_pid()",
                &[&ns, &i],
            )?;
            if row.get::<_, bool>(0) {
                lock(&self.inner.held_slots).insert((ns, i));
                return Ok(Some(ConnectionSlot {
                    inner: Arc::clone(&self.inner),
                    key: (ns, i),
                    backend: row.get(1),
                }));
            }
        }
        Ok(None)
    }

    /// Takes one token from `relay`'s fleet-wide bucket: `per_sec` tokens a second, at most
    /// `burst` (≥ 1) saved up. Over any interval T the fleet is granted at most
    /// `burst + per_sec × T` tokens.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`]; [`QueueError::Corrupt`] (field `rate`) for a rate or
    /// burst that is not positive and finite.
    pub fn take_token(
        &self,
        relay: &str,
        per_sec: f64,
        burst: f64,
    ) -> Result<RateDecision, QueueError> {
        if !(per_sec.is_finite() && per_sec > 0.0 && burst.is_finite() && burst >= 1.0) {
            return Err(QueueError::Corrupt {
                id: "rate".into(),
                reason: format!(
                    "messages_per_sec = {per_sec}, burst = {burst}: need a positive rate and a \
                     burst of at least 1"
                ),
            });
        }
        let s = &self.inner.s;
        let mut c = self.inner.conn()?;
        let st = c.stmt("token", || {
            format!(
                "WITH t AS (SELECT clock_timestamp() AS now) \
                 INSERT INTO {s}.rate AS r (relay, tokens, updated) \
                 SELECT $1::text, $3::float8 - 1, t.now FROM t \
                 ON CONFLICT (relay) DO UPDATE SET \
                   tokens = least($3, r.tokens + extract(epoch FROM clock_timestamp() - r.updated) \
                            * $2::float8) - 1, \
                   updated = clock_timestamp() \
                 WHERE least($3, r.tokens + extract(epoch FROM clock_timestamp() - r.updated) \
                       * $2) >= 1 \
                 RETURNING r.tokens"
            )
        })?;
        let got = c
            .client
            .query_opt(&st, &[&relay, &per_sec, &burst])
            .map_err(db_error)?;
        if got.is_some() {
            return Ok(RateDecision::Granted);
        }
        let have: f64 = c
            .client
            .query_one(
                &format!(
                    "SELECT least($2::float8, tokens + extract(epoch FROM clock_timestamp() - updated) \
                     * $3::float8)::float8 FROM {s}.rate WHERE relay = $1"
                ),
                &[&relay, &burst, &per_sec],
            )
            .map_err(db_error)?
            .get(0);
        let wait = ((1.0 - have).max(0.0) / per_sec).clamp(0.001, 60.0);
        Ok(RateDecision::Wait(Duration::from_secs_f64(wait)))
    }
}

/// The PostgreSQL queue's fleet-wide limits: [`PgQueue::connection_slot`] and
/// [`PgQueue::take_token`].
impl RelayLimits for PgQueue {
    fn fleet_slot(&self, relay: &str, max: u32) -> Result<Option<FleetSlot>, QueueError> {
        Ok(self.connection_slot(relay, max)?.map(FleetSlot::new))
    }

    fn fleet_token(
        &self,
        relay: &str,
        per_sec: f64,
        burst: f64,
    ) -> Result<RateDecision, QueueError> {
        self.take_token(relay, per_sec, burst)
    }
}
