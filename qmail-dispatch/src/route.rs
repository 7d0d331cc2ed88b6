//! Relay choice within one attempt: failover, connection limits, reconnection of a dead
//! reused connection, and relays that cannot take this message (SIZE, 8BITMIME, SMTPUTF8).

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::dispatcher::Shared;
use crate::smtp::{BodyError, Session, Transaction, TxError};
use crate::worker::Worker;
use crate::*;

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
        let mut waits = 0u32;
        loop {
            let i = match self
                .pool
                .select(&tried, |i| w.sessions.contains_key(&i), &mut w.rng)
            {
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
                    waits += 1;
                    if waits > 3000 {
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
                        let reply = e.reply();
                        tracing::warn!(relay = %name, reply = %reply, "relay unusable; trying the next one");
                        self.metrics.relay_connection(&name, false);
                        tried.push(i);
                        last = Some((name, reply));
                        continue;
                    }
                }
            }
            self.pool.pace(i);
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
                prefix: msg.prefix,
            };
            let Some((session, used)) = w.sessions.get_mut(&i) else {
                continue;
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
