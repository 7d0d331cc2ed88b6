//! The dispatcher: claims spooled messages and relays them over SMTP (or, with no relay
//! configured, writes them to `SPOOL/outbox/ID.eml`).
//!
//! # Overview
//! - [`claim`]: the claim protocol (rename into `active/ID+INSTANCE`, per-instance leases).
//! - [`state`]: the per-message JSON sidecar (attempts, remaining recipients, diagnosis).
//! - [`schedule`]: which message next (priority with aging, not-before, retry due times),
//!   directory scans and the inotify wake-up.
//! - [`relay`] and [`smtp`]: relay choice (priority, weight, cooldown, limits) and the SMTP
//!   session with per-recipient outcomes.
//! - [`content`]: the re-check of every message read from a spool (no bare CR/LF).
//! - [`retry`]: backoff; [`admin`]: `status`, `show`, `retry`, `requeue-failed`;
//!   [`dsn`]: delivery status notifications; [`metrics`]: counters.
//!
//! # Threads, not async
//! Each worker is a blocking OS thread driving lettre's synchronous `SmtpConnection`. A
//! dispatcher runs a handful to a few dozen concurrent SMTP sessions, not thousands, so a
//! thread per session costs little memory (the body is streamed in 64 KiB chunks), and the
//! blocking code keeps the per-recipient protocol logic linear and easy to audit. The spool
//! work (rename, fsync, unlink) is blocking filesystem I/O anyway, which async runtimes
//! would push to a thread pool. One more thread watches the directories and schedules, one
//! renews the lease.
//!
//! # Outcomes
//! After each attempt the message is, durably: deleted (or moved to `sent/`) once every
//! recipient is delivered; moved to `failed/` when some recipient failed for good and none
//! is left to retry; moved to `deferred/` with a due time otherwise. The state file is
//! written before the rename, so a crash in between is seen and corrected at the next claim.

pub mod admin;
pub mod claim;
pub mod config;
pub mod content;
pub mod dsn;
pub mod metrics;
pub mod relay;
pub mod retry;
pub mod schedule;
pub mod smtp;
pub mod state;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorKind, Result};
use crate::spool::{QueueState, Spool, SpoolFile, now_secs};

pub use config::{DispatchConfig, DsnConfig, RelayConfig, RetryConfig, TimeoutConfig, TlsMode};
pub use metrics::Metrics;
pub use state::{Attempt, FailedRcpt, MessageState, RcptResult, RcptStatus, Reply};

use relay::RelayPool;
use retry::Jitter;
use schedule::{Candidate, CandidateQueue, Dir, Pop};
use smtp::{Session, Transaction, TxError};

/// Directory of the embedded default's delivered messages.
pub const OUTBOX_DIR: &str = "outbox";
/// Directory of delivered messages kept for `sent_retention_secs`.
pub const SENT_DIR: &str = "sent";

/// What a `drain` (or a `run`, at its end) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Messages whose every recipient was delivered.
    pub delivered: u64,
    /// Attempts that left a message deferred.
    pub deferred: u64,
    /// Messages moved to `failed/`.
    pub failed: u64,
    /// Files quarantined in `corrupt/`.
    pub corrupt: u64,
}

struct Shared {
    cfg: DispatchConfig,
    spools: Vec<PathBuf>,
    instance: String,
    pool: RelayPool,
    queue: CandidateQueue,
    metrics: Arc<Metrics>,
    delivery_log: Option<Mutex<File>>,
    drain: bool,
}

/// A dispatcher over one or more spools. Build one per `run` or `drain`.
pub struct Dispatcher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("instance", &self.shared.instance)
            .field("spools", &self.shared.spools)
            .finish()
    }
}

fn io_err(what: impl std::fmt::Display, e: io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("{what}: {e}")).with_source(e)
}

/// Creates the dispatcher's directories in a spool (the queue states, `state/`, `leases/`,
/// `outbox/` when needed, `sent/` when kept).
///
/// # Errors
/// When a directory cannot be created.
pub fn prepare_spool(path: &Path, outbox: bool, sent: bool) -> Result<()> {
    Spool::open(path)?;
    let mut dirs = vec![state::STATE_DIR, claim::LEASE_DIR];
    if outbox {
        dirs.push(OUTBOX_DIR);
    }
    if sent {
        dirs.push(SENT_DIR);
    }
    for d in dirs {
        let p = path.join(d);
        // 0700 like the spool's own directories: state, leases and outbox hold addresses
        // and whole messages
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(&p)
            .map_err(|e| io_err(format_args!("cannot create {}", p.display()), e))?;
    }
    Ok(())
}

impl Dispatcher {
    /// Checks the configuration, prepares the spools and the relays.
    ///
    /// # Errors
    /// A bad configuration ([`ErrorKind::InvalidArgument`]) or an unusable spool.
    pub fn new(cfg: DispatchConfig) -> Result<Dispatcher> {
        Dispatcher::build(cfg, false)
    }

    fn build(cfg: DispatchConfig, drain: bool) -> Result<Dispatcher> {
        let cfg = cfg.resolve()?;
        for r in cfg.relays.iter().filter(|r| r.cleartext_credentials()) {
            // allowed when explicit, never silent (the password itself is never logged)
            tracing::warn!(relay = %r.name, tls = ?r.tls_mode(),
                "credentials without tls=required: the password may cross the network in cleartext");
        }
        for s in &cfg.spools {
            prepare_spool(s, cfg.relays.is_empty(), cfg.sent_retention_secs > 0)?;
        }
        let pool = RelayPool::new(&cfg.relays, cfg.workers)
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, e).with_field("relay"))?;
        let delivery_log = match &cfg.delivery_log {
            Some(p) => Some(Mutex::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| {
                        io_err(
                            format_args!("cannot open the delivery log {}", p.display()),
                            e,
                        )
                    })?,
            )),
            None => None,
        };
        Ok(Dispatcher {
            shared: Arc::new(Shared {
                spools: cfg.spools.clone(),
                instance: claim::new_instance_id(),
                pool,
                queue: CandidateQueue::new(drain),
                metrics: Arc::new(Metrics::default()),
                delivery_log,
                drain,
                cfg,
            }),
        })
    }

    /// This process's instance id (the owner part of its claims).
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// The resolved configuration.
    pub fn config(&self) -> &DispatchConfig {
        &self.shared.cfg
    }

    /// The counters (shared; keep the `Arc` to serve metrics).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Delivers every message that is ready or due now, then returns what happened. Expired
    /// claims of dead dispatchers are taken back first. Messages deferred during the drain
    /// are not retried in it.
    ///
    /// # Errors
    /// When a lease cannot be written.
    pub fn drain(cfg: DispatchConfig) -> Result<Summary> {
        let d = Dispatcher::build(cfg, true)?;
        let sh = &d.shared;
        let leases = d.leases()?;
        let stop = Arc::new(AtomicBool::new(false));
        let renewer = d.spawn_lease_renewal(leases, Arc::clone(&stop));
        // workers first: with a deep queue the first message goes out while the scan goes on
        let workers = d.spawn_workers();
        for (i, s) in sh.spools.iter().enumerate() {
            d.reclaim(s);
            schedule::scan_spool(&sh.queue, i, s, sh.cfg.priority_step_secs);
        }
        sh.queue.filled();
        for w in workers {
            let _ = w.join();
        }
        stop.store(true, Ordering::SeqCst);
        if let Ok(leases) = renewer.join() {
            leases.iter().for_each(claim::Lease::release);
        }
        Ok(sh.metrics.summary())
    }

    fn leases(&self) -> Result<Vec<claim::Lease>> {
        self.shared
            .spools
            .iter()
            .map(|s| {
                claim::Lease::acquire(s, &self.shared.instance)
                    .map_err(|e| io_err(format_args!("cannot write a lease in {}", s.display()), e))
            })
            .collect()
    }

    fn spawn_lease_renewal(
        &self,
        leases: Vec<claim::Lease>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<Vec<claim::Lease>> {
        let every = Duration::from_millis(self.shared.cfg.lease_secs * 1000 / 4);
        std::thread::Builder::new()
            .name("qmail-lease".into())
            .spawn(move || {
                let mut last = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                    if last.elapsed() >= every {
                        for l in &leases {
                            if let Err(e) = l.renew() {
                                tracing::error!(error = %e, "cannot renew the lease; other dispatchers may take back this one's claims");
                            }
                        }
                        last = Instant::now();
                    }
                }
                leases
            })
            .unwrap_or_else(|e| panic!("cannot start the lease thread: {e}"))
    }

    fn reclaim(&self, spool: &Path) {
        let lease = Duration::from_secs(self.shared.cfg.lease_secs);
        match claim::reclaim_expired(spool, &self.shared.instance, lease) {
            Ok(ids) if !ids.is_empty() => {
                self.shared
                    .metrics
                    .add(&self.shared.metrics.reclaimed, ids.len() as u64);
                tracing::warn!(spool = %spool.display(), count = ids.len(), "took back claims of a dispatcher whose lease expired");
            }
            Ok(_) => {}
            Err(e) => tracing::error!(spool = %spool.display(), error = %e, "cannot scan active/"),
        }
    }

    fn spawn_workers(&self) -> Vec<std::thread::JoinHandle<()>> {
        (0..self.shared.cfg.workers)
            .map(|n| {
                let sh = Arc::clone(&self.shared);
                std::thread::Builder::new()
                    .name(format!("qmail-worker-{n}"))
                    .spawn(move || sh.worker())
                    .unwrap_or_else(|e| panic!("cannot start a worker thread: {e}"))
            })
            .collect()
    }

    /// Serves the spools until `stop` becomes true (SIGTERM/SIGINT in the binary): stops
    /// claiming, waits up to `shutdown_grace_secs` for transactions in flight, releases its
    /// lease and returns what it did.
    ///
    /// # Errors
    /// When a lease cannot be written.
    pub fn run(&self, stop: &AtomicBool) -> Result<Summary> {
        let sh = &self.shared;
        let leases = self.leases()?;
        let lease_stop = Arc::new(AtomicBool::new(false));
        let renewer = self.spawn_lease_renewal(leases, Arc::clone(&lease_stop));
        if sh.pool.is_empty() {
            for s in &sh.spools {
                tracing::info!(outbox = %s.join(OUTBOX_DIR).display(), "no relay configured: delivered messages are written to the outbox");
            }
        }
        let (tx, rx) = mpsc::channel::<(usize, Dir, String)>();
        let _watcher = self.watch(tx);
        // workers first: with a deep queue the first message goes out while the scan goes on
        let workers = self.spawn_workers();
        for (i, s) in sh.spools.iter().enumerate() {
            self.reclaim(s);
            schedule::scan_spool(&sh.queue, i, s, sh.cfg.priority_step_secs);
        }
        sh.queue.filled();
        let rescan = Duration::from_millis(sh.cfg.rescan_ms);
        let reclaim_every = Duration::from_secs((sh.cfg.lease_secs / 2).max(1));
        let (mut last_scan, mut last_reclaim, mut last_purge) =
            (Instant::now(), Instant::now(), Instant::now());
        let step = sh.cfg.priority_step_secs;
        while !stop.load(Ordering::SeqCst) {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((i, dir, id)) => {
                    let now = now_secs();
                    match dir {
                        Dir::Ready => schedule::add_ready(&sh.queue, i, &sh.spools[i], &id, step),
                        Dir::Scheduled => {
                            schedule::add_scheduled(&sh.queue, i, &sh.spools[i], &id, step, now)
                        }
                        Dir::Deferred => {
                            schedule::add_deferred(&sh.queue, i, &sh.spools[i], &id, now)
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(100))
                }
            }
            sh.queue.promote_due(now_secs());
            if last_reclaim.elapsed() >= reclaim_every {
                for s in &sh.spools {
                    self.reclaim(s);
                }
                last_reclaim = Instant::now();
            }
            if last_scan.elapsed() >= rescan {
                for (i, s) in sh.spools.iter().enumerate() {
                    schedule::scan_spool(&sh.queue, i, s, step);
                    if sh.cfg.sent_retention_secs > 0 {
                        purge_sent(s, sh.cfg.sent_retention_secs);
                    }
                }
                last_scan = Instant::now();
            }
            if last_purge.elapsed() >= Duration::from_secs(3600) {
                for s in &sh.spools {
                    purge_stale(s);
                }
                last_purge = Instant::now();
            }
        }
        tracing::info!("stopping: no new claims; waiting for transactions in flight");
        sh.queue.stop();
        let deadline = Instant::now() + Duration::from_secs(sh.cfg.shutdown_grace_secs);
        while Instant::now() < deadline && workers.iter().any(|w| !w.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let all_done = workers.iter().all(|w| w.is_finished());
        lease_stop.store(true, Ordering::SeqCst);
        if let Ok(leases) = renewer.join()
            && all_done
        {
            leases.iter().for_each(claim::Lease::release);
        }
        if !all_done {
            tracing::warn!(
                "grace period over with transactions in flight; their claims are taken back when this process exits"
            );
        }
        Ok(sh.metrics.summary())
    }

    fn watch(&self, tx: mpsc::Sender<(usize, Dir, String)>) -> Option<notify::RecommendedWatcher> {
        use notify::{EventKind, RecursiveMode, Watcher, event::ModifyKind, event::RenameMode};
        let mut dirs: Vec<(PathBuf, usize, Dir)> = Vec::new();
        for (i, s) in self.shared.spools.iter().enumerate() {
            dirs.push((s.join("ready"), i, Dir::Ready));
            dirs.push((s.join("scheduled"), i, Dir::Scheduled));
        }
        let map = dirs.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            let wanted = matches!(
                ev.kind,
                EventKind::Create(_)
                    | EventKind::Modify(ModifyKind::Name(
                        RenameMode::To | RenameMode::Both | RenameMode::Any
                    ))
                    | EventKind::Any
            );
            if !wanted {
                return;
            }
            for p in &ev.paths {
                let (Some(parent), Some(name)) =
                    (p.parent(), p.file_name().and_then(|n| n.to_str()))
                else {
                    continue;
                };
                if let Some((_, i, d)) = map.iter().find(|(dir, _, _)| dir == parent) {
                    let _ = tx.send((*i, *d, name.to_owned()));
                }
            }
        };
        let mut w = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "no filesystem notifications; relying on the periodic rescan");
                return None;
            }
        };
        for (d, _, _) in &dirs {
            if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %d.display(), error = %e, "cannot watch; relying on the periodic rescan");
            }
        }
        Some(w)
    }
}

/// Files an initiator or a dispatcher left half-written by a crash: `tmp/*` and the
/// `*.tmp` of `state/` and `outbox/`, older than a day.
fn purge_stale(spool: &Path) {
    let old = SystemTime::now() - Duration::from_secs(86_400);
    for (dir, all) in [
        ("tmp", true),
        (state::STATE_DIR, false),
        (OUTBOX_DIR, false),
    ] {
        let Ok(rd) = fs::read_dir(spool.join(dir)) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let stale_name = all || name.to_string_lossy().ends_with(".tmp");
            if stale_name
                && let Ok(m) = e.metadata().and_then(|m| m.modified())
                && m < old
            {
                tracing::info!(file = %e.path().display(), "removing a stale temporary file");
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

fn purge_sent(spool: &Path, retention: u64) {
    use std::os::unix::fs::MetadataExt;
    let now = now_secs();
    if let Ok(rd) = fs::read_dir(spool.join(SENT_DIR)) {
        for e in rd.flatten() {
            if let Ok(m) = e.metadata()
                && now - m.ctime() > retention as i64
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A worker's open relay sessions.
struct Worker {
    sessions: HashMap<usize, (Session, Instant)>,
    rng: Jitter,
}

/// A message this worker claimed.
struct Claimed<'a> {
    spool_idx: usize,
    spool: &'a Path,
    id: &'a str,
    path: PathBuf,
}

impl Shared {
    fn worker(self: Arc<Self>) {
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

    fn close_idle(&self, w: &mut Worker, idle: Duration) {
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

    fn drop_session(&self, w: &mut Worker, i: usize, quit: bool) {
        if let Some((s, _)) = w.sessions.remove(&i) {
            if quit {
                s.quit()
            } else {
                s.abort()
            }
            self.pool.give_slot(i);
        }
    }

    fn process(&self, w: &mut Worker, c: Candidate) {
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

    fn handle(&self, w: &mut Worker, cl: &Claimed<'_>) -> io::Result<()> {
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

    fn quarantine(&self, cl: &Claimed<'_>, why: &str) {
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

    fn to_outbox(
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

    /// Sends through the relays: failover to the next relay when one cannot be used,
    /// reconnection (not counted) when a reused connection turns out dead.
    fn via_relays(
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
                        self.metrics.add(&self.metrics.connections, 1);
                        w.sessions.insert(i, (s, Instant::now()));
                    }
                    Err(e) => {
                        self.pool.give_slot(i);
                        if e.relay_fault {
                            self.pool.cool_down(i);
                        }
                        tracing::warn!(relay = %name, reply = %e.reply, "relay unusable; trying the next one");
                        self.metrics.add(&self.metrics.relay_failures, 1);
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

    #[allow(clippy::too_many_arguments)]
    fn settle(
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
        self.log_attempt(cl, &attempt);
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
    fn wait_deferred(&self, cl: &Claimed<'_>, created: i64, due: i64) {
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

    fn lost_claim(&self, cl: &Claimed<'_>, e: io::Error) -> io::Result<()> {
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

    fn log_attempt(&self, cl: &Claimed<'_>, a: &state::Attempt) {
        let to_log = tracing::enabled!(target: "qmail::delivery", tracing::Level::INFO);
        if !to_log && self.delivery_log.is_none() {
            return;
        }
        let last = a
            .results
            .last()
            .map(|r| r.reply.clone())
            .unwrap_or_else(|| Reply::local(""));
        let line = serde_json::json!({
            "ts_ms": a.at_ms,
            "id": cl.id,
            "spool": cl.spool,
            "attempt": a.number,
            "relay": a.relay,
            "recipients": a.results.iter().map(|r| &r.rcpt).collect::<Vec<_>>(),
            "code": last.code,
            "reply": last.text,
            "results": a.results,
            "duration_ms": a.duration_ms,
            "instance": a.instance,
        })
        .to_string();
        if to_log {
            tracing::info!(target: "qmail::delivery", "{line}");
        }
        if let Some(f) = &self.delivery_log {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}
