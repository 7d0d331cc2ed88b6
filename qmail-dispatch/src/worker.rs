//! A worker thread: claim a message, make one attempt, settle the outcome.
//!
//! The attempt ([`Shared::attempt`]) works over any [`Claim`] (the directory spool's
//! [`DirClaim`], or a database row): it never sees a path of the queue, only the claim's id,
//! header, state, body and fence. Where the message goes afterwards is the claim's
//! [`Claim::settle`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qmail_core::Envelope;
use qmail_core::spool::{SpoolHeader, now_secs};

use crate::clock;
use crate::dispatcher::Shared;
use crate::queue::dir::{Closer, DirClaim, DirCtx, Taken};
use crate::queue::{Claim, QueueError, SettleError, Settlement};
use crate::retry::Jitter;
use crate::schedule::{Candidate, Dir, Pop};
use crate::smtp::Session;
use crate::*;

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The relay name an attempt reports when its fence failed (nothing was sent).
pub(crate) const FENCED_RELAY: &str = "(fenced)";

/// What the relay layer needs of a message, whichever queue it came from.
pub(crate) struct Outgoing<'a> {
    /// The envelope (already checked with `check_wire_safe`).
    pub(crate) envelope: &'a Envelope,
    /// Length of the message in bytes.
    pub(crate) body_len: u64,
    /// A fresh stream over the message (one per transaction).
    pub(crate) open_body: &'a dyn Fn() -> io::Result<Box<dyn io::Read + 'a>>,
    /// The claim's fence (contract C1).
    pub(crate) fence: &'a dyn Fn() -> bool,
    /// Bytes sent before the message inside DATA (contract C1).
    pub(crate) prefix: &'a [u8],
}

/// One attempt's result: where the message goes, and the recipients that just failed (for
/// the DSN).
pub(crate) struct AttemptOutcome {
    pub(crate) settlement: Settlement,
    pub(crate) newly_failed: Vec<FailedRcpt>,
}

fn settlement_name(s: &Settlement) -> &'static str {
    match s {
        Settlement::Delivered(_) => "delivered",
        Settlement::Deferred { .. } => "deferred",
        Settlement::Failed(_) => "failed",
        Settlement::Corrupt(_) => "corrupt",
        Settlement::Held => "held",
        Settlement::Release => "release",
    }
}

fn id_rank(id: &str) -> i64 {
    qmail_core::QueueId::parse(id)
        .ok()
        .and_then(|q| q.created_secs())
        .unwrap_or_else(now_secs)
}

/// Counts a worker as busy (a claim in hand) while alive.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn enter(n: &'a AtomicUsize) -> Busy<'a> {
        n.fetch_add(1, Ordering::SeqCst);
        Busy(n)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A worker's open relay sessions.
pub(crate) struct Worker {
    pub(crate) sessions: HashMap<usize, (Session, Instant)>,
    /// The fleet-wide connection slot of each session that has one (queue dispatchers):
    /// removed, so given back, right after its session is closed.
    pub(crate) fleet: HashMap<usize, crate::queue::FleetSlot>,
    pub(crate) rng: Jitter,
}

impl Shared {
    pub(crate) fn worker(self: Arc<Self>) {
        let mut w = Worker {
            sessions: HashMap::new(),
            fleet: HashMap::new(),
            rng: Jitter::new(),
        };
        let idle = Duration::from_millis(self.cfg.idle_close_ms.max(10));
        loop {
            match self.queue.pop(idle) {
                Pop::Got(c) => self.process(&mut w, c),
                Pop::Idle => self.close_idle(&mut w, idle),
                Pop::Stop => break,
            }
        }
        for (i, (s, _)) in w.sessions.drain() {
            s.quit();
            self.pool.give_slot(i);
            w.fleet.remove(&i);
        }
    }

    pub(crate) fn close_idle(&self, w: &mut Worker, idle: Duration) {
        let stale: Vec<usize> = w
            .sessions
            .iter()
            .filter(|(_, (_, t))| t.elapsed() >= idle)
            .map(|(i, _)| *i)
            .collect();
        for i in stale {
            if let Some((s, _)) = w.sessions.remove(&i) {
                s.quit();
                self.pool.give_slot(i);
                w.fleet.remove(&i);
            }
        }
    }

    pub(crate) fn drop_session(&self, w: &mut Worker, i: usize, quit: bool) {
        if let Some((s, _)) = w.sessions.remove(&i) {
            if quit {
                s.quit()
            } else {
                s.abort()
            }
            self.pool.give_slot(i);
            w.fleet.remove(&i);
        }
    }

    pub(crate) fn process(&self, w: &mut Worker, c: Candidate) {
        let _busy = Busy::enter(&self.busy);
        let mut next = self.take_claim(c);
        while let Some((claim, spool_idx)) = next.take() {
            next = self.run_claim(w, claim, spool_idx);
            if next.is_none() {
                // commands chained behind the last end-of-data for a message that was not
                // sent there after all: abandon that session (no dot, nothing delivered)
                let stale: Vec<usize> = w
                    .sessions
                    .iter()
                    .filter(|(_, (s, _))| s.has_preissued())
                    .map(|(i, _)| *i)
                    .collect();
                for i in stale {
                    self.drop_session(w, i, false);
                }
            }
        }
    }

    /// Claims a candidate: `None` when it is gone, quarantined, not due (kept in memory
    /// until due) or cannot be read (logged; the worker backs off).
    fn take_claim(&self, c: Candidate) -> Option<(DirClaim, usize)> {
        let pause = *self.io_pause.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = pause {
            while Instant::now() < until && !self.queue_stopped() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let lease = Arc::clone(&self.lease_of[c.spool]);
        // a dispatcher whose own lease is not fresh claims nothing (issue 10, item 1)
        let t0 = Instant::now();
        while !lease.is_fresh() {
            if t0.elapsed() > Duration::from_secs(self.cfg.lease_secs) || self.queue_stopped() {
                tracing::warn!(id = %c.id, lease = %lease.path().display(),
                    "the lease is not fresh: not claiming (the message stays where it is)");
                if !self.drain {
                    self.queue.push_waiting(c, now_secs() + 1);
                }
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let ctx = DirCtx {
            spool: self.spools[c.spool].clone(),
            instance: self.instance.clone(),
            lease,
            durable: self.cfg.durable,
            keep_sent: self.cfg.sent_retention_secs > 0,
            stopping: Arc::clone(&self.stopping),
            io_cap: Duration::from_secs(30),
            closer: Closer::shared(),
        };
        match DirClaim::take(ctx, &c.id, c.from) {
            Ok(Taken::Claimed(cl)) => Some((*cl, c.spool)),
            Ok(Taken::Gone) => None,
            Ok(Taken::Quarantined) => {
                self.metrics.add(&self.metrics.corrupt, 1);
                None
            }
            Ok(Taken::NotDue(due)) => {
                self.wait_deferred(c.spool, &c.id, id_rank(&c.id), due);
                None
            }
            Err(e) => {
                self.io_error(&c.id, &e);
                None
            }
        }
    }

    /// The next message to chain behind the current end-of-data ([`smtp::Transaction::next`]),
    /// claimed now: the best candidate waiting, taken only when nothing would make this worker
    /// wait for it (an I/O pause, a lease not fresh). The claim goes in `slot` whatever
    /// happens (the worker attempts it next); its envelope is offered only for a small
    /// message with recipients, a wire-safe envelope and clean content.
    fn chain_next(&self, slot: &RefCell<Option<(DirClaim, usize)>>) -> Option<smtp::NextTx> {
        if slot.borrow().is_some()
            || self.queue_stopped()
            || !self.dkim.is_empty()
            || self
                .io_pause
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
            || !self.lease_of.iter().all(|l| l.is_fresh())
        {
            return None;
        }
        let Pop::Got(c) = self.queue.pop(Duration::ZERO) else {
            return None;
        };
        let (claim, spool_idx) = self.take_claim(c)?;
        let offer = chainable(&claim);
        *slot.borrow_mut() = Some((claim, spool_idx));
        offer
    }

    /// Attempts a claim and settles it; returns the claim chained behind its end-of-data,
    /// if one was.
    fn run_claim(
        &self,
        w: &mut Worker,
        claim: DirClaim,
        spool_idx: usize,
    ) -> Option<(DirClaim, usize)> {
        let id = claim.id().to_owned();
        let spool = self.spools[spool_idx].clone();
        let outbox = self.pool.is_empty().then(|| spool.join(OUTBOX_DIR));
        let created = claim.header().created;
        let slot = RefCell::new(None);
        let next = || self.chain_next(&slot);
        let attempted = self.attempt_with(w, &claim, &spool, outbox.as_deref(), Some(&next));
        let chained = slot.into_inner();
        let out = match attempted {
            Ok(o) => o,
            Err(e) => {
                // nothing was accepted: the message goes back with its old state
                self.io_error(&id, &e);
                if let Err(e) = claim.settle(Settlement::Release) {
                    tracing::warn!(id = %id, error = %e, "cannot give the claim back");
                }
                return chained;
            }
        };
        self.io_failures.store(0, Ordering::Relaxed);
        if !out.newly_failed.is_empty() && self.cfg.dsn.enabled {
            dsn::submit(&spool, &claim.file, &out.newly_failed, &self.cfg);
        }
        let due = match &out.settlement {
            Settlement::Deferred { due, .. } => Some(*due),
            _ => None,
        };
        let kind = settlement_name(&out.settlement);
        match claim.settle(out.settlement) {
            Ok(()) => {
                match kind {
                    "delivered" => self.metrics.add(&self.metrics.delivered, 1),
                    "failed" => self.metrics.add(&self.metrics.failed, 1),
                    "deferred" => self.metrics.add(&self.metrics.deferred, 1),
                    "corrupt" => self.metrics.add(&self.metrics.corrupt, 1),
                    _ => {}
                }
                if let Some(due) = due {
                    self.wait_deferred(spool_idx, &id, created, due);
                }
            }
            Err(SettleError::LostClaim) => tracing::warn!(
                id = %id,
                "the claim was taken back by another dispatcher (lease expired) before this attempt ended; its attempt decides"
            ),
            Err(SettleError::Queue(e)) => {
                tracing::error!(id = %id, error = %e, "cannot record the outcome of the attempt");
            }
        }
        chained
    }

    fn queue_stopped(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// A spool I/O error before anything was accepted: logged with the path, then this worker
    /// backs off (100 ms doubling per consecutive error, capped at 30 s) so a full disk is not
    /// hammered.
    fn io_error(&self, id: &str, e: &QueueError) {
        let n = self.io_failures.fetch_add(1, Ordering::Relaxed);
        let pause = clock::io_backoff(n, Duration::from_secs(30));
        // every worker of this dispatcher waits too before its next claim
        *self.io_pause.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + pause);
        tracing::error!(id, error = %e, backoff_ms = pause.as_millis() as u64,
            "spool I/O error; the message stays in the queue");
        let t0 = Instant::now();
        while t0.elapsed() < pause && !self.queue_stopped() {
            std::thread::sleep(Duration::from_millis(20).min(pause));
        }
    }

    /// One attempt for a claim from any queue: the envelope and content checks, the relays
    /// (or the outbox), and the outcome as a [`Settlement`]. The fence ([`Claim::still_mine`])
    /// is checked at the point of no return: right before the end-of-data (and before DATA
    /// without PIPELINING, see [`smtp::Transaction::fence`]), or before the outbox file's
    /// rename; a failed fence gives [`Settlement::Release`] with nothing delivered.
    ///
    /// # Errors
    /// [`QueueError`] when the message could not be read or written to the outbox (nothing
    /// was accepted).
    pub(crate) fn attempt<C: Claim>(
        &self,
        w: &mut Worker,
        claim: &C,
        queue: &Path,
        outbox: Option<&Path>,
    ) -> std::result::Result<AttemptOutcome, QueueError> {
        self.attempt_with(w, claim, queue, outbox, None)
    }

    /// As [`Shared::attempt`], with `next` offering the message to chain behind this one's
    /// end-of-data ([`smtp::Transaction::next`]).
    ///
    /// # Errors
    /// As [`Shared::attempt`].
    pub(crate) fn attempt_with<C: Claim>(
        &self,
        w: &mut Worker,
        claim: &C,
        queue: &Path,
        outbox: Option<&Path>,
        next: Option<&dyn Fn() -> Option<smtp::NextTx>>,
    ) -> std::result::Result<AttemptOutcome, QueueError> {
        let st = claim.state().clone();
        let header = claim.header();
        let env = &header.envelope;
        let id = claim.id();
        let rcpts: Vec<String> = st.remaining.clone().unwrap_or_else(|| env.rcpt_to.clone());
        let started = Instant::now();
        let at_ms = now_ms();
        let refuse = |reason: String| -> (String, Vec<RcptResult>, Option<String>) {
            let reply = Reply::local(reason.clone());
            let results = rcpts
                .iter()
                .map(|r| RcptResult {
                    rcpt: r.clone(),
                    status: RcptStatus::Failed,
                    reply: reply.clone(),
                })
                .collect();
            ("local".to_owned(), results, Some(reason))
        };
        let qerr = |e: io::Error| QueueError::Io {
            path: queue.join(id),
            source: e,
        };
        let fence = || claim.still_mine();
        let (relay, results, reason) = if rcpts.is_empty() {
            // nothing left to send (a crash between the state write and the final rename)
            ("local".to_owned(), Vec::new(), None)
        } else if let Err(why) = env.check_wire_safe() {
            refuse(format!("refused: bad envelope: {why}"))
        } else {
            // a small message is read once, here, and sent from memory; a large one is read
            // again, streaming, by the SMTP layer (which re-checks what it sends)
            let mut small: Option<Vec<u8>> = None;
            let body_len = claim.body_len();
            let scanned = {
                let body = claim.body()?;
                if body_len <= smtp::SMALL_BODY {
                    let mut v = Vec::with_capacity(body_len as usize);
                    io::Read::read_to_end(&mut io::Read::take(body, body_len), &mut v)
                        .map_err(qerr)?;
                    let r = content::scan_bytes(&v).map_err(Ok);
                    small = Some(v);
                    r
                } else {
                    content::scan(body)
                }
            };
            match scanned {
                Err(Ok(why)) => refuse(format!(
                    "refused: the message has a {why} (never sent: SMTP smuggling guard)"
                )),
                Err(Err(e)) => return Err(qerr(e)),
                Ok(_) if outbox.is_some() => {
                    let dir = outbox.unwrap_or(queue);
                    let (r, res) = self.to_outbox(claim, dir, &rcpts, &fence)?;
                    (r, res, None)
                }
                Ok(summary) => {
                    let open = || -> io::Result<Box<dyn io::Read + '_>> {
                        match claim.body() {
                            Ok(b) => Ok(b as Box<dyn io::Read + '_>),
                            Err(e) => Err(io::Error::other(e.to_string())),
                        }
                    };
                    // DKIM: signed once per attempt, before any relay is tried (RFC 6376)
                    match self.dkim_prefix(
                        &claim.header().message_id,
                        &open,
                        body_len,
                        small.as_deref(),
                    ) {
                        Err(e) => {
                            let reply = Reply::local(e.to_string());
                            let results = rcpts
                                .iter()
                                .map(|r| RcptResult {
                                    rcpt: r.clone(),
                                    status: RcptStatus::Deferred,
                                    reply: reply.clone(),
                                })
                                .collect();
                            ("local".to_owned(), results, None)
                        }
                        Ok(prefix) => {
                            let msg = Outgoing {
                                envelope: env,
                                body_len,
                                open_body: &open,
                                fence: &fence,
                                prefix: &prefix,
                            };
                            let r =
                                self.via_relays(w, &msg, small.as_deref(), &rcpts, summary, next);
                            (r.relay, r.results, r.refused)
                        }
                    }
                }
            }
        };
        if relay == FENCED_RELAY || relay == crate::route::STOPPING_RELAY {
            if relay == FENCED_RELAY {
                tracing::warn!(
                    id,
                    "fence: the claim may have been taken back (lease not fresh, or the claim is gone); nothing was sent, the message is given back"
                );
            } else {
                tracing::info!(
                    id,
                    "stopping while waiting for a relay's limit: nothing was sent, the message is given back"
                );
            }
            return Ok(AttemptOutcome {
                settlement: Settlement::Release,
                newly_failed: Vec::new(),
            });
        }
        if relay == "local" && reason.is_some() {
            self.metrics.add(&self.metrics.refused, 1);
            tracing::error!(
                id,
                reason = reason.as_deref().unwrap_or(""),
                "message refused"
            );
        }
        Ok(self.outcome(
            id, queue, header, st, rcpts, relay, results, reason, started, at_ms,
        ))
    }

    pub(crate) fn to_outbox<C: Claim>(
        &self,
        claim: &C,
        dir: &Path,
        rcpts: &[String],
        fence: &dyn Fn() -> bool,
    ) -> std::result::Result<(String, Vec<RcptResult>), QueueError> {
        let id = claim.id();
        let tmp = dir.join(format!("{id}.eml+{}.tmp", self.instance));
        let dst = dir.join(format!("{id}.eml"));
        let at = |p: &Path| {
            let p = p.to_owned();
            move |source: io::Error| QueueError::Io { path: p, source }
        };
        // 0600 like the spool files: the outbox holds whole messages; created exclusively
        // without following a symlink (a planted or stale temporary is unlinked first)
        let mut out = clock::create_exclusive(&tmp, 0o600).map_err(at(&tmp))?;
        let copied = (|| -> io::Result<()> {
            let mut body = claim.body().map_err(|e| io::Error::other(e.to_string()))?;
            io::copy(&mut body, &mut out)?;
            if self.cfg.durable {
                out.sync_all()?;
            }
            Ok(())
        })();
        drop(out);
        if let Err(e) = copied {
            let _ = fs::remove_file(&tmp);
            return Err(at(&tmp)(e));
        }
        if !fence() {
            let _ = fs::remove_file(&tmp);
            return Ok((FENCED_RELAY.into(), Vec::new()));
        }
        fs::rename(&tmp, &dst).map_err(at(&dst))?;
        let reply = Reply::local(format!("written to {}", dst.display()));
        Ok((
            "outbox".into(),
            rcpts
                .iter()
                .map(|r| RcptResult {
                    rcpt: r.clone(),
                    status: RcptStatus::Delivered,
                    reply: reply.clone(),
                })
                .collect(),
        ))
    }

    /// Folds one attempt's results into the state and says where the message goes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn outcome(
        &self,
        id: &str,
        queue: &Path,
        header: &SpoolHeader,
        mut st: MessageState,
        rcpts: Vec<String>,
        relay: String,
        results: Vec<RcptResult>,
        reason: Option<String>,
        started: Instant,
        at_ms: i64,
    ) -> AttemptOutcome {
        let now = now_secs();
        st.attempts += 1;
        self.metrics.add(&self.metrics.attempts, 1);
        let attempt = state::Attempt {
            number: st.attempts,
            at_ms,
            duration_ms: started.elapsed().as_millis() as u64,
            relay,
            instance: self.instance.clone(),
            results: results.clone(),
        };
        self.log_attempt(id, queue, header, &attempt);
        st.push_attempt(attempt);
        if let Some(r) = reason {
            st.reason = Some(r);
        }
        let mut remaining = Vec::new();
        let mut newly_failed = Vec::new();
        for r in &results {
            match r.status {
                RcptStatus::Delivered => {
                    self.metrics.add(&self.metrics.rcpts_delivered, 1);
                    if !st.delivered.contains(&r.rcpt) {
                        st.delivered.push(r.rcpt.clone());
                    }
                }
                RcptStatus::Failed => {
                    self.metrics.add(&self.metrics.rcpts_failed, 1);
                    let f = FailedRcpt {
                        rcpt: r.rcpt.clone(),
                        reply: r.reply.clone(),
                        at: now,
                    };
                    newly_failed.push(f.clone());
                    st.failed.push(f);
                }
                RcptStatus::Deferred => remaining.push(r.rcpt.clone()),
            }
        }
        // recipients without a result (none expected) stay to do
        for r in &rcpts {
            if !results.iter().any(|x| &x.rcpt == r) {
                remaining.push(r.clone());
            }
        }
        let lifetime_start = header.created.max(st.requeued_at.unwrap_or(0));
        if !remaining.is_empty() && now - lifetime_start >= self.cfg.retry.lifetime_secs as i64 {
            let last = results
                .iter()
                .find(|r| r.status == RcptStatus::Deferred)
                .map(|r| r.reply.to_string())
                .unwrap_or_default();
            for r in remaining.drain(..) {
                let f = FailedRcpt {
                    rcpt: r,
                    reply: Reply::local(format!(
                        "queue lifetime of {} s exceeded; last reply: {last}",
                        self.cfg.retry.lifetime_secs
                    )),
                    at: now,
                };
                newly_failed.push(f.clone());
                st.failed.push(f);
            }
            st.reason
                .get_or_insert_with(|| "queue lifetime exceeded".into());
        }
        let settlement = if remaining.is_empty() && st.failed.is_empty() && st.reason.is_none() {
            // nothing left: a tombstone's state (a queue keeps it) must not name the recipients
            // an earlier attempt deferred as still to do
            st.remaining = Some(remaining);
            Settlement::Delivered(st)
        } else if remaining.is_empty() {
            st.remaining = Some(remaining);
            st.next_due = 0;
            tracing::warn!(id, diagnosis = %st.diagnosis(), "message failed");
            Settlement::Failed(st)
        } else {
            st.remaining = Some(remaining);
            let delay = retry::backoff_secs(&self.cfg.retry, st.attempts, &mut Jitter::new());
            st.next_due = now + delay as i64;
            let due = st.next_due;
            Settlement::Deferred { state: st, due }
        };
        AttemptOutcome {
            settlement,
            newly_failed,
        }
    }

    /// A message just put in deferred/: `run` keeps it in memory until `due` (Unix seconds),
    /// so it is claimed again without a rescan; `drain` does not wait for it.
    pub(crate) fn wait_deferred(&self, spool_idx: usize, id: &str, created: i64, due: i64) {
        if !self.drain {
            let c = Candidate {
                rank: created,
                spool: spool_idx,
                id: id.to_owned(),
                from: Dir::Deferred,
            };
            self.queue.push_waiting(c, due);
        }
    }

    pub(crate) fn log_attempt(
        &self,
        id: &str,
        queue: &Path,
        header: &SpoolHeader,
        a: &state::Attempt,
    ) {
        crate::delivery_log::record(self, id, queue, header, a);
    }
}

/// The envelope a claim would be sent with, when it may be chained behind another message's
/// end-of-data: recipients left, a wire-safe envelope, a small body (in memory) with clean
/// content. The attempt that follows builds the same transaction from the same claim
/// ([`smtp::NextTx::matches`]).
fn chainable<C: Claim>(claim: &C) -> Option<smtp::NextTx> {
    let env = &claim.header().envelope;
    let rcpts: Vec<String> = claim
        .state()
        .remaining
        .clone()
        .unwrap_or_else(|| env.rcpt_to.clone());
    let body_len = claim.body_len();
    if rcpts.is_empty() || env.check_wire_safe().is_err() || body_len > smtp::SMALL_BODY {
        return None;
    }
    let mut v = Vec::with_capacity(body_len as usize);
    let body = claim.body().ok()?;
    io::Read::read_to_end(&mut io::Read::take(body, body_len), &mut v).ok()?;
    let summary = content::scan_bytes(&v).ok()?;
    Some(smtp::NextTx {
        mail_from: env.mail_from.clone(),
        rcpts,
        smtputf8: env.smtputf8,
        eight_bit: summary.eight_bit || env.eightbitmime,
        body_len,
    })
}
