//! Relay choice within one attempt: failover, connection limits, reconnection of a dead
//! reused connection, and relays that cannot take this message (SIZE, 8BITMIME, SMTPUTF8).
//!
//! # Fleet-wide limits (a dispatcher on a shared queue, issue 12)
//! When [`Shared::limits`] is set, a relay's `max_connections` and `max_messages_per_second`
//! hold across every dispatcher of the queue ([`crate::queue::RelayLimits`]), on top of this
//! process's own limits ([`crate::relay::RelayPool`]):
//! - a fresh session takes this process's slot, then a fleet slot; with none free the relay
//!   counts as at its connection limit: another relay of the same priority is tried, else the
//!   worker waits (asking again after 10 ms, doubling to 50 ms) and defers the message after
//!   [`LIMIT_WAIT`]. The fleet slot is kept with the session in [`Worker::fleet`] and given
//!   back right after the session closes (QUIT at `max_messages_per_connection` or idle
//!   close, abort after an error). After `max_messages_per_connection` the worker leaves the
//!   slot to the others for [`FLEET_HANDOVER`] before asking again, so the slots pass
//!   between dispatchers.
//! - every transaction, on a fresh or a reused session, first takes a fleet token when the
//!   relay has a rate ([`crate::queue::rate_burst`] sets the bucket's burst). The worker
//!   waits for it holding its claim (the lease thread keeps renewing) and its session, never
//!   a lock, for at most [`LIMIT_WAIT`] (then the message is deferred).
//! - a dispatcher that stops while waiting gives the message back untouched at once
//!   ([`STOPPING_RELAY`]: nothing was sent).
//! - while the queue cannot answer (the database is down), this process's own limits apply
//!   alone (one warning a minute, [`crate::queue::FallbackLimits`]); a session opened then
//!   takes a fleet slot at its next message once the queue answers, or closes when none is
//!   free.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::dispatcher::Shared;
use crate::queue::{FleetSlot, RateDecision, rate_burst};
use crate::smtp::{BodyError, Session, Transaction, TxError};
use crate::worker::Worker;
use crate::*;

/// The relay name an attempt reports when the dispatcher stopped while the attempt waited for
/// a relay's limit (nothing was sent; the message is given back untouched).
pub(crate) const STOPPING_RELAY: &str = "(stopping)";

/// The longest a message waits for a relay at its connection limit (this process's or the
/// fleet's), or for a fleet-wide rate token, before the attempt is deferred.
pub(crate) const LIMIT_WAIT: Duration = Duration::from_secs(30);

/// How long a worker whose session ended at `max_messages_per_connection` leaves the fleet
/// slot it gave back to the others before asking for one again (waiters ask at least this
/// often, [`fleet_backoff`]): without it the worker that just closed would always win.
const FLEET_HANDOVER: Duration = Duration::from_millis(50);

/// A fleet-wide connection slot for a new session.
enum FleetGate {
    /// Taken: keep it with the session.
    Held(FleetSlot),
    /// Every slot is held by some dispatcher.
    Full,
    /// No fleet-wide limit applies (directory spool, `max_connections = 0`), or the queue
    /// cannot answer (this process's limit alone).
    Unlimited,
}

/// Whether a transaction may start now (its rate token).
enum RateGate {
    Go,
    Stopped,
    TimedOut,
}

/// How one attempt through the relays ended.
#[derive(Debug)]
pub(crate) struct Routed {
    /// The relay used last (its name), `local` (refused before any relay) or `none`.
    pub(crate) relay: String,
    /// One result per recipient.
    pub(crate) results: Vec<RcptResult>,
    /// Why the message was refused for good, when it was (the state file's `reason`).
    pub(crate) refused: Option<String>,
}

impl Shared {
    /// Sends through the relays: failover to the next relay when one cannot be used or cannot
    /// take this message, reconnection (not counted) when a reused connection turns out dead.
    pub(crate) fn via_relays(
        &self,
        w: &mut Worker,
        msg: &crate::worker::Outgoing<'_>,
        small: Option<&[u8]>,
        rcpts: &[String],
        summary: content::ContentSummary,
        next: Option<&dyn Fn() -> Option<crate::smtp::NextTx>>,
    ) -> Routed {
        let env = msg.envelope;
        let all = |st: RcptStatus, reply: &Reply| -> Vec<RcptResult> {
            rcpts
                .iter()
                .map(|r| RcptResult {
                    rcpt: r.clone(),
                    status: st,
                    reply: reply.clone(),
                })
                .collect()
        };
        let routed = |relay: String, results: Vec<RcptResult>| Routed {
            relay,
            results,
            refused: None,
        };
        let mut tried: Vec<usize> = Vec::new();
        let mut last: Option<(String, Reply)> = None;
        // a relay that cannot take this message (too big, needs an extension): permanent
        // unless another relay takes it
        let mut unfit: Option<(String, Reply)> = None;
        let mut reconnects = 0;
        // waiting at connection limits since; relays at their fleet-wide limit (not asked
        // again before the instant; consecutive refusals)
        let mut waiting: Option<Instant> = None;
        let mut full: HashMap<usize, (Instant, u32)> = HashMap::new();
        let stoppable = self.limits.is_some();
        let stopped = || Routed {
            relay: STOPPING_RELAY.into(),
            results: all(
                RcptStatus::Deferred,
                &Reply::local("the dispatcher is stopping"),
            ),
            refused: None,
        };
        loop {
            let now = Instant::now();
            // a session that already carries this message's commands (chained behind the
            // last end-of-data, `Transaction::next`) is used first: any other send on it
            // abandons it
            let preissued = w
                .sessions
                .iter()
                .find(|(i, (s, _))| s.has_preissued() && !tried.contains(i))
                .map(|(i, _)| *i);
            let i = match preissued.map(|i| Some(Ok(i))).unwrap_or_else(|| {
                self.pool.select(
                    &tried,
                    |i| w.sessions.contains_key(&i),
                    |i| full.get(&i).is_some_and(|(t, _)| now < *t),
                    &mut w.rng,
                )
            }) {
                None => {
                    if let Some((name, reply)) = unfit {
                        return routed(name, all(RcptStatus::Failed, &reply));
                    }
                    let (name, reply) = last.unwrap_or_else(|| {
                        ("none".into(), Reply::local("every relay is in cooldown"))
                    });
                    return routed(name, all(RcptStatus::Deferred, &reply));
                }
                Some(Err(())) => {
                    if stoppable && self.stopping.load(Ordering::SeqCst) {
                        return stopped();
                    }
                    if waiting.get_or_insert(now).elapsed() > LIMIT_WAIT {
                        return routed(
                            "none".into(),
                            all(
                                RcptStatus::Deferred,
                                &Reply::local("every relay is at its connection limit"),
                            ),
                        );
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Some(Ok(i)) => i,
            };
            let relay = &self.pool.relays[i];
            let name = relay.endpoint.cfg.name.clone();
            if let Some((s, _)) = w.sessions.get(&i)
                && s.transactions >= relay.endpoint.cfg.max_messages_per_connection
            {
                let had_fleet_slot = w.fleet.contains_key(&i);
                self.drop_session(w, i, true);
                if had_fleet_slot {
                    // hand the slot over: a dispatcher waiting for one asks within
                    // FLEET_HANDOVER, so this worker does not simply take it back
                    full.insert(i, (Instant::now() + FLEET_HANDOVER, 0));
                    continue;
                }
            }
            if w.sessions.contains_key(&i) && !w.fleet.contains_key(&i) {
                // a session opened while the queue could not answer: it takes a fleet slot
                // now, or closes when none is free
                match self.fleet_slot(i) {
                    FleetGate::Held(slot) => {
                        w.fleet.insert(i, slot);
                    }
                    FleetGate::Full => {
                        self.drop_session(w, i, true);
                        continue;
                    }
                    FleetGate::Unlimited => {}
                }
            }
            let fresh = !w.sessions.contains_key(&i);
            if fresh {
                if !self.pool.take_slot(i) {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let slot = match self.fleet_slot(i) {
                    FleetGate::Held(slot) => Some(slot),
                    FleetGate::Unlimited => None,
                    FleetGate::Full => {
                        // like this process's limit: another relay, or wait (select)
                        self.pool.give_slot(i);
                        let e = full.entry(i).or_insert((now, 0));
                        e.1 = e.1.saturating_add(1);
                        e.0 = Instant::now() + fleet_backoff(e.1);
                        continue;
                    }
                };
                full.remove(&i);
                match Session::open(&relay.endpoint, self.cfg.ehlo(), &self.cfg.timeouts) {
                    Ok(s) => {
                        self.metrics.relay_connection(&name, true);
                        w.sessions.insert(i, (s, Instant::now()));
                        if let Some(slot) = slot {
                            w.fleet.insert(i, slot);
                        }
                    }
                    Err(e) => {
                        drop(slot);
                        self.pool.give_slot(i);
                        if e.relay_fault {
                            self.pool.cool_down(i);
                        }
                        let reply = e.reply();
                        tracing::warn!(relay = %name, reply = %reply, "relay unusable; trying the next one");
                        self.metrics.relay_connection(&name, false);
                        tried.push(i);
                        last = Some((name, reply));
                        continue;
                    }
                }
            }
            match self.rate_gate(w, i) {
                RateGate::Go => {}
                RateGate::Stopped => return stopped(),
                RateGate::TimedOut => {
                    return routed(
                        name,
                        all(
                            RcptStatus::Deferred,
                            &Reply::local(format!(
                                "no fleet-wide rate token for this relay within {} s",
                                LIMIT_WAIT.as_secs()
                            )),
                        ),
                    );
                }
            }
            let body: Box<dyn io::Read> = match small {
                Some(b) => Box::new(b),
                None => match (msg.open_body)() {
                    Ok(b) => b,
                    Err(e) => {
                        return routed(
                            name,
                            all(RcptStatus::Deferred, &Reply::local(e.to_string())),
                        );
                    }
                },
            };
            let tx = Transaction {
                mail_from: &env.mail_from,
                rcpts,
                smtputf8: env.smtputf8,
                eight_bit: summary.eight_bit || env.eightbitmime,
                body_len: msg.body_len,
                ends_with_crlf: summary.ends_with_crlf,
                fence: msg.fence,
                checked: small.is_some(),
                prefix: msg.prefix,
                next: None,
            };
            let Some((session, used)) = w.sessions.get_mut(&i) else {
                continue;
            };
            // chained only where nothing must happen between two transactions and the next
            // message would come to this relay anyway: no rate (its token or pacing comes
            // before MAIL), no fleet-wide limits, no per-message prefix (DKIM: SIZE= counts
            // it), no other relay to spread over or fail over to at this priority, and the
            // next one still under max_messages_per_connection
            let cfg = &relay.endpoint.cfg;
            let chain = cfg.max_messages_per_second <= 0.0
                && self.pool.sole_choice(i)
                && self.limits.is_none()
                && msg.prefix.is_empty()
                && session.transactions.saturating_add(1) < cfg.max_messages_per_connection;
            let tx = Transaction {
                next: next.filter(|_| chain),
                ..tx
            };
            let res = session.send(&tx, body);
            *used = Instant::now();
            match res {
                Ok(results) => {
                    let n = results
                        .iter()
                        .filter(|r| r.status == RcptStatus::Delivered)
                        .count();
                    if n > 0 {
                        relay.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    return routed(name, results);
                }
                Err(e @ (TxError::TooBig { .. } | TxError::Unsupported(_))) => {
                    // nothing was sent; the session stays open for other messages
                    tracing::info!(relay = %name, reason = %e, "relay cannot take this message; trying the next one");
                    tried.push(i);
                    unfit = Some((name, Reply::local(e.to_string())));
                }
                Err(TxError::DiedBefore(err)) => {
                    self.drop_session(w, i, false);
                    let reply = err.reply();
                    if !fresh && reconnects < 2 {
                        reconnects += 1;
                        tracing::debug!(relay = %name, reply = %reply, "reused connection is dead; reconnecting");
                        continue;
                    }
                    if matches!(err, crate::smtp::SmtpError::Protocol { .. }) {
                        self.pool.cool_down(i);
                    }
                    return routed(name, all(RcptStatus::Deferred, &reply));
                }
                Err(TxError::DiedAfterData(results)) => {
                    self.drop_session(w, i, false);
                    return routed(name, results);
                }
                Err(TxError::Body(BodyError::Refused(why))) => {
                    self.drop_session(w, i, false);
                    let reason = format!(
                        "refused: the message has a {why} (never sent: SMTP smuggling guard)"
                    );
                    return Routed {
                        relay: "local".into(),
                        results: all(RcptStatus::Failed, &Reply::local(reason.clone())),
                        refused: Some(reason),
                    };
                }
                Err(TxError::Body(BodyError::Read(e))) => {
                    self.drop_session(w, i, false);
                    return routed(name, all(RcptStatus::Deferred, &Reply::local(e)));
                }
                Err(TxError::Fenced) => {
                    // nothing was delivered; the claim may be someone else's now
                    self.drop_session(w, i, false);
                    return routed(
                        crate::worker::FENCED_RELAY.into(),
                        all(
                            RcptStatus::Deferred,
                            &Reply::local(
                                "abandoned before end-of-data: the claim may have been taken back",
                            ),
                        ),
                    );
                }
            }
        }
    }
}

/// The pause before asking again for a fleet slot of a relay found full `n` times in a row:
/// 10 ms doubling to 50 ms (a waiting worker asks the database at most 100 times a second,
/// and notices a freed slot within 50 ms).
fn fleet_backoff(n: u32) -> Duration {
    Duration::from_millis((10u64 << n.saturating_sub(1).min(3)).min(50))
}

impl Shared {
    /// A fleet-wide connection slot of relay `i` for a new session (see the module docs).
    fn fleet_slot(&self, i: usize) -> FleetGate {
        let Some(limits) = &self.limits else {
            return FleetGate::Unlimited;
        };
        let cfg = &self.pool.relays[i].endpoint.cfg;
        if cfg.max_connections == 0 {
            return FleetGate::Unlimited;
        }
        let max = u32::try_from(cfg.max_connections).unwrap_or(u32::MAX);
        match limits.fleet_slot(&cfg.name, max) {
            Ok(Some(slot)) => FleetGate::Held(slot),
            Ok(None) => FleetGate::Full,
            // logged by FallbackLimits (rate-limited): this process's limit alone
            Err(_) => FleetGate::Unlimited,
        }
    }

    /// Waits until one more message may go to relay `i`: a fleet-wide token when the queue
    /// has limits and answers, else this process's pacing ([`crate::relay::RelayPool::pace`]).
    /// The wait is bounded by the stop flag and [`LIMIT_WAIT`]; nothing is locked meanwhile.
    fn rate_gate(&self, w: &mut Worker, i: usize) -> RateGate {
        let cfg = &self.pool.relays[i].endpoint.cfg;
        let rate = cfg.max_messages_per_second;
        let Some(limits) = self.limits.as_ref().filter(|_| rate > 0.0) else {
            self.pool.pace(i);
            return RateGate::Go;
        };
        let t0 = Instant::now();
        loop {
            match limits.fleet_token(&cfg.name, rate, rate_burst(rate)) {
                Ok(RateDecision::Granted) => return RateGate::Go,
                Ok(RateDecision::Wait(d)) => {
                    if self.stopping.load(Ordering::SeqCst) {
                        return RateGate::Stopped;
                    }
                    if t0.elapsed() > LIMIT_WAIT {
                        return RateGate::TimedOut;
                    }
                    // up to twice the bucket's estimate, so waiters do not ask in step
                    let ms = d.as_millis().clamp(1, 20) as u64;
                    let pause = Duration::from_millis(ms + w.rng.below(ms + 1));
                    std::thread::sleep(pause.min(Duration::from_millis(20)));
                }
                Err(_) => {
                    // logged by FallbackLimits (rate-limited): this process's pacing alone
                    self.pool.pace(i);
                    return RateGate::Go;
                }
            }
        }
    }
}
