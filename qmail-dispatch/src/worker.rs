//! A worker thread: claim a message, make one attempt, settle the outcome.

#![allow(unused_imports)]
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qmail_core::error::{Error, ErrorKind, Result};
use qmail_core::spool::{QueueState, Spool, SpoolFile, now_secs};

use crate::dispatcher::{Shared, io_err};
use crate::housekeeping::{purge_sent, purge_stale};
use crate::relay::RelayPool;
use crate::retry::Jitter;
use crate::schedule::{self, Candidate, CandidateQueue, Dir, Pop};
use crate::smtp::{Session, Transaction, TxError};
use crate::*;

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A worker's open relay sessions.
pub(crate) struct Worker {
    pub(crate) sessions: HashMap<usize, (Session, Instant)>,
    pub(crate) rng: Jitter,
}

/// A message this worker claimed.
pub(crate) struct Claimed<'a> {
    pub(crate) spool_idx: usize,
    pub(crate) spool: &'a Path,
    pub(crate) id: &'a str,
    pub(crate) path: PathBuf,
}

impl Shared {
    pub(crate) fn worker(self: Arc<Self>) {
        let mut w = Worker {
            sessions: HashMap::new(),
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
        }
    }

    pub(crate) fn process(&self, w: &mut Worker, c: Candidate) {
        let spool = &self.spools[c.spool];
        let path = match claim::claim(spool, &c.id, c.from.state(), &self.instance) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(id = %c.id, error = %e, "cannot claim");
                return;
            }
        };
        let cl = Claimed {
            spool_idx: c.spool,
            spool,
            id: &c.id,
            path,
        };
        if let Err(e) = self.handle(w, &cl) {
            tracing::error!(id = %c.id, error = %e, "spool I/O error; releasing the claim");
            let _ = claim::release(&cl.path, spool, &c.id, c.from.state());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn handle(&self, w: &mut Worker, cl: &Claimed<'_>) -> io::Result<()> {
        let file = match SpoolFile::open(&cl.path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                self.quarantine(cl, e.message());
                return Ok(());
            }
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        let (st, had_state) = match MessageState::load(cl.spool, cl.id) {
            Ok(Some(s)) => (s, true),
            Ok(None) => (MessageState::default(), false),
            Err(e) => return Err(e),
        };
        let now = now_secs();
        if st.next_due > now {
            // claimed before its time (a crash between writing the state and the rename to
            // deferred/): put it where it belongs
            claim::release(&cl.path, cl.spool, cl.id, QueueState::Deferred)?;
            self.wait_deferred(cl, file.header.created, st.next_due);
            return Ok(());
        }
        let env = &file.header.envelope;
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
        let (relay, results, reason) = if rcpts.is_empty() {
            // nothing left to send (a crash between the state write and the final rename)
            ("local".to_owned(), Vec::new(), None)
        } else if let Err(why) = env.check_wire_safe() {
            refuse(format!("refused: bad envelope: {why}"))
        } else {
            // a small message is read once, here, and sent from memory; a large one is read
            // again, streaming, by the SMTP layer (which re-checks what it sends)
            let mut small: Option<Vec<u8>> = None;
            let body = file
                .body_reader()
                .map_err(|e| io::Error::other(e.to_string()))?;
            let scanned = if file.body_len <= smtp::SMALL_BODY {
                let mut v = Vec::with_capacity(file.body_len as usize);
                io::Read::read_to_end(&mut io::Read::take(body, file.body_len), &mut v)?;
                let r = content::scan(v.as_slice());
                small = Some(v);
                r
            } else {
                content::scan(body)
            };
            match scanned {
                Err(Ok(why)) => refuse(format!(
                    "refused: the message has a {why} (never sent: SMTP smuggling guard)"
                )),
                Err(Err(e)) => return Err(e),
                Ok(summary) if self.pool.is_empty() => {
                    let (r, res) = self.to_outbox(cl, &file, &rcpts)?;
                    let _ = summary;
                    (r, res, None)
                }
                Ok(summary) => {
                    let (r, res, reason) =
                        self.via_relays(w, &file, small.as_deref(), &rcpts, summary);
                    (r, res, reason)
                }
            }
        };
        if relay == "local" && reason.is_some() {
            self.metrics.add(&self.metrics.refused, 1);
            tracing::error!(
                id = cl.id,
                reason = reason.as_deref().unwrap_or(""),
                "message refused"
            );
        }
        self.settle(
            cl, &file, st, had_state, rcpts, relay, results, reason, started, at_ms,
        )
    }

    pub(crate) fn quarantine(&self, cl: &Claimed<'_>, why: &str) {
        let dst = cl.spool.join(QueueState::Corrupt.dir_name()).join(cl.id);
        match fs::rename(&cl.path, &dst) {
            Ok(()) => {
                self.metrics.add(&self.metrics.corrupt, 1);
                tracing::error!(id = cl.id, reason = why, to = %dst.display(), "unparseable spool file moved to corrupt/");
                let st = MessageState {
                    reason: Some(format!("corrupt: {why}")),
                    ..MessageState::default()
                };
                let _ = st.save(cl.spool, cl.id, &self.instance, self.cfg.durable);
            }
            Err(e) => {
                tracing::error!(id = cl.id, error = %e, "cannot move an unparseable file to corrupt/")
            }
        }
    }

    pub(crate) fn to_outbox(
        &self,
        cl: &Claimed<'_>,
        file: &SpoolFile,
        rcpts: &[String],
    ) -> io::Result<(String, Vec<RcptResult>)> {
        let dir = cl.spool.join(OUTBOX_DIR);
        let tmp = dir.join(format!("{}.eml+{}.tmp", cl.id, self.instance));
        let dst = dir.join(format!("{}.eml", cl.id));
        // 0600 like the spool files: the outbox holds whole messages
        let mut out = std::os::unix::fs::OpenOptionsExt::mode(
            OpenOptions::new().write(true).create(true).truncate(true),
            0o600,
        )
        .open(&tmp)?;
        let mut body = file
            .body_reader()
            .map_err(|e| io::Error::other(e.to_string()))?;
        io::copy(&mut body, &mut out)?;
        if self.cfg.durable {
            out.sync_all()?;
        }
        drop(out);
        fs::rename(&tmp, &dst)?;
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
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn settle(
        &self,
        cl: &Claimed<'_>,
        file: &SpoolFile,
        mut st: MessageState,
        had_state: bool,
        rcpts: Vec<String>,
        relay: String,
        results: Vec<RcptResult>,
        reason: Option<String>,
        started: Instant,
        at_ms: i64,
    ) -> io::Result<()> {
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
        self.log_attempt(cl, file, &attempt);
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
                    st.delivered.push(r.rcpt.clone());
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
        let lifetime_start = file.header.created.max(st.requeued_at.unwrap_or(0));
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
        let durable = self.cfg.durable;
        if !newly_failed.is_empty() && self.cfg.dsn.enabled {
            dsn::submit(cl.spool, file, &newly_failed, &self.cfg);
        }
        if remaining.is_empty() && st.failed.is_empty() && st.reason.is_none() {
            // every recipient delivered: the only point where the message leaves the spool
            if self.cfg.sent_retention_secs > 0 {
                fs::rename(&cl.path, cl.spool.join(SENT_DIR).join(cl.id))
                    .or_else(|e| self.lost_claim(cl, e))?;
            } else {
                fs::remove_file(&cl.path).or_else(|e| self.lost_claim(cl, e))?;
            }
            if had_state {
                MessageState::remove(cl.spool, cl.id)?;
            }
            // no fsync of active/ here (as Postfix after a delivery): an unlink lost to a power
            // failure only brings the message back for one more delivery (at least once),
            // while an fsync per message would cost a quarter of the throughput
            self.metrics.add(&self.metrics.delivered, 1);
            return Ok(());
        }
        st.remaining = Some(remaining.clone());
        if remaining.is_empty() {
            st.next_due = 0;
            st.save(cl.spool, cl.id, &self.instance, durable)?;
            claim::release(&cl.path, cl.spool, cl.id, QueueState::Failed)
                .or_else(|e| self.lost_claim(cl, e))?;
            if durable {
                claim::sync_dir(&cl.spool.join(QueueState::Failed.dir_name()))?;
            }
            self.metrics.add(&self.metrics.failed, 1);
            tracing::warn!(id = cl.id, diagnosis = %st.diagnosis(), "message failed");
            return Ok(());
        }
        let delay = retry::backoff_secs(&self.cfg.retry, st.attempts, &mut Jitter::new());
        st.next_due = now + delay as i64;
        st.save(cl.spool, cl.id, &self.instance, durable)?;
        claim::release(&cl.path, cl.spool, cl.id, QueueState::Deferred)
            .or_else(|e| self.lost_claim(cl, e))?;
        if durable {
            claim::sync_dir(&cl.spool.join(QueueState::Deferred.dir_name()))?;
        }
        self.metrics.add(&self.metrics.deferred, 1);
        self.wait_deferred(cl, file.header.created, st.next_due);
        Ok(())
    }

    /// A message just put in deferred/: `run` keeps it in memory until `due` (Unix seconds),
    /// so it is claimed again without a rescan; `drain` does not wait for it.
    pub(crate) fn wait_deferred(&self, cl: &Claimed<'_>, created: i64, due: i64) {
        if !self.drain {
            let c = Candidate {
                rank: created,
                spool: cl.spool_idx,
                id: cl.id.to_owned(),
                from: Dir::Deferred,
            };
            self.queue.push_waiting(c, due);
        }
    }

    pub(crate) fn lost_claim(&self, cl: &Claimed<'_>, e: io::Error) -> io::Result<()> {
        if e.kind() == io::ErrorKind::NotFound {
            tracing::warn!(
                id = cl.id,
                "the claim was taken back by another dispatcher (lease expired) before this attempt ended"
            );
            Ok(())
        } else {
            Err(e)
        }
    }

    pub(crate) fn log_attempt(&self, cl: &Claimed<'_>, file: &SpoolFile, a: &state::Attempt) {
        crate::delivery_log::record(self, cl, file, a);
    }
}
