//! Relay choice within one attempt: failover, connection limits, reconnection of a dead reused connection.

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
use crate::worker::{Claimed, Worker, now_ms};
use crate::*;

impl Shared {
    /// Sends through the relays: failover to the next relay when one cannot be used,
    /// reconnection (not counted) when a reused connection turns out dead.
    pub(crate) fn via_relays(
        &self,
        w: &mut Worker,
        file: &SpoolFile,
        small: Option<&[u8]>,
        rcpts: &[String],
        summary: content::ContentSummary,
    ) -> (String, Vec<RcptResult>, Option<String>) {
        let env = &file.header.envelope;
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
        let mut tried: Vec<usize> = Vec::new();
        let mut last: Option<(String, Reply)> = None;
        let mut reconnects = 0;
        let mut waits = 0u32;
        loop {
            let i = match self
                .pool
                .select(&tried, |i| w.sessions.contains_key(&i), &mut w.rng)
            {
                None => {
                    let (name, reply) = last.unwrap_or_else(|| {
                        ("none".into(), Reply::local("every relay is in cooldown"))
                    });
                    return (name, all(RcptStatus::Deferred, &reply), None);
                }
                Some(Err(())) => {
                    waits += 1;
                    if waits > 3000 {
                        return (
                            "none".into(),
                            all(
                                RcptStatus::Deferred,
                                &Reply::local("every relay is at its connection limit"),
                            ),
                            None,
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
                self.drop_session(w, i, true);
            }
            let fresh = !w.sessions.contains_key(&i);
            if fresh {
                if !self.pool.take_slot(i) {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                match Session::open(&relay.endpoint, self.cfg.ehlo(), &self.cfg.timeouts) {
                    Ok(s) => {
                        self.metrics.relay_connection(&name, true);
                        w.sessions.insert(i, (s, Instant::now()));
                    }
                    Err(e) => {
                        self.pool.give_slot(i);
                        if e.relay_fault {
                            self.pool.cool_down(i);
                        }
                        tracing::warn!(relay = %name, reply = %e.reply, "relay unusable; trying the next one");
                        self.metrics.relay_connection(&name, false);
                        tried.push(i);
                        last = Some((name, e.reply));
                        continue;
                    }
                }
            }
            self.pool.pace(i);
            let body: Box<dyn io::Read> = match small {
                Some(b) => Box::new(b),
                None => match file.body_reader() {
                    Ok(b) => Box::new(b),
                    Err(e) => {
                        return (
                            name,
                            all(RcptStatus::Deferred, &Reply::local(e.to_string())),
                            None,
                        );
                    }
                },
            };
            let tx = Transaction {
                mail_from: &env.mail_from,
                rcpts,
                smtputf8: env.smtputf8,
                eight_bit: summary.eight_bit || env.eightbitmime,
                body_len: file.body_len,
                ends_with_crlf: summary.ends_with_crlf,
            };
            let Some((session, used)) = w.sessions.get_mut(&i) else {
                continue;
            };
            let res = session.send(&tx, body, &self.cfg.timeouts);
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
                    return (name, results, None);
                }
                Err(TxError::DiedBefore(reply)) => {
                    self.drop_session(w, i, false);
                    if !fresh && reconnects < 2 {
                        reconnects += 1;
                        tracing::debug!(relay = %name, reply = %reply, "reused connection is dead; reconnecting");
                        continue;
                    }
                    return (name, all(RcptStatus::Deferred, &reply), None);
                }
                Err(TxError::DiedAfterData(results)) => {
                    self.drop_session(w, i, false);
                    return (name, results, None);
                }
                Err(TxError::Body(Ok(why))) => {
                    self.drop_session(w, i, false);
                    let reason = format!(
                        "refused: the message has a {why} (never sent: SMTP smuggling guard)"
                    );
                    return (
                        "local".into(),
                        all(RcptStatus::Failed, &Reply::local(reason.clone())),
                        Some(reason),
                    );
                }
                Err(TxError::Body(Err(e))) => {
                    self.drop_session(w, i, false);
                    return (name, all(RcptStatus::Deferred, &Reply::local(e)), None);
                }
            }
        }
    }
}
