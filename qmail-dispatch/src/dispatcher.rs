//! The dispatcher's lifecycle: build, `run`, `drain`, the lease renewal thread and the watch.

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

use crate::housekeeping::{purge_retention, purge_sent, purge_stale};
use crate::relay::RelayPool;
use crate::retry::Jitter;
use crate::schedule::{self, Candidate, CandidateQueue, Dir, Pop};
use crate::smtp::{Session, Transaction, TxError};
use crate::worker::{Claimed, Worker, now_ms};
use crate::*;

pub(crate) struct Shared {
    pub(crate) cfg: DispatchConfig,
    pub(crate) spools: Vec<PathBuf>,
    pub(crate) instance: String,
    pub(crate) pool: RelayPool,
    pub(crate) queue: CandidateQueue,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) delivery_log: Option<Mutex<File>>,
    pub(crate) drain: bool,
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
    /// Checks the configuration, prepares the spools and the relays.
    ///
    /// # Errors
    /// A bad configuration ([`ErrorKind::InvalidArgument`]) or an unusable spool.
    pub fn new(cfg: DispatchConfig) -> Result<Dispatcher> {
        Dispatcher::build(cfg, false)
    }

    /// As [`Dispatcher::new`], counting into `metrics`: the binary keeps one [`Metrics`] for
    /// the life of the process, so a SIGHUP reload (a new `Dispatcher`) keeps every counter.
    ///
    /// # Errors
    /// As [`Dispatcher::new`].
    pub fn with_metrics(cfg: DispatchConfig, metrics: Arc<Metrics>) -> Result<Dispatcher> {
        let mut d = Dispatcher::build(cfg, false)?;
        // just built: the only owner of its Shared
        if let Some(sh) = Arc::get_mut(&mut d.shared) {
            sh.metrics = metrics;
        }
        Ok(d)
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

    pub(crate) fn leases(&self) -> Result<Vec<claim::Lease>> {
        self.shared
            .spools
            .iter()
            .map(|s| {
                claim::Lease::acquire(s, &self.shared.instance)
                    .map_err(|e| io_err(format_args!("cannot write a lease in {}", s.display()), e))
            })
            .collect()
    }

    pub(crate) fn spawn_lease_renewal(
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

    pub(crate) fn reclaim(&self, spool: &Path) {
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
                    purge_retention(s, &sh.cfg);
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

    pub(crate) fn watch(
        &self,
        tx: mpsc::Sender<(usize, Dir, String)>,
    ) -> Option<notify::RecommendedWatcher> {
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
