//! The relays: failover by priority, spread by weight, cooldown, connection and rate limits.
//!
//! For each message a worker picks, among the relays not in cooldown and not already tried
//! in this attempt, those of the lowest priority number; among them one at random in
//! proportion to its weight (a relay whose connection limit is reached counts only when this
//! worker already holds a connection to it). A relay that refuses a connection, greets with
//! 4xx/5xx, or fails TLS or AUTH goes into cooldown for `cooldown_secs` and the worker fails
//! over to the next one within the same attempt.
//!
//! The limits here hold per process. A dispatcher serving a shared queue also takes a
//! fleet-wide connection slot and rate token of the queue ([`crate::queue::RelayLimits`],
//! `route.rs`), and falls back to these alone while the queue cannot answer.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::config::RelayConfig;
use super::retry::Jitter;
use super::smtp::RelayEndpoint;

/// A relay and its shared counters.
#[derive(Debug)]
pub struct Relay {
    /// How to reach it.
    pub endpoint: RelayEndpoint,
    /// Connections open now, across workers.
    pub open: AtomicUsize,
    /// Connection limit.
    pub max_connections: usize,
    cooldown_until: Mutex<Option<Instant>>,
    next_slot: Mutex<Instant>,
    /// Messages accepted through it (metrics, tests).
    pub delivered: AtomicU64,
}

/// Every configured relay.
#[derive(Debug, Default)]
pub struct RelayPool {
    /// The relays, in configuration order.
    pub relays: Vec<Relay>,
}

impl RelayPool {
    /// Prepares every relay (TLS parameters, credentials).
    ///
    /// # Errors
    /// A relay's TLS set-up failed.
    pub fn new(cfgs: &[RelayConfig], workers: usize) -> Result<RelayPool, String> {
        let relays = cfgs
            .iter()
            .map(|c| {
                Ok(Relay {
                    max_connections: if c.max_connections == 0 {
                        workers
                    } else {
                        c.max_connections
                    },
                    endpoint: RelayEndpoint::new(c.clone())?,
                    open: AtomicUsize::new(0),
                    cooldown_until: Mutex::new(None),
                    next_slot: Mutex::new(Instant::now()),
                    delivered: AtomicU64::new(0),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(RelayPool { relays })
    }

    /// True when no relay is configured (outbox mode).
    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }

    /// True while relay `i` is in cooldown.
    pub fn cooling(&self, i: usize) -> bool {
        let mut g = self.relays[i]
            .cooldown_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match *g {
            Some(t) if t > Instant::now() => true,
            Some(_) => {
                *g = None;
                false
            }
            None => false,
        }
    }

    /// Puts relay `i` into cooldown.
    pub fn cool_down(&self, i: usize) {
        let secs = self.relays[i].endpoint.cfg.cooldown_secs;
        if secs > 0 {
            *self.relays[i]
                .cooldown_until
                .lock()
                .unwrap_or_else(|p| p.into_inner()) =
                Some(Instant::now() + Duration::from_secs(secs));
        }
    }

    /// Picks a relay for a message (see the module docs). `held(i)`: this worker has a
    /// connection to relay `i`; `full(i)`: relay `i` was just found at its fleet-wide
    /// connection limit (counts like this process's limit). `None` when every relay is tried
    /// or cooling; `Some(Err(()))` when the best ones are all at their connection limit (wait
    /// and retry).
    pub fn select(
        &self,
        tried: &[usize],
        held: impl Fn(usize) -> bool,
        full: impl Fn(usize) -> bool,
        rng: &mut Jitter,
    ) -> Option<Result<usize, ()>> {
        let live: Vec<usize> = (0..self.relays.len())
            .filter(|i| !tried.contains(i) && !self.cooling(*i))
            .collect();
        let best = live
            .iter()
            .map(|&i| self.relays[i].endpoint.cfg.priority)
            .min()?;
        let tier: Vec<usize> = live
            .into_iter()
            .filter(|&i| self.relays[i].endpoint.cfg.priority == best)
            .collect();
        let usable: Vec<usize> = tier
            .iter()
            .copied()
            .filter(|&i| {
                held(i)
                    || (!full(i)
                        && self.relays[i].open.load(Ordering::Relaxed)
                            < self.relays[i].max_connections)
            })
            .collect();
        if usable.is_empty() {
            return Some(Err(()));
        }
        let total: u64 = usable
            .iter()
            .map(|&i| self.relays[i].endpoint.cfg.weight.max(1) as u64)
            .sum();
        let mut pick = rng.below(total);
        for &i in &usable {
            let w = self.relays[i].endpoint.cfg.weight.max(1) as u64;
            if pick < w {
                return Some(Ok(i));
            }
            pick -= w;
        }
        usable.last().map(|&i| Ok(i))
    }

    /// True when [`RelayPool::select`] could pick no other relay than `i` for a new message
    /// now: every other relay of `i`'s priority is in cooldown (so a message chained to `i`
    /// behind another keeps failover and the weighted spread as they are).
    pub fn sole_choice(&self, i: usize) -> bool {
        let p = self.relays[i].endpoint.cfg.priority;
        (0..self.relays.len())
            .filter(|&j| j != i && self.relays[j].endpoint.cfg.priority == p)
            .all(|j| self.cooling(j))
    }

    /// Takes a connection slot of relay `i`; false at the limit.
    pub fn take_slot(&self, i: usize) -> bool {
        let r = &self.relays[i];
        r.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < r.max_connections).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a slot of relay `i`.
    pub fn give_slot(&self, i: usize) {
        self.relays[i].open.fetch_sub(1, Ordering::AcqRel);
    }

    /// Waits for relay `i`'s rate limit (`max_messages_per_second`) in this process, if it
    /// has one (a dispatcher on a shared queue uses the fleet-wide token instead, and this
    /// only while the queue cannot answer).
    pub fn pace(&self, i: usize) {
        let rate = self.relays[i].endpoint.cfg.max_messages_per_second;
        if rate <= 0.0 {
            return;
        }
        let step = Duration::from_secs_f64(1.0 / rate);
        let wait = {
            let mut next = self.relays[i]
                .next_slot
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + step;
            at - now
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}
