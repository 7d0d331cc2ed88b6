//! Dispatchers serving a PostgreSQL queue (`qmail-dispatcher run --queue URL`, `drain --queue
//! URL`; `docs/scale-out.md`).
//!
//! [`QueueDispatcher`] reuses the engine's [`Shared`] (relays, metrics, DKIM, the
//! configuration, the attempt of `worker.rs`) with no spool directory. Each worker thread
//! loops: take one claim → [`Shared::attempt`] → settle. Round trips and commits are shared
//! (what makes the queue keep up with a directory spool, `bench/postgres/run.sh`):
//! - claims: the workers that are idle at the same time share one claim statement
//!   ([`ClaimFeed`]): one of them claims as many rows as there are idle workers
//!   ([`Queue::claim`]), and each takes one; no row waits in a worker's hand, so every claim
//!   held is an attempt in progress;
//! - settles: delivered settles of all workers go through one [`GroupSettler`] (one
//!   transaction for those that arrive together, each row still fenced); the other outcomes
//!   are written by the worker ([`PgClaim::settle_ref`]).
//!
//! The settle rules are the seam's (`queue/mod.rs`):
//! - [`SettleError::LostClaim`]: another dispatcher took the claim back; logged, never
//!   retried (its attempt decides);
//! - [`SettleError::Queue`] (the database is down, a failover): retried with a capped
//!   backoff (100 ms doubling, at most 10 s) with the same fencing token, never turned into a
//!   release (rule 4);
//! - every claim is settled: one claimed after the stop was asked for is given back
//!   ([`Settlement::Release`]).
//!
//! One more thread renews the lease (every sixth of a lease, in database time); the serving
//! thread takes back expired claims of other dispatchers and purges old tombstones every half
//! lease ([`PgQueue::housekeeping`]), and gives back the rows owned by this process that no
//! worker holds: a claim whose COMMIT took effect but whose reply was lost (the connection
//! broke, the primary died or failed over) would otherwise stay `active` under a live lease
//! for as long as the process runs. While the lease is not fresh or the database cannot be
//! reached, [`PgQueue::claim`] claims nothing and the workers back off.
//!
//! Delivery status notifications (RFC 3464, `[dsn] enabled`) are imported into the same queue
//! before the settle, from `<>` to the envelope sender, as a directory dispatcher submits them
//! into its spool.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qmail_core::error::{Error, ErrorKind, Result};
use qmail_core::spool::{SpoolHeader, now_secs};
use qmail_core::{QueueId, RawMessage};

use crate::clock;
use crate::dispatcher::{LeaseSet, Shared};
use crate::queue::postgres::{GroupSettler, PgClaim, PgQueue};
use crate::queue::{Claim, LeaseHealth, Queue, QueueError, SettleError, Settlement};
use crate::relay::RelayPool;
use crate::retry::Jitter;
use crate::schedule::CandidateQueue;
use crate::worker::Worker;
use crate::{DispatchConfig, Metrics, Summary};

/// The longest pause between two attempts to write a settle the database refused.
const SETTLE_BACKOFF_CAP: Duration = Duration::from_secs(10);
/// The longest pause between two claims while the queue is unavailable.
const CLAIM_BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Most delivered settles written in one transaction by the [`GroupSettler`].
const SETTLE_GROUP_MAX: usize = 64;

/// A dispatcher over a PostgreSQL queue. Build one per `run` or `drain`.
pub struct QueueDispatcher {
    shared: Arc<Shared>,
    queue: PgQueue,
    feed: ClaimFeed,
    settler: GroupSettler,
    /// Ids deferred during a drain (not retried in it).
    deferred_in_drain: Mutex<HashSet<String>>,
    /// Ids of the claims the workers hold (from the claim's return to its settle).
    held: Held,
}

/// The ids of the claims the workers hold, counted: a row one worker settled (released,
/// deferred to now) may be claimed again by another before the first lets go of its id, and
/// the second's claim must stay held.
#[derive(Debug, Default)]
struct Held(Mutex<HashMap<String, usize>>);

impl Held {
    fn hold(&self, id: &str) {
        *lock(&self.0).entry(id.to_owned()).or_insert(0) += 1;
    }

    fn let_go(&self, id: &str) {
        let mut m = lock(&self.0);
        if let Some(n) = m.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                m.remove(id);
            }
        }
    }

    fn ids(&self) -> Vec<String> {
        lock(&self.0).keys().cloned().collect()
    }
}

impl std::fmt::Debug for QueueDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueDispatcher")
            .field("instance", &self.shared.instance)
            .field("queue", &self.queue)
            .finish()
    }
}

/// While the lease cannot be renewed, how often the heartbeat says so again (the first
/// failure is an ERROR, the reminders WARN, the recovery INFO).
const LEASE_LOG_EVERY: Duration = Duration::from_secs(30);

impl QueueDispatcher {
    /// Checks the configuration and prepares the relays for serving `queue` (connected with
    /// [`PgQueue::connect`]); the configuration's spools, if any, are not served. The
    /// instance id is the queue's owner name ([`PgQueue::instance`]).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for a bad configuration, or when no relay is configured
    /// (a queue shared by several hosts has no local outbox: field `relays`).
    pub fn new(
        cfg: DispatchConfig,
        queue: PgQueue,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<QueueDispatcher> {
        QueueDispatcher::build(cfg, queue, false, metrics)
    }

    fn build(
        mut cfg: DispatchConfig,
        queue: PgQueue,
        drain: bool,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<QueueDispatcher> {
        // the checks of a directory configuration, without its spools
        if cfg.spools.is_empty() {
            cfg.spools.push(PathBuf::from("(queue)"));
        }
        let mut cfg = cfg.resolve()?;
        cfg.spools.clear();
        if cfg.relays.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "serving a PostgreSQL queue needs at least one relay (--relay, or [[relay]] in the file): \
                 there is no local outbox",
            )
            .with_field("relays"));
        }
        for r in cfg.relays.iter().filter(|r| r.cleartext_credentials()) {
            tracing::warn!(relay = %r.name, tls = ?r.tls_mode(),
                "credentials without tls=required: the password may cross the network in cleartext");
        }
        let pool = RelayPool::new(&cfg.relays, cfg.workers)
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, e).with_field("relay"))?;
        let delivery_log = match &cfg.delivery_log {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| {
                        crate::dispatcher::io_err(
                            format_args!("cannot open the delivery log {}", p.display()),
                            e,
                        )
                    })?,
            )),
            None => None,
        };
        let dkim = crate::dkim::Signer::load(&cfg.dkim).map_err(|e| {
            Error::new(ErrorKind::InvalidArgument, e.to_string()).with_field("dkim")
        })?;
        let instance = queue.instance().to_owned();
        let leases = LeaseSet::new(
            instance.clone(),
            Duration::from_secs(cfg.lease_secs),
            Arc::new(clock::SpoolClock),
        );
        let shared = Arc::new(Shared {
            dkim,
            spools: Vec::new(),
            instance,
            pool,
            queue: CandidateQueue::new(drain),
            metrics: metrics.unwrap_or_default(),
            delivery_log,
            drain,
            cfg,
            leases,
            lease_of: Vec::new(),
            stopping: Arc::new(AtomicBool::new(false)),
            io_failures: AtomicU32::new(0),
            busy: AtomicUsize::new(0),
            io_pause: Mutex::new(None),
            // max_connections and max_messages_per_second across every dispatcher of the
            // queue; this process's own limits while the database cannot answer
            limits: Some(Arc::new(crate::queue::FallbackLimits::new(queue.clone()))),
        });
        // qmail_queue_fences_total{answer}: into the process's counters, kept across reloads
        queue.export_fences(shared.metrics.fence_counters());
        Ok(QueueDispatcher {
            shared,
            settler: queue.group_settler(SETTLE_GROUP_MAX),
            feed: ClaimFeed::default(),
            queue,
            deferred_in_drain: Mutex::new(HashSet::new()),
            held: Held::default(),
        })
    }

    /// This process's instance id (the `owner` of its claims).
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// The queue it serves (a clone shares its connections): what the HTTP listener of
    /// `run --queue` reads and acts on.
    pub fn queue(&self) -> &PgQueue {
        &self.queue
    }

    /// The counters (shared; keep the `Arc` to serve metrics).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Workers holding a claim right now (transactions in flight).
    pub fn in_flight(&self) -> usize {
        self.shared.busy.load(Ordering::SeqCst)
    }

    /// Delivers every message of the queue that is ready or due now, then returns what
    /// happened (as [`crate::Dispatcher::drain`]). Expired claims of dead dispatchers are
    /// taken back first; messages deferred during the drain are not retried in it.
    ///
    /// # Errors
    /// As [`QueueDispatcher::new`]; [`ErrorKind::Io`] when the lease cannot be taken (the
    /// database is unreachable).
    pub fn drain(cfg: DispatchConfig, queue: PgQueue) -> Result<Summary> {
        let d = Arc::new(QueueDispatcher::build(cfg, queue, true, None)?);
        match d.queue.heartbeat() {
            Ok(LeaseHealth::Fresh) => {}
            Ok(h) => return Err(unavailable(format!("the lease is not fresh: {h:?}"))),
            Err(e) => return Err(unavailable(e.to_string())),
        }
        d.housekeep();
        let hb = d.spawn_heartbeat();
        let workers = d.spawn_workers();
        for w in workers {
            let _ = w.join();
        }
        d.shared.stopping.store(true, Ordering::SeqCst);
        let _ = hb.join();
        d.queue.release_lease();
        d.log_round_trips();
        Ok(d.shared.metrics.summary())
    }

    /// Serves the queue until `stop` becomes true (SIGTERM/SIGINT in the binary): stops
    /// claiming, waits up to `shutdown_grace_secs` for transactions in flight (each settled),
    /// gives the lease back when every worker is done, and returns what it did. Past the
    /// grace period the workers still running keep their claims under a renewed lease for as
    /// long as the process lives.
    ///
    /// # Errors
    /// None today (the database being down is waited out, not an error); the `Result` keeps
    /// the shape of [`crate::Dispatcher::run`].
    pub fn run(self: &Arc<Self>, stop: &AtomicBool) -> Result<Summary> {
        let sh = &self.shared;
        let hb = self.spawn_heartbeat();
        let workers = self.spawn_workers();
        let every = Duration::from_millis((sh.cfg.lease_secs * 1000 / 2).max(500));
        let mut last = None::<Instant>;
        while !stop.load(Ordering::SeqCst) {
            if last.is_none_or(|t| t.elapsed() >= every) {
                self.housekeep();
                last = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::info!(
            in_flight = self.in_flight(),
            "stopping: no new claims; waiting up to {} s for transactions in flight",
            sh.cfg.shutdown_grace_secs
        );
        sh.stopping.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(sh.cfg.shutdown_grace_secs);
        while Instant::now() < deadline && workers.iter().any(|w| !w.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = workers.iter().filter(|w| !w.is_finished()).count();
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                instance = %sh.instance,
                "grace period over with transactions in flight: their lease stays renewed while \
                 this process lives; if it exits now, other dispatchers take the claims back"
            );
        } else {
            for w in workers {
                let _ = w.join();
            }
            let _ = hb.join();
            self.queue.release_lease();
        }
        self.log_round_trips();
        Ok(sh.metrics.summary())
    }

    /// How many claim statements and settle transactions the delivered messages took
    /// (debug level; `bench/postgres/run.sh` reads nothing from it).
    fn log_round_trips(&self) {
        tracing::debug!(
            claim_statements = lock(&self.feed.state).finished,
            settle_transactions = self.settler.transactions(),
            "queue round trips shared by the workers"
        );
    }

    /// Takes back expired claims of other dispatchers and purges old tombstones, only while
    /// this process's own lease is fresh (a stale "now" judges nobody).
    fn housekeep(&self) {
        if !self.queue.inner.lease_fresh() {
            return;
        }
        match self.queue.housekeeping() {
            Ok((back, _)) if back > 0 => {
                let m = &self.shared.metrics;
                m.add(&m.reclaimed, back as u64);
                tracing::warn!(
                    count = back,
                    "took back claims of a dispatcher whose lease expired"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "queue housekeeping failed; retried later"),
        }
        self.release_orphans();
    }

    /// Gives back (`ready`, no owner) the rows `active` under this process's owner name that
    /// no worker holds and that were claimed more than a lease ago: claims whose COMMIT took
    /// effect while the reply was lost, so no worker ever saw them. A row claimed a moment ago
    /// is left alone (its worker may not have registered it yet); giving back a row a worker
    /// still used would be safe anyway, its fence and settle being guarded by the claim counter.
    fn release_orphans(&self) {
        let q = &self.queue.inner;
        let held: Vec<String> = self.held.ids();
        // the queue's own lease: the local fence (`queue/postgres/fence.rs`) trusts claims
        // younger than half of it not to be touched here
        let secs = q.opts.lease.as_secs_f64();
        let sql = format!(
            "WITH u AS (UPDATE {s}.message SET state = 'ready', owner = NULL WHERE state = \
             'active' AND owner = $1 AND NOT (id = ANY($2)) AND claimed_at < now() - \
             make_interval(secs => $3) RETURNING id) SELECT count(*) FROM \
             (SELECT pg_notify($4, '') FROM u) n",
            s = q.s
        );
        let channel = format!("{}_ready", q.s);
        let r = q.conn().and_then(|mut c| {
            c.client
                .query_one(&sql, &[&q.opts.instance.as_str(), &held, &secs, &channel])
                .map_err(crate::queue::postgres::db_error)
        });
        match r.map(|row| row.get::<_, i64>(0)) {
            Ok(0) => {}
            Ok(n) => {
                let m = &self.shared.metrics;
                m.add(&m.reclaimed, n as u64);
                tracing::warn!(
                    count = n,
                    "gave back claims of this process that no worker holds (a claim whose \
                     reply was lost when the connection broke)"
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot look for lost claims; retried later"),
        }
    }

    /// The lease renewal thread: every sixth of a lease, and at least twice per window of the
    /// local fence (`PgOptions::local_fence`, so the fences of a healthy process are answered
    /// from the lease), until the dispatcher stops and no worker holds a claim.
    fn spawn_heartbeat(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let me = Arc::clone(self);
        let mut every = Duration::from_secs(me.shared.cfg.lease_secs) / 6;
        let window = me.queue.inner.opts.local_fence_window();
        if !window.is_zero() {
            every = every.min(window / 2);
        }
        let every = every.max(Duration::from_millis(100));
        std::thread::Builder::new()
            .name("qmail-pg-lease".into())
            .spawn(move || {
                let mut last: Option<Instant> = None;
                // while the database is down: the first failure at ERROR, then a reminder at
                // most every LEASE_LOG_EVERY, and one line when the lease is fresh again
                let mut failing: Option<(Instant, u64, Instant)> = None;
                loop {
                    let sh = &me.shared;
                    if sh.stopping.load(Ordering::SeqCst) && sh.busy.load(Ordering::SeqCst) == 0 {
                        return;
                    }
                    if last.is_none_or(|t| t.elapsed() >= every) {
                        let problem = match me.queue.heartbeat() {
                            Ok(LeaseHealth::Fresh) => None,
                            Ok(h) => Some(format!("the lease is not fresh: {h:?}")),
                            Err(e) => Some(e.to_string()),
                        };
                        match (problem, &mut failing) {
                            (None, None) => {}
                            (None, Some((since, n, _))) => {
                                tracing::info!(failed_renewals = *n,
                                    down_secs = since.elapsed().as_secs(),
                                    "the queue lease is fresh again: claiming");
                                failing = None;
                            }
                            (Some(e), None) => {
                                tracing::error!(error = %e,
                                    "cannot renew the queue lease: claiming nothing; other \
                                     dispatchers take this one's claims back after the lease");
                                failing = Some((Instant::now(), 1, Instant::now()));
                            }
                            (Some(e), Some((since, n, said))) => {
                                *n += 1;
                                if said.elapsed() >= LEASE_LOG_EVERY {
                                    tracing::warn!(error = %e, failed_renewals = *n,
                                        down_secs = since.elapsed().as_secs(),
                                        "the queue lease still cannot be renewed: claiming nothing");
                                    *said = Instant::now();
                                }
                            }
                        }
                        last = Some(Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the lease thread: {e}"))
    }

    fn spawn_workers(self: &Arc<Self>) -> Vec<std::thread::JoinHandle<()>> {
        (0..self.shared.cfg.workers)
            .map(|n| {
                let me = Arc::clone(self);
                std::thread::Builder::new()
                    .name(format!("qmail-pg-worker-{n}"))
                    .spawn(move || me.worker())
                    .unwrap_or_else(|e| panic!("cannot start a worker thread: {e}"))
            })
            .collect()
    }

    fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`, waking early when the dispatcher stops.
    fn pause(&self, d: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < d && !self.stopping() {
            std::thread::sleep(Duration::from_millis(20).min(d));
        }
    }

    fn worker(&self) {
        let sh = &self.shared;
        let mut w = Worker {
            sessions: HashMap::new(),
            fleet: HashMap::new(),
            rng: Jitter::new(),
        };
        let idle = Duration::from_millis(sh.cfg.idle_close_ms.max(10));
        let wait = if sh.drain {
            Duration::ZERO
        } else {
            idle.min(Duration::from_millis(500))
        };
        let mut failures = 0u32;
        let mut expecting = false;
        // a row claimed with this worker's last settle (`GroupSettler::settle_and_claim`)
        let mut next: Option<PgClaim> = None;
        while !self.stopping() {
            let got = match next.take() {
                Some(c) => Ok(Some(c)),
                None => self.feed.next(
                    &self.queue,
                    &self.held,
                    wait,
                    std::mem::take(&mut expecting),
                ),
            };
            match got {
                Ok(None) => {
                    if sh.drain {
                        break;
                    }
                    sh.close_idle(&mut w, idle);
                }
                Ok(Some(c)) => {
                    failures = 0;
                    let id = c.id().to_owned();
                    if self.stopping() {
                        self.settle(&c, Settlement::Release, "release");
                        self.held.let_go(&id);
                        continue;
                    }
                    let go_on = self.process(&mut w, c, &mut expecting, &mut next);
                    self.held.let_go(&id);
                    if !go_on {
                        break;
                    }
                }
                Err(e) => {
                    let pause = clock::io_backoff(failures, CLAIM_BACKOFF_CAP);
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_multiple_of(20) {
                        tracing::warn!(error = %e, backoff_ms = pause.as_millis() as u64,
                            "cannot claim from the queue: claiming nothing until it answers");
                    }
                    if sh.drain && failures > 20 {
                        tracing::error!(error = %e, "drain: the queue does not answer; giving up");
                        break;
                    }
                    self.pause(pause);
                }
            }
        }
        if let Some(c) = next.take() {
            // claimed with the last settle, not attempted (stopping): back to ready
            self.settle(&c, Settlement::Release, "release");
            self.held.let_go(c.id());
        }
        if expecting {
            // counted for a row it will not take: rows claimed beyond the workers still
            // coming go back
            for c in self.feed.unexpect() {
                self.settle(&c, Settlement::Release, "release");
                self.held.let_go(c.id());
            }
        }
        let open: Vec<usize> = w.sessions.keys().copied().collect();
        for i in open {
            sh.drop_session(&mut w, i, true);
        }
    }

    /// One claim: attempt, settle. Returns `false` when this drain worker should stop (it met
    /// a message it already deferred in this drain). A delivered settle also claims this
    /// worker's next row in the same statement, put in `next` (none: the worker claims
    /// through the [`ClaimFeed`]).
    fn process(
        &self,
        w: &mut Worker,
        claim: PgClaim,
        expecting: &mut bool,
        next: &mut Option<PgClaim>,
    ) -> bool {
        let sh = &self.shared;
        let _busy = Busy::enter(&sh.busy);
        if sh.drain && lock(&self.deferred_in_drain).contains(claim.id()) {
            self.settle(&claim, Settlement::Release, "release");
            return false;
        }
        let here = PathBuf::from(format!("postgres:{}", self.queue.schema()));
        let fenced = Fresh {
            claim: &claim,
            max: Duration::from_secs(sh.cfg.lease_secs) / 4,
        };
        let out = match sh.attempt(w, &fenced, &here, None) {
            Ok(o) => o,
            Err(e) => {
                // nothing was accepted: the row goes back with its old state
                tracing::error!(id = %claim.id(), error = %e,
                    "cannot read the message from the queue; given back");
                self.settle(&claim, Settlement::Release, "release");
                return true;
            }
        };
        if !out.newly_failed.is_empty() && sh.cfg.dsn.enabled {
            self.dsn(&claim, &out.newly_failed);
        }
        let kind = match &out.settlement {
            Settlement::Delivered(_) => "delivered",
            Settlement::Deferred { .. } => "deferred",
            Settlement::Failed(_) => "failed",
            Settlement::Corrupt(_) => "corrupt",
            Settlement::Held => "held",
            Settlement::Release => "release",
        };
        if kind == "delivered" {
            // the settle's statement claims this worker's next row too (one commit for both)
            let (_, got) = self.settle_next(&claim, out.settlement, kind, !self.stopping());
            if let Some(c) = got {
                self.held.hold(c.id());
                *next = Some(c);
            }
            return true;
        }
        // this worker asks for its next row as soon as the settle is written: counted now,
        // the next claim (run while this settle waits for its commit) takes a row for it
        self.feed.expect();
        *expecting = true;
        if self.settle(&claim, out.settlement, kind) && kind == "deferred" && sh.drain {
            lock(&self.deferred_in_drain).insert(claim.id().to_owned());
        }
        true
    }

    /// Imports a DSN (RFC 3464) for `failed` into the same queue, from `<>` to the envelope
    /// sender (none for a message from `<>`); logged, never fatal (as for a directory spool).
    fn dsn(&self, claim: &PgClaim, failed: &[crate::FailedRcpt]) {
        let sender = &claim.header().envelope.mail_from;
        if sender.is_empty() {
            return;
        }
        let mut body: Box<dyn std::io::Read + '_> = match claim.body() {
            Ok(b) => b,
            Err(_) => Box::new(std::io::empty()),
        };
        let bytes = crate::dsn::build_for(claim.header(), &mut body, failed, &self.shared.cfg);
        let msg = match RawMessage::parse(&bytes, Some("<>"), Some(std::slice::from_ref(sender))) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "cannot build a delivery status notification");
                return;
            }
        };
        let header = SpoolHeader {
            envelope: msg.envelope().clone(),
            created: now_secs(),
            not_before: msg.not_before(),
            priority: msg.priority().number(),
            message_id: msg.message_id().to_owned(),
        };
        let id = QueueId::generate();
        let len = msg.bytes().len() as u64;
        match self.queue.import(&id, &header, &mut { msg.bytes() }, len) {
            Ok(_) => tracing::info!(dsn = %id, to = %sender, "delivery status notification queued"),
            Err(e) => tracing::error!(error = %e, to = %sender,
                "cannot queue a delivery status notification"),
        }
    }

    /// Writes a settlement, retrying a queue error with a capped backoff (same fencing
    /// token: a retry after a lost COMMIT reply says `LostClaim`, the first one took
    /// effect). Returns whether it was written by this call; counts it in the metrics.
    fn settle(&self, claim: &PgClaim, outcome: Settlement, kind: &str) -> bool {
        self.settle_next(claim, outcome, kind, false).0
    }

    /// [`QueueDispatcher::settle`], with the next row claimed in the same statement when
    /// `want_next` and the outcome is delivered ([`GroupSettler::settle_and_claim`]).
    fn settle_next(
        &self,
        claim: &PgClaim,
        outcome: Settlement,
        kind: &str,
        want_next: bool,
    ) -> (bool, Option<PgClaim>) {
        let sh = &self.shared;
        let mut n = 0u32;
        let mut grace_end = None::<Instant>;
        loop {
            match self.settler.settle_and_claim(
                claim,
                outcome.clone(),
                want_next && !self.stopping(),
            ) {
                Ok(got) => {
                    let m = &sh.metrics;
                    match kind {
                        "delivered" => m.add(&m.delivered, 1),
                        "failed" => m.add(&m.failed, 1),
                        "deferred" => m.add(&m.deferred, 1),
                        "corrupt" => m.add(&m.corrupt, 1),
                        _ => {}
                    }
                    return (true, got);
                }
                Err(SettleError::LostClaim) => {
                    tracing::warn!(id = %claim.id(), outcome = kind,
                        "the claim was taken back by another dispatcher (lease expired), or an \
                         earlier write of this settle took effect; not retried");
                    return (false, None);
                }
                Err(SettleError::Queue(e)) => {
                    let pause = clock::io_backoff(n, SETTLE_BACKOFF_CAP);
                    n = n.saturating_add(1);
                    if n == 1 || n.is_multiple_of(10) {
                        tracing::error!(id = %claim.id(), outcome = kind, error = %e,
                            backoff_ms = pause.as_millis() as u64,
                            "cannot record the outcome in the queue; keeping the claim and retrying");
                    }
                    if matches!(e, QueueError::Corrupt { .. }) {
                        // the state does not encode: no retry can write it
                        return (false, None);
                    }
                    if self.stopping() {
                        // past the grace period the process may exit; until then, retry
                        let end = *grace_end.get_or_insert_with(|| {
                            Instant::now() + Duration::from_secs(sh.cfg.shutdown_grace_secs)
                        });
                        if Instant::now() >= end {
                            tracing::error!(id = %claim.id(),
                                "stopping with an outcome not recorded: another dispatcher \
                                 takes the claim back after the lease and tries again");
                            return (false, None);
                        }
                    }
                    std::thread::sleep(pause);
                }
            }
        }
    }
}

/// The claims of the workers that are idle at the same time, taken with one statement: the
/// first idle worker claims for every worker then waiting, and for every worker whose
/// settle is being written ([`ClaimFeed::expect`]), while the others wait for its answer;
/// each takes one row. A claim thus overlaps the settles' commit, and the rows of one
/// claim are at most as many as the workers about to take them: no row waits for longer
/// than a settle. A worker gets `None` when a claim that started after it arrived is over
/// and left no row for it (the queue had no more ready rows: idle, or the end of a drain).
///
/// No row is left here without a worker to take it: a claim starts only when no row is in
/// hand and asks for as many rows as there are workers waiting or expected; a worker
/// counted by a claim in progress waits for its end (it leaves with a row, or with `None`
/// only once no claim is in progress and no row is in hand); an expected worker that stops
/// instead gives back the rows beyond those still counted ([`ClaimFeed::unexpect`]).
#[derive(Default)]
struct ClaimFeed {
    state: Mutex<FeedState>,
    cv: std::sync::Condvar,
}

#[derive(Default)]
struct FeedState {
    /// Claimed rows not yet taken by a worker.
    rows: std::collections::VecDeque<PgClaim>,
    /// Workers inside [`ClaimFeed::next`].
    waiting: usize,
    /// Workers writing a settle, about to call [`ClaimFeed::next`].
    expected: usize,
    /// Claims started / finished (a worker needs one that started after it arrived).
    started: u64,
    finished: u64,
    /// A claim statement is in progress.
    claiming: bool,
}

impl ClaimFeed {
    /// Counts this worker for the next claim before it calls [`ClaimFeed::next`] (it is
    /// writing a settle).
    fn expect(&self) {
        lock(&self.state).expected += 1;
    }

    /// This expected worker stops instead of calling [`ClaimFeed::next`]: returns the rows
    /// no counted worker will take (to give back).
    fn unexpect(&self) -> Vec<PgClaim> {
        let mut g = lock(&self.state);
        g.expected = g.expected.saturating_sub(1);
        let keep = g.waiting + g.expected;
        let n = g.rows.len().saturating_sub(keep);
        let at = g.rows.len() - n;
        g.rows.drain(at..).collect()
    }

    /// One row for this worker, or `None` (see [`ClaimFeed`]); `wait` is [`Queue::claim`]'s;
    /// the ids of every row claimed go into `held` (the worker removes its row's id after
    /// its settle);
    /// `expected`: this worker called [`ClaimFeed::expect`] since its last row.
    ///
    /// # Errors
    /// [`QueueError`] from [`Queue::claim`], to the worker that ran it (the others get
    /// `None` and try again themselves).
    fn next(
        &self,
        queue: &PgQueue,
        held: &Held,
        wait: Duration,
        expected: bool,
    ) -> std::result::Result<Option<PgClaim>, QueueError> {
        let mut g = lock(&self.state);
        if expected {
            g.expected = g.expected.saturating_sub(1);
        }
        g.waiting += 1;
        let need = g.started + 1;
        let r = loop {
            if let Some(c) = g.rows.pop_front() {
                break Ok(Some(c));
            }
            if !g.claiming {
                if g.finished >= need {
                    break Ok(None);
                }
                g.claiming = true;
                g.started += 1;
                let n = g.waiting + g.expected;
                drop(g);
                let got = queue.claim(n, wait);
                g = lock(&self.state);
                g.claiming = false;
                g.finished = g.started;
                self.cv.notify_all();
                match got {
                    Ok(v) => {
                        // held from the claim's return on (not only once a worker takes
                        // the row): `release_orphans` must never see these as lost
                        for c in &v {
                            held.hold(c.id());
                        }
                        g.rows.extend(v)
                    }
                    Err(e) => break Err(e),
                }
                continue;
            }
            g = self
                .cv
                .wait_timeout(g, Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        };
        g.waiting -= 1;
        r
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unavailable(msg: String) -> Error {
    Error::new(
        ErrorKind::Io,
        format!("the PostgreSQL queue is unavailable: {msg}"),
    )
}

/// The claim as [`Shared::attempt`] sees it: its fence ([`Claim::still_mine`], a round trip to
/// the database) only says yes when the answer came back within `max` (a quarter lease) of
/// the question. A process stopped or starved while the query was in flight (SIGSTOP, a
/// paused VM) may read a "yes" that has become false meanwhile: another dispatcher took the
/// claim back after the lease and delivered the message; sending the final dot then would
/// deliver it twice, outside the end-of-DATA window (seen in `pg_torture.rs`).
struct Fresh<'a> {
    claim: &'a PgClaim,
    max: Duration,
}

impl Claim for Fresh<'_> {
    fn id(&self) -> &str {
        self.claim.id()
    }
    fn header(&self) -> &SpoolHeader {
        self.claim.header()
    }
    fn state(&self) -> &crate::state::MessageState {
        self.claim.state()
    }
    fn body_len(&self) -> u64 {
        self.claim.body_len()
    }
    fn body(&self) -> std::result::Result<Box<dyn std::io::Read + Send + '_>, QueueError> {
        self.claim.body()
    }
    fn still_mine(&self) -> bool {
        let asked = Instant::now();
        let mine = self.claim.still_mine();
        if mine && asked.elapsed() >= self.max {
            tracing::warn!(id = %self.claim.id(), waited_ms = asked.elapsed().as_millis() as u64,
                "fence: the answer came too late to be trusted (this process was stopped or \
                 starved meanwhile); nothing more is sent");
            return false;
        }
        mine
    }
    fn settle(self, outcome: Settlement) -> std::result::Result<(), SettleError> {
        self.claim.settle_ref(outcome)
    }
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
