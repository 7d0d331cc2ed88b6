//! The directory spool's side of the seam: a [`DirClaim`] is `active/ID+INSTANCE`, its fence
//! the existence of that name under a fresh lease of an unchanged epoch, and its settle the
//! directory moves of `docs/spool-format.md`.
//!
//! Settling never turns knowledge into loss: once a recipient was accepted, the new state is
//! written before the message leaves `active/`; a write that fails with a transient error
//! (`ENOSPC`, `EIO`, quota, ...) is retried with capped exponential backoff while the claim
//! (and this process's lease) is kept; an unrecoverable one moves the message to `failed/`
//! with the diagnosis in the log, never back to the queue with the old state.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use qmail_core::error::ErrorKind;
use qmail_core::spool::{QueueState, SpoolFile, SpoolHeader, now_secs};

use crate::claim::{self, Lease};
use crate::clock;
use crate::queue::{Claim, QueueError, SettleError, Settlement};
use crate::schedule::Dir;
use crate::state::{self, MessageState, StateError};
use crate::{OUTBOX_DIR, SENT_DIR};

/// Directory of messages on hold (contract C3).
pub const HOLD_DIR: &str = "hold";

/// What a directory claim needs of its dispatcher.
#[derive(Debug, Clone)]
pub struct DirCtx {
    /// The spool directory.
    pub spool: PathBuf,
    /// This process's instance id.
    pub instance: String,
    /// This process's lease on the spool.
    pub lease: Arc<Lease>,
    /// fsync state changes.
    pub durable: bool,
    /// Delivered messages go to `sent/` instead of being deleted.
    pub keep_sent: bool,
    /// Set when the dispatcher stops: a state write that keeps failing then gives up (the
    /// message goes to `failed/` with its diagnosis) instead of retrying on.
    pub stopping: Arc<AtomicBool>,
    /// Cap of the backoff between retries of a failing spool write.
    pub io_cap: Duration,
    /// Where the open file of a delivered (unlinked) message is closed, off the worker:
    /// `None` = closed in place.
    pub closer: Option<Closer>,
}

/// Closes the files of delivered messages on threads of their own.
///
/// The last `close(2)` of an unlinked file is where ext4 frees its inode and blocks; with the
/// `discard` mount option it also waits for the device to discard them (on the benchmark
/// machine: a median of 177 µs and a p90 of 2.2 ms per 2 KiB message, inside the worker's
/// turn). The message left the spool at the `unlink(2)` (the point the delivery guarantee
/// rests on); the open descriptor is invisible to every other dispatcher, so when it is
/// closed changes nothing but who waits. Those waits overlap: the device discards for many
/// closers at once (closing 3,000 such files: ~900/s from one thread, ~4,000–9,000/s from 8,
/// ~13,000–18,000/s from 16), hence [`Closer::THREADS`] threads. At most [`Closer::BACKLOG`]
/// files wait (a full backlog is closed in place), so the process holds at most that many
/// extra descriptors.
#[derive(Debug, Clone)]
pub struct Closer(std::sync::mpsc::SyncSender<SpoolFile>);

impl Closer {
    /// Files waiting to be closed, at most.
    pub const BACKLOG: usize = 256;
    /// Closing threads.
    pub const THREADS: usize = 16;

    /// The process's closer, started at the first call (shared by every dispatcher of the
    /// process); `None` when no thread can be started (files are closed in place).
    pub fn shared() -> Option<Closer> {
        static SHARED: std::sync::OnceLock<Option<Closer>> = std::sync::OnceLock::new();
        SHARED.get_or_init(Closer::start).clone()
    }

    /// Starts [`Closer::THREADS`] closing threads; they end when every [`Closer`] is
    /// dropped, after closing what is left. `None` when no thread can be started.
    pub fn start() -> Option<Closer> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<SpoolFile>(Closer::BACKLOG);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let mut started = 0;
        for n in 0..Closer::THREADS {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("qmail-closer-{n}"))
                .spawn(move || {
                    loop {
                        // the lock is held while waiting, not while closing
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match next {
                            Ok(f) => drop(f),
                            Err(_) => return,
                        }
                    }
                });
            if spawned.is_ok() {
                started += 1;
            }
        }
        (started > 0).then_some(Closer(tx))
    }

    /// Hands `file` over to be closed (closed here when the backlog is full).
    pub fn close(&self, file: SpoolFile) {
        // full (or the threads are gone): the error hands the file back, dropped (closed) here
        let _ = self.0.try_send(file);
    }
}

/// The result of trying to claim one name.
#[derive(Debug)]
pub enum Taken {
    /// Claimed: attempt it, then settle.
    Claimed(Box<DirClaim>),
    /// Another dispatcher was first, or it moved (or the lease went stale meanwhile and the
    /// claim was given back).
    Gone,
    /// The file or its state is unusable: moved to `corrupt/` (counted by the caller).
    Quarantined,
    /// Claimed before its due time (a crash between the state write and the rename to
    /// `deferred/`): put back in `deferred/`, due then (Unix seconds).
    NotDue(i64),
}

/// A message claimed from a directory spool: `active/ID+INSTANCE`.
#[derive(Debug)]
pub struct DirClaim {
    ctx: DirCtx,
    id: String,
    path: PathBuf,
    epoch: u64,
    /// The open spool file (the DSN reads it too).
    pub file: SpoolFile,
    /// The whole spool file, read with one `pread(2)` when it is small (the message is then
    /// served from here): `None` for a large one, streamed from `file`.
    whole: Option<Vec<u8>>,
    state: MessageState,
    had_state: bool,
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> QueueError + '_ {
    move |source| QueueError::Io {
        path: path.to_owned(),
        source,
    }
}

impl DirClaim {
    /// Claims `from/ID` (`ready/`, `deferred/` or `scheduled/`) by renaming it to
    /// `active/ID+INSTANCE`, then opens and checks it. Claims nothing unless the lease is fresh
    /// before and after the rename, under one epoch.
    ///
    /// # Errors
    /// [`QueueError::Io`] naming the path.
    pub fn take(ctx: DirCtx, id: &str, from: Dir) -> Result<Taken, QueueError> {
        let epoch = ctx.lease.epoch();
        if !ctx.lease.is_fresh() {
            return Ok(Taken::Gone);
        }
        let src = ctx.spool.join(from.state().dir_name()).join(id);
        let path = match claim::claim(&ctx.spool, id, from.state(), &ctx.instance) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(Taken::Gone),
            Err(e) => return Err(io_at(&src)(e)),
        };
        if ctx.lease.epoch() != epoch || !ctx.lease.is_fresh() {
            // stalled in the middle of claiming: give it back untouched
            let _ = claim::give_back(&path, &ctx.spool, id, from.state());
            return Ok(Taken::Gone);
        }
        let (file, whole) = match open_spool_file(&path) {
            Ok(f) => f,
            Err(Open::Corrupt(why)) => {
                quarantine(&ctx, id, &path, &why);
                return Ok(Taken::Quarantined);
            }
            Err(Open::Io(e)) => {
                let _ = claim::give_back(&path, &ctx.spool, id, from.state());
                return Err(io_at(&path)(e));
            }
        };
        let (state, had_state) =
            match MessageState::load_checked(&ctx.spool, id, &file.header.envelope) {
                Ok(Some(s)) => (s, true),
                Ok(None) => (MessageState::default(), false),
                Err(StateError::Invalid { path: sp, reason }) => {
                    let why = format!("state file {}: {reason}", sp.display());
                    quarantine(&ctx, id, &path, &why);
                    return Ok(Taken::Quarantined);
                }
                Err(StateError::Io { path: sp, source }) => {
                    let _ = claim::give_back(&path, &ctx.spool, id, from.state());
                    return Err(QueueError::Io { path: sp, source });
                }
            };
        if state.next_due > now_secs() {
            match claim::give_back(&path, &ctx.spool, id, QueueState::Deferred) {
                Ok(()) => return Ok(Taken::NotDue(state.next_due)),
                Err(e) => return Err(io_at(&path)(e)),
            }
        }
        Ok(Taken::Claimed(Box::new(DirClaim {
            ctx,
            id: id.to_owned(),
            path,
            epoch,
            file,
            whole,
            state,
            had_state,
        })))
    }

    /// `active/ID+INSTANCE`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn spool(&self) -> &Path {
        &self.ctx.spool
    }

    /// Runs a spool write, retrying transient errors with capped exponential backoff while
    /// the dispatcher runs. Returns the last error when it gives up (unrecoverable error, or
    /// stopping).
    fn retrying(
        &self,
        what: &str,
        mut f: impl FnMut() -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut n = 0u32;
        loop {
            match f() {
                Ok(()) => {
                    if n > 0 {
                        tracing::info!(id = %self.id, what, retries = n, "spool write succeeded after retrying");
                    }
                    return Ok(());
                }
                Err(e) if clock::is_transient(&e) && !self.ctx.stopping.load(Ordering::SeqCst) => {
                    let pause = clock::io_backoff(n, self.ctx.io_cap);
                    tracing::error!(id = %self.id, what, error = %e, retry_in_ms = pause.as_millis() as u64,
                        "cannot write the spool; keeping the claim and what this attempt learnt, retrying");
                    let t0 = Instant::now();
                    while t0.elapsed() < pause && !self.ctx.stopping.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20).min(pause));
                    }
                    n = n.saturating_add(1);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn save(&self, st: &MessageState) -> std::io::Result<()> {
        st.save(self.spool(), &self.id, &self.ctx.instance, self.ctx.durable)
    }

    fn move_to(&self, to: QueueState) -> Result<(), SettleError> {
        match claim::give_back(&self.path, self.spool(), &self.id, to) {
            Ok(()) => {
                if self.ctx.durable {
                    let dir = self.spool().join(to.dir_name());
                    self.retrying("fsync", || claim::sync_dir(&dir))
                        .map_err(io_at(&dir))?;
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SettleError::LostClaim),
            Err(e) => Err(io_at(&self.path)(e).into()),
        }
    }

    /// The state could not be written at all: the message must not go back to the queue
    /// with its old state when this attempt delivered to someone. It goes to `failed/` (a
    /// rename, which needs no space), with the diagnosis in the log.
    fn fail_unwritable(&self, st: &MessageState, e: std::io::Error) -> Result<(), SettleError> {
        let sp = state::state_path(self.spool(), &self.id);
        tracing::error!(
            id = %self.id,
            state = %sp.display(),
            error = %e,
            delivered = ?st.delivered,
            remaining = ?st.remaining,
            "cannot write the message state; moving the message to failed/ so that it is never resent to the recipients already delivered"
        );
        self.move_to(QueueState::Failed)?;
        Err(QueueError::Io {
            path: sp,
            source: e,
        }
        .into())
    }

    fn newly_delivered(&self, st: &MessageState) -> bool {
        st.delivered
            .iter()
            .any(|r| !self.state.delivered.contains(r))
    }
}

enum Open {
    Corrupt(String),
    Io(std::io::Error),
}

/// Spool files up to this size (header and trailer included) are read whole, in one
/// `pread(2)`, when claimed: the message is then sent from memory (the SMTP layer sends a
/// message up to [`crate::smtp::SMALL_BODY`] from memory anyway).
const READ_WHOLE: u64 = crate::smtp::SMALL_BODY + 4096;

/// Opens a claimed spool file without following a symlink and without blocking on a FIFO;
/// anything but a complete regular spool file is corrupt. A small file is also read whole
/// (one `pread(2)`) and framed from those bytes.
fn open_spool_file(path: &Path) -> Result<(SpoolFile, Option<Vec<u8>>), Open> {
    let f = match clock::open_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(Open::Corrupt("a symlink, not a spool file".into()));
        }
        Err(e) => return Err(Open::Io(e)),
    };
    let size = match f.metadata() {
        Ok(m) if !m.is_file() => return Err(Open::Corrupt("not a regular file".into())),
        Ok(m) => m.len(),
        Err(e) => return Err(Open::Io(e)),
    };
    let whole = if size <= READ_WHOLE {
        let mut v = vec![0u8; size as usize];
        match std::os::unix::fs::FileExt::read_exact_at(&f, &mut v, 0) {
            Ok(()) => Some(v),
            // shorter than its size said: SpoolFile's own checks say what is wrong
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
            Err(e) => return Err(Open::Io(e)),
        }
    } else {
        None
    };
    // a file read whole is framed from those bytes (no more system calls)
    let framed = match &whole {
        Some(w) => SpoolFile::from_file_with_bytes(f, w),
        None => SpoolFile::from_file(f),
    };
    let file = framed.map_err(|e| {
        if e.kind() == ErrorKind::Corrupt {
            Open::Corrupt(e.message().to_owned())
        } else {
            Open::Io(std::io::Error::other(e.to_string()))
        }
    })?;
    // the body's bytes as SpoolFile framed them (checked against the size read)
    let whole = whole.filter(|w| {
        file.body_offset
            .checked_add(file.body_len)
            .is_some_and(|end| end <= w.len() as u64)
    });
    Ok((file, whole))
}

/// Moves a claim to `corrupt/ID` (never replacing a name there) and records why.
pub(crate) fn quarantine(ctx: &DirCtx, id: &str, path: &Path, why: &str) {
    let dir = ctx.spool.join(QueueState::Corrupt.dir_name());
    let dst = dir.join(id);
    let moved = clock::rename_noreplace(path, &dst).or_else(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            clock::rename_noreplace(
                path,
                &dir.join(format!("{id}.{}", qmail_core::random_hex(4))),
            )
        } else {
            Err(e)
        }
    });
    match moved {
        Ok(()) => {
            tracing::error!(id, reason = why, to = %dst.display(), "unusable spool file moved to corrupt/");
            // the reason goes in a state file of its own; an invalid one is replaced
            let st = MessageState {
                reason: Some(format!("corrupt: {why}")),
                ..MessageState::default()
            };
            let _ = st.save(&ctx.spool, id, &ctx.instance, ctx.durable);
        }
        Err(e) => {
            tracing::error!(id, error = %e, "cannot move an unusable file to corrupt/")
        }
    }
}

impl Claim for DirClaim {
    fn id(&self) -> &str {
        &self.id
    }

    fn header(&self) -> &SpoolHeader {
        &self.file.header
    }

    fn state(&self) -> &MessageState {
        &self.state
    }

    fn body_len(&self) -> u64 {
        self.file.body_len
    }

    fn body(&self) -> Result<Box<dyn std::io::Read + Send + '_>, QueueError> {
        if let Some(w) = &self.whole {
            // framed by open_spool_file: body_offset + body_len <= w.len()
            let (from, len) = (self.file.body_offset as usize, self.file.body_len as usize);
            if let Some(b) = w.get(from..from + len) {
                return Ok(Box::new(b));
            }
        }
        self.file
            .body_reader()
            .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>)
            .map_err(|e| QueueError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(e.to_string()),
            })
    }

    fn still_mine(&self) -> bool {
        self.ctx.lease.epoch() == self.epoch
            && self.ctx.lease.is_fresh()
            && fs::symlink_metadata(&self.path).is_ok()
    }

    fn settle(self, outcome: Settlement) -> Result<(), SettleError> {
        // a delivered message's unlink (or rename to sent/) says NotFound by itself when the
        // claim was taken back; every other settlement writes a state first: check before
        if !matches!(outcome, Settlement::Delivered(_)) && fs::symlink_metadata(&self.path).is_err()
        {
            return Err(SettleError::LostClaim);
        }
        match outcome {
            Settlement::Delivered(_) => {
                // every recipient delivered: the only point where the message leaves the spool
                let r = if self.ctx.keep_sent {
                    fs::rename(&self.path, self.spool().join(SENT_DIR).join(&self.id))
                } else {
                    fs::remove_file(&self.path)
                };
                match r {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(SettleError::LostClaim);
                    }
                    Err(e) => return Err(io_at(&self.path)(e).into()),
                }
                if self.had_state {
                    let _ = MessageState::remove(self.spool(), &self.id);
                }
                // no fsync of active/ here (as Postfix after a delivery): an unlink lost to a
                // power failure only brings the message back for one more delivery
                if let Some(c) = &self.ctx.closer {
                    c.close(self.file);
                }
                Ok(())
            }
            Settlement::Deferred { state: st, .. } => {
                match self.retrying("state", || self.save(&st)) {
                    Ok(()) => self.move_to(QueueState::Deferred),
                    Err(e) if self.newly_delivered(&st) => self.fail_unwritable(&st, e),
                    Err(e) => {
                        // nothing new was accepted: the old state is still true
                        tracing::error!(id = %self.id, error = %e, "cannot write the message state; deferring it with its previous state");
                        self.move_to(QueueState::Deferred)
                    }
                }
            }
            Settlement::Failed(st) => match self.retrying("state", || self.save(&st)) {
                Ok(()) => self.move_to(QueueState::Failed),
                Err(e) => self.fail_unwritable(&st, e),
            },
            Settlement::Corrupt(why) => {
                quarantine(&self.ctx, &self.id, &self.path, &why);
                Ok(())
            }
            Settlement::Held => {
                let dir = self.spool().join(HOLD_DIR);
                std::os::unix::fs::DirBuilderExt::mode(
                    fs::DirBuilder::new().recursive(true),
                    0o700,
                )
                .create(&dir)
                .map_err(io_at(&dir))?;
                clock::rename_noreplace(&self.path, &dir.join(&self.id))
                    .map_err(io_at(&self.path))?;
                Ok(())
            }
            Settlement::Release => {
                let to = if self.had_state {
                    QueueState::Deferred
                } else {
                    QueueState::Ready
                };
                self.move_to(to)
            }
        }
    }
}

/// Moves the entries of the queue directories whose names are not queue ids (or claims
/// whose names do not split into an id and an owner) to `corrupt/`; returns how many.
pub fn quarantine_strays(spool: &Path) -> usize {
    let corrupt = spool.join(QueueState::Corrupt.dir_name());
    let mut n = 0;
    for dir in [
        QueueState::Ready,
        QueueState::Scheduled,
        QueueState::Deferred,
        QueueState::Failed,
        QueueState::Active,
    ] {
        let Ok(rd) = fs::read_dir(spool.join(dir.dir_name())) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let ok = match name.to_str() {
                Some(s) if dir == QueueState::Active => claim::split_claim_name(s)
                    .is_some_and(|(id, _)| qmail_core::QueueId::parse(id).is_ok()),
                Some(s) => qmail_core::QueueId::parse(s).is_ok(),
                None => false,
            };
            if ok {
                continue;
            }
            let safe: String = name
                .to_string_lossy()
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() && c != '/' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(100)
                .collect();
            let dst = corrupt.join(format!(
                "stray.{}.{safe}.{}",
                dir.dir_name(),
                qmail_core::random_hex(4)
            ));
            if clock::rename_noreplace(&e.path(), &dst).is_ok() {
                tracing::error!(file = %e.path().display(), to = %dst.display(),
                    "a file whose name is not a queue id moved to corrupt/");
                n += 1;
            }
        }
    }
    n
}

/// The outbox directory of a spool.
pub fn outbox_dir(spool: &Path) -> PathBuf {
    spool.join(OUTBOX_DIR)
}

/// A directory spool as a [`Queue`](crate::queue::Queue): claims come from a scan of
/// `ready/`, due `scheduled/` and due `deferred/` (priority with aging, as the dispatcher's
/// scheduler), polling every 50 ms while waiting. The dispatcher itself drives a directory
/// spool through its own scheduler (inotify, in-memory due times) and [`DirClaim`]; this is
/// the same queue behind the seam, for code written against [`Queue`](crate::queue::Queue).
#[derive(Debug)]
pub struct DirQueue {
    ctx: DirCtx,
    lease_secs: Duration,
    priority_step_secs: u64,
    identity: claim::Identity,
}

impl DirQueue {
    /// Prepares `spool` (the dispatcher's directories), checks its layout, takes a lease on it
    /// as `instance` (see [`claim`]) and serves it. Renew the lease
    /// with [`Queue::heartbeat`](crate::queue::Queue::heartbeat) at least every
    /// `lease / 6`.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] for a spool that cannot be prepared or is unsafe to serve;
    /// [`QueueError::Io`] when the lease cannot be written.
    pub fn open(
        spool: &Path,
        instance: &str,
        lease: Duration,
        clock: Arc<dyn clock::Clock>,
        durable: bool,
    ) -> Result<DirQueue, QueueError> {
        let unusable = |e: qmail_core::Error| QueueError::Unavailable(e.to_string());
        crate::prepare_spool(spool, false, false).map_err(unusable)?;
        crate::housekeeping::check_layout(spool).map_err(unusable)?;
        let l = Lease::acquire(spool, instance, lease, clock).map_err(|source| QueueError::Io {
            path: spool.join(claim::LEASE_DIR).join(instance),
            source,
        })?;
        Ok(DirQueue {
            ctx: DirCtx {
                spool: spool.to_owned(),
                instance: instance.to_owned(),
                lease: Arc::new(l),
                durable,
                keep_sent: false,
                stopping: Arc::new(AtomicBool::new(false)),
                io_cap: Duration::from_secs(30),
                closer: None,
            },
            lease_secs: lease,
            priority_step_secs: 60,
            identity: claim::Identity::current(),
        })
    }

    /// This queue's lease.
    pub fn lease(&self) -> &Lease {
        &self.ctx.lease
    }
}

impl crate::queue::Queue for DirQueue {
    type Claim = DirClaim;

    fn claim(&self, max: usize, wait: Duration) -> Result<Vec<DirClaim>, QueueError> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            if self.ctx.lease.is_fresh() {
                let q = crate::schedule::CandidateQueue::new(true);
                crate::schedule::scan_spool(&q, 0, &self.ctx.spool, self.priority_step_secs);
                q.filled();
                q.promote_due(now_secs());
                while out.len() < max {
                    let crate::schedule::Pop::Got(c) = q.pop(Duration::ZERO) else {
                        break;
                    };
                    if let Taken::Claimed(cl) = DirClaim::take(self.ctx.clone(), &c.id, c.from)? {
                        out.push(*cl);
                    }
                }
            }
            if !out.is_empty() || max == 0 || Instant::now() >= deadline {
                return Ok(out);
            }
            std::thread::sleep(
                Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
    }

    fn heartbeat(&self) -> Result<crate::queue::LeaseHealth, QueueError> {
        self.ctx.lease.renew().map_err(|source| QueueError::Io {
            path: self.ctx.lease.path().to_owned(),
            source,
        })?;
        Ok(self.ctx.lease.health())
    }

    fn reclaim_expired(&self) -> Result<usize, QueueError> {
        if !self.ctx.lease.is_fresh() {
            return Ok(0);
        }
        let active = self.ctx.spool.join(QueueState::Active.dir_name());
        claim::reclaim_expired(
            &self.ctx.spool,
            &self.ctx.instance,
            self.lease_secs,
            &self.identity,
            self.ctx.lease.spool_now(),
        )
        .map(|r| r.ids.len())
        .map_err(|source| QueueError::Io {
            path: active,
            source,
        })
    }
}
