//! The dispatcher's lifecycle: build, `run`, `drain`, the lease renewal thread and the watch.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, Instant};

use qmail_core::error::{Error, ErrorKind, Result};
use qmail_core::spool::{Spool, now_secs};

use crate::claim::{Identity, Lease};
use crate::clock::{Clock, SpoolClock};
use crate::housekeeping::{check_layout, purge_retention, purge_sent, purge_stale};
use crate::queue::dir::quarantine_strays;
use crate::relay::RelayPool;
use crate::schedule::{self, CandidateQueue, Dir};
use crate::*;

/// This process's leases, one per spool, and the thread that renews them. Shared by the
/// dispatchers of one process across SIGHUP reloads (the instance id and the renewal survive
/// a reload); the renewal stops, and the lease files are removed, when the last dispatcher
/// using it (and the last worker still finishing under it) is gone.
#[derive(Debug)]
pub(crate) struct LeaseSet {
    pub(crate) instance: String,
    pub(crate) identity: Identity,
    lease: Duration,
    clock: Arc<dyn Clock>,
    leases: Mutex<HashMap<PathBuf, Arc<Lease>>>,
}

impl LeaseSet {
    pub(crate) fn new(instance: String, lease: Duration, clock: Arc<dyn Clock>) -> Arc<LeaseSet> {
        let set = Arc::new(LeaseSet {
            instance,
            identity: Identity::current(),
            lease,
            clock,
            leases: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&set);
        // renew every sixth of a lease: a lease is fresh up to half a lease, so two
        // renewals may be late before claiming and DATA stop
        let every = (lease / 6).max(Duration::from_millis(50));
        let spawned = std::thread::Builder::new()
            .name("qmail-lease".into())
            .spawn(move || renew_loop(weak, every));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the lease thread: the lease will go stale and nothing will be claimed");
        }
        set
    }

    fn lease_for(&self, spool: &Path) -> io::Result<Arc<Lease>> {
        let mut m = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = m.get(spool) {
            return Ok(Arc::clone(l));
        }
        let l = Arc::new(Lease::acquire(
            spool,
            &self.instance,
            self.lease,
            Arc::clone(&self.clock),
        )?);
        m.insert(spool.to_owned(), Arc::clone(&l));
        Ok(l)
    }

    fn all(&self) -> Vec<Arc<Lease>> {
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

impl Drop for LeaseSet {
    fn drop(&mut self) {
        // nobody can still hold a claim of this instance: every worker is gone
        for l in self.all() {
            l.release();
        }
    }
}

fn renew_loop(set: Weak<LeaseSet>, every: Duration) {
    let mut last = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let Some(set) = set.upgrade() else { return };
        if last.elapsed() < every {
            continue;
        }
        for l in set.all() {
            if let Err(e) = l.renew() {
                tracing::error!(lease = %l.path().display(), error = %e,
                    "cannot renew the lease; no claim or DATA once it is half a lease old, and other dispatchers take this one's claims back after a lease");
            }
        }
        last = Instant::now();
    }
}

pub(crate) struct Shared {
    pub(crate) cfg: DispatchConfig,
    pub(crate) spools: Vec<PathBuf>,
    pub(crate) instance: String,
    pub(crate) pool: RelayPool,
    pub(crate) queue: CandidateQueue,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) delivery_log: Option<Mutex<File>>,
    pub(crate) drain: bool,
    pub(crate) leases: Arc<LeaseSet>,
    /// The lease of each spool, by index.
    pub(crate) lease_of: Vec<Arc<Lease>>,
    /// Set when this dispatcher stops claiming.
    pub(crate) stopping: Arc<AtomicBool>,
    /// Consecutive spool I/O errors (for the backoff).
    pub(crate) io_failures: AtomicU32,
    /// Workers holding a claim right now.
    pub(crate) busy: AtomicUsize,
    /// No worker claims before this instant (backoff after a spool I/O error).
    pub(crate) io_pause: Mutex<Option<Instant>>,
    /// The DKIM keys, loaded at build (so again at each SIGHUP rebuild).
    pub(crate) dkim: crate::dkim::Signer,
    /// Fleet-wide relay limits of a shared queue (`route.rs`); `None` for directory spools,
    /// whose limits are this process's alone.
    pub(crate) limits: Option<Arc<dyn crate::queue::RelayLimits>>,
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

pub(crate) fn io_err(what: impl std::fmt::Display, e: io::Error) -> Error {
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
    /// Checks the configuration, prepares the spools and the relays, and takes a lease on
    /// each spool (renewed from now on).
    ///
    /// # Errors
    /// A bad configuration ([`ErrorKind::InvalidArgument`]), an unusable spool, or a spool
    /// whose directories are not safe to serve (owner or mode; the message names the
    /// directory and the fix).
    pub fn new(cfg: DispatchConfig) -> Result<Dispatcher> {
        Dispatcher::build(cfg, false, None, None)
    }

    /// As [`Dispatcher::new`], counting into `metrics`: the binary keeps one [`Metrics`] for
    /// the life of the process, so counters survive a SIGHUP reload ([`Dispatcher::reload`]
    /// keeps them too).
    ///
    /// # Errors
    /// As [`Dispatcher::new`].
    pub fn with_metrics(cfg: DispatchConfig, metrics: Arc<Metrics>) -> Result<Dispatcher> {
        Dispatcher::build(cfg, false, None, Some(metrics))
    }

    /// A dispatcher with a new configuration that keeps this one's instance id and leases
    /// (SIGHUP): the workers of this one that are still finishing a transaction keep their
    /// claims, and the lease stays renewed until they are done. A changed `lease_secs` takes
    /// effect at the next start.
    ///
    /// # Errors
    /// As [`Dispatcher::new`].
    pub fn reload(&self, cfg: DispatchConfig) -> Result<Dispatcher> {
        if cfg.lease_secs != self.shared.cfg.lease_secs {
            tracing::warn!(
                old = self.shared.cfg.lease_secs,
                new = cfg.lease_secs,
                "SIGHUP: lease_secs changes at the next start, not at a reload"
            );
        }
        Dispatcher::build(
            cfg,
            false,
            Some(Arc::clone(&self.shared.leases)),
            Some(Arc::clone(&self.shared.metrics)),
        )
    }

    /// Workers holding a claim right now (transactions in flight).
    pub fn in_flight(&self) -> usize {
        self.shared.busy.load(Ordering::SeqCst)
    }

    fn build(
        cfg: DispatchConfig,
        drain: bool,
        leases: Option<Arc<LeaseSet>>,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Dispatcher> {
        let cfg = cfg.resolve()?;
        for r in cfg.relays.iter().filter(|r| r.cleartext_credentials()) {
            // allowed when explicit, never silent (the password itself is never logged)
            tracing::warn!(relay = %r.name, tls = ?r.tls_mode(),
                "credentials without tls=required: the password may cross the network in cleartext");
        }
        for s in &cfg.spools {
            prepare_spool(s, cfg.relays.is_empty(), cfg.sent_retention_secs > 0)?;
            check_layout(s)?;
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
        let leases = leases.unwrap_or_else(|| {
            LeaseSet::new(
                claim::new_instance_id(),
                Duration::from_secs(cfg.lease_secs),
                Arc::new(SpoolClock),
            )
        });
        let lease_of = cfg
            .spools
            .iter()
            .map(|s| {
                leases
                    .lease_for(s)
                    .map_err(|e| io_err(format_args!("cannot write a lease in {}", s.display()), e))
            })
            .collect::<Result<Vec<_>>>()?;
        let dkim = crate::dkim::Signer::load(&cfg.dkim).map_err(|e| {
            Error::new(ErrorKind::InvalidArgument, e.to_string()).with_field("dkim")
        })?;
        Ok(Dispatcher {
            shared: Arc::new(Shared {
                dkim,
                spools: cfg.spools.clone(),
                instance: leases.instance.clone(),
                pool,
                queue: CandidateQueue::new(drain),
                metrics: metrics.unwrap_or_default(),
                delivery_log,
                drain,
                cfg,
                leases,
                lease_of,
                stopping: Arc::new(AtomicBool::new(false)),
                io_failures: AtomicU32::new(0),
                busy: AtomicUsize::new(0),
                io_pause: Mutex::new(None),
                limits: None,
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
    /// claims of dead dispatchers are taken back first, stale `tmp/` files removed. Messages
    /// deferred during the drain are not retried in it.
    ///
    /// # Errors
    /// When a lease cannot be written.
    pub fn drain(cfg: DispatchConfig) -> Result<Summary> {
        let d = Dispatcher::build(cfg, true, None, None)?;
        let sh = &d.shared;
        for (i, s) in sh.spools.iter().enumerate() {
            d.housekeep(i, s);
        }
        // workers first: with a deep queue the first message goes out while the scan goes on
        let workers = d.spawn_workers();
        for (i, s) in sh.spools.iter().enumerate() {
            d.reclaim(i, s);
            schedule::scan_spool(&sh.queue, i, s, sh.cfg.priority_step_secs);
        }
        sh.queue.filled();
        for w in workers {
            let _ = w.join();
        }
        Ok(sh.metrics.summary())
    }

    /// Start-of-run and hourly housekeeping of one spool: stale temporaries (`tmp/` files
    /// older than `tmp_max_age_secs`), stray names in the queue directories.
    pub(crate) fn housekeep(&self, i: usize, s: &Path) {
        let sh = &self.shared;
        purge_stale(s, sh.cfg.tmp_max_age_secs, sh.lease_of[i].spool_now());
        purge_retention(s, &sh.cfg);
        let n = quarantine_strays(s);
        if n > 0 {
            sh.metrics.add(&sh.metrics.corrupt, n as u64);
        }
    }

    pub(crate) fn reclaim(&self, i: usize, spool: &Path) {
        let sh = &self.shared;
        let lease = &sh.lease_of[i];
        if !lease.is_fresh() {
            // a stale lease means a stale "now" too: judge nobody
            return;
        }
        let dur = Duration::from_secs(sh.cfg.lease_secs);
        match claim::reclaim_expired(
            spool,
            &sh.instance,
            dur,
            &sh.leases.identity,
            lease.spool_now(),
        ) {
            Ok(r) => {
                if !r.ids.is_empty() {
                    sh.metrics.add(&sh.metrics.reclaimed, r.ids.len() as u64);
                    tracing::warn!(spool = %spool.display(), count = r.ids.len(), "took back claims of a dispatcher whose lease expired");
                }
                if !r.conflicts.is_empty() {
                    sh.metrics
                        .add(&sh.metrics.corrupt, r.conflicts.len() as u64);
                }
            }
            Err(e) => tracing::error!(spool = %spool.display(), error = %e, "cannot scan active/"),
        }
    }

    pub(crate) fn spawn_workers(&self) -> Vec<std::thread::JoinHandle<()>> {
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

    /// Serves the spools until `stop` becomes true (SIGTERM/SIGINT/SIGHUP in the binary):
    /// stops claiming, waits up to `shutdown_grace_secs` for transactions in flight and
    /// returns what it did. The lease is kept renewed while any worker still holds a claim
    /// (also past the grace period, for as long as this process lives); it is removed when
    /// the last user of it is gone.
    ///
    /// # Errors
    /// When a lease cannot be written.
    pub fn run(&self, stop: &AtomicBool) -> Result<Summary> {
        let sh = &self.shared;
        if sh.pool.is_empty() {
            for s in &sh.spools {
                tracing::info!(outbox = %s.join(OUTBOX_DIR).display(), "no relay configured: delivered messages are written to the outbox");
            }
        }
        for (i, s) in sh.spools.iter().enumerate() {
            self.housekeep(i, s);
        }
        let (tx, rx) = mpsc::channel::<(usize, Dir, String)>();
        let _watcher = self.watch(tx);
        // workers first: with a deep queue the first message goes out while the scan goes on
        let workers = self.spawn_workers();
        for (i, s) in sh.spools.iter().enumerate() {
            self.reclaim(i, s);
            schedule::scan_spool(&sh.queue, i, s, sh.cfg.priority_step_secs);
        }
        sh.queue.filled();
        let rescan = Duration::from_millis(sh.cfg.rescan_ms);
        let reclaim_every = Duration::from_millis((sh.cfg.lease_secs * 1000 / 2).max(500));
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
                for (i, s) in sh.spools.iter().enumerate() {
                    self.reclaim(i, s);
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
                for (i, s) in sh.spools.iter().enumerate() {
                    self.housekeep(i, s);
                }
                last_purge = Instant::now();
            }
        }
        let busy = self.in_flight();
        tracing::info!(
            in_flight = busy,
            "stopping: no new claims; waiting up to {} s for transactions in flight",
            sh.cfg.shutdown_grace_secs
        );
        sh.queue.stop();
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
                "grace period over with transactions in flight: they go on under this instance, whose lease stays renewed while they run; if the process exits now, other dispatchers take their claims back after lease_secs"
            );
        }
        Ok(sh.metrics.summary())
    }

    pub(crate) fn watch(
        &self,
        tx: mpsc::Sender<(usize, Dir, String)>,
    ) -> Option<notify::RecommendedWatcher> {
        use notify::{RecursiveMode, Watcher};
        let mut dirs: Vec<(PathBuf, usize, Dir)> = Vec::new();
        for (i, s) in self.shared.spools.iter().enumerate() {
            dirs.push((s.join("ready"), i, Dir::Ready));
            dirs.push((s.join("scheduled"), i, Dir::Scheduled));
        }
        let map = dirs.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            if !crate::schedule::is_arrival(&ev.kind) {
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
