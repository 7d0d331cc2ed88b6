//! The initiator: where submits go when a message names no spool.
//!
//! An [`Initiator`] holds one or more spools. Messages are spread over them round-robin; a spool
//! that fails with a transient error (share unreachable, disk full, permission denied) is
//! skipped and the next one tried; the last error is returned only when every spool failed. A
//! message that names its own spool ([`crate::MessageBuilder::set_spool`]) goes there and only
//! there.
//!
//! The process-wide default initiator is set with [`set_default_spool`], or read once from the
//! `QMAIL_SPOOL` environment variable: one or more directories separated by the platform's
//! path-list separator (':' on Unix), e.g. `QMAIL_SPOOL=/var/spool/qmail:/mnt/nfs/qmail`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::raw::RawMessage;
use crate::spool::{PendingSubmit, QueueId, Spool, SpoolHeader, SpoolOptions};

/// The environment variable naming the default spool(s).
pub const SPOOL_ENV: &str = "QMAIL_SPOOL";

/// Spools to submit to, with round-robin and skipping of failed spools. Safe to share between
/// threads.
#[derive(Debug)]
pub struct Initiator {
    spools: Vec<PathBuf>,
    options: SpoolOptions,
    next: AtomicUsize,
    open: Mutex<HashMap<PathBuf, Spool>>,
}

impl Initiator {
    /// An initiator over these spool directories (opened lazily, so one that is down at start
    /// does not stop the others).
    ///
    /// # Errors
    /// [`ErrorKind::NoSpoolConfigured`] for an empty list; [`ErrorKind::InvalidArgument`]
    /// naming `spool` for a path that is relative or padded with spaces
    /// ([`check_spool_path`]).
    pub fn new(
        spools: impl IntoIterator<Item = impl Into<PathBuf>>,
        options: SpoolOptions,
    ) -> Result<Initiator> {
        let spools: Vec<PathBuf> = spools
            .into_iter()
            .map(Into::into)
            .filter(|p: &PathBuf| !p.as_os_str().is_empty())
            .collect();
        if spools.is_empty() {
            return Err(no_spool());
        }
        for p in &spools {
            check_spool_path(p)?;
        }
        Ok(Initiator {
            spools,
            options,
            next: AtomicUsize::new(0),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Parses a path list (`QMAIL_SPOOL` syntax) into an initiator.
    ///
    /// # Errors
    /// [`ErrorKind::NoSpoolConfigured`] when the list holds no path.
    pub fn from_list(list: &str, options: SpoolOptions) -> Result<Initiator> {
        Initiator::new(std::env::split_paths(list), options)
    }

    /// The spool directories, in order.
    pub fn spools(&self) -> &[PathBuf] {
        &self.spools
    }

    fn spool(&self, path: &Path) -> Result<Spool> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = open.get(path) {
            return Ok(s.clone());
        }
        let s = Spool::open_with(path, self.options)?;
        open.insert(path.to_owned(), s.clone());
        Ok(s)
    }

    fn spread<T>(&self, named: Option<&Path>, submit: impl Fn(&Spool) -> Result<T>) -> Result<T> {
        if let Some(p) = named {
            return submit(&self.spool(p)?);
        }
        let n = self.spools.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let path = &self.spools[(start + i) % n];
            match self.spool(path).and_then(|s| submit(&s)) {
                Ok(id) => return Ok(id),
                Err(e) if e.kind() == ErrorKind::SpoolUnavailable => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(no_spool))
    }

    /// Submits a message: to its own spool if it names one, else round-robin over this
    /// initiator's spools, skipping failed ones.
    ///
    /// # Errors
    /// As [`Spool::submit`]; [`ErrorKind::SpoolUnavailable`] (the last spool's error) when all
    /// spools failed.
    pub fn submit(&self, message: &Message) -> Result<QueueId> {
        self.spread(message.spool(), |s| s.submit(message))
    }

    /// Submits a raw message (see [`RawMessage`]) the same way; `spool` overrides the spread.
    ///
    /// # Errors
    /// As [`Initiator::submit`].
    pub fn submit_raw(&self, message: &RawMessage, spool: Option<&Path>) -> Result<QueueId> {
        self.spread(spool, |s| s.submit_raw(message))
    }

    /// Begins a streamed spool file ([`Spool::begin`]) on the next spool that takes it.
    ///
    /// # Errors
    /// As [`Initiator::submit`].
    pub fn begin(&self, header: &SpoolHeader) -> Result<PendingSubmit> {
        self.spread(None, |s| s.begin(header))
    }
}

/// Checks a spool directory given by a caller: absolute, without leading or trailing
/// whitespace (a path from a settings file padded with a space would otherwise make a new
/// spool nobody dispatches from; a relative one would depend on the working directory).
///
/// # Errors
/// [`ErrorKind::InvalidArgument`] naming `spool`; [`ErrorKind::NoSpoolConfigured`] for an
/// empty path.
pub fn check_spool_path(p: &Path) -> Result<()> {
    let bad = |m: String| Error::new(ErrorKind::InvalidArgument, m).with_field("spool");
    let s = p.to_string_lossy();
    if s.is_empty() {
        return Err(no_spool());
    }
    if s.trim() != s {
        return Err(bad(format!(
            "spool path {s:?} starts or ends with whitespace"
        )));
    }
    if !p.is_absolute() {
        return Err(bad(format!(
            "spool path {s:?} is relative; give an absolute directory"
        )));
    }
    Ok(())
}

/// Where a submit goes, as [`route`] decides it.
#[derive(Debug, Clone)]
pub enum Target {
    /// One spool directory.
    Spool(Spool),
    /// Several spools with round-robin and fail-over: the default initiator, or one of the
    /// caller's.
    Pool(Arc<Initiator>),
}

impl Target {
    /// Submits a built message here.
    ///
    /// # Errors
    /// As [`Spool::submit`] / [`Initiator::submit`].
    pub fn submit(&self, message: &Message) -> Result<QueueId> {
        match self {
            Target::Spool(s) => s.submit(message),
            Target::Pool(i) => i.spread(None, |s| s.submit(message)),
        }
    }

    /// Submits a raw message here.
    ///
    /// # Errors
    /// As [`Spool::submit_raw`].
    pub fn submit_raw(&self, message: &RawMessage) -> Result<QueueId> {
        match self {
            Target::Spool(s) => s.submit_raw(message),
            Target::Pool(i) => i.submit_raw(message, None),
        }
    }

    /// Begins a streamed spool file here.
    ///
    /// # Errors
    /// As [`Spool::begin`].
    pub fn begin(&self, header: &SpoolHeader) -> Result<PendingSubmit> {
        match self {
            Target::Spool(s) => s.begin(header),
            Target::Pool(i) => i.begin(header),
        }
    }
}

/// The one spool-routing rule of every front end: the spool named for this submit (the call's,
/// else the message's own), else the process default ([`set_default_spool`]), else
/// `QMAIL_SPOOL`. `options` applies to a named spool (default: [`SpoolOptions::default`]).
///
/// # Errors
/// [`ErrorKind::InvalidArgument`] naming `spool` ([`check_spool_path`]);
/// [`ErrorKind::SpoolUnavailable`] when the named spool cannot be opened;
/// [`ErrorKind::NoSpoolConfigured`] when nothing names a spool.
pub fn route(named: Option<&Path>, options: Option<SpoolOptions>) -> Result<Target> {
    match named {
        Some(p) => {
            check_spool_path(p)?;
            Ok(Target::Spool(Spool::open_with(
                p,
                options.unwrap_or_default(),
            )?))
        }
        None => Ok(Target::Pool(default_initiator()?)),
    }
}

fn no_spool() -> Error {
    Error::new(
        ErrorKind::NoSpoolConfigured,
        "no spool configured: name one on the message, call set_default_spool, or set QMAIL_SPOOL",
    )
    .with_field("spool")
}

static DEFAULT: RwLock<Option<Arc<Initiator>>> = RwLock::new(None);

/// Sets the process-wide default spool(s) from a path list (`QMAIL_SPOOL` syntax), durable.
///
/// # Errors
/// [`ErrorKind::NoSpoolConfigured`] for an empty list.
pub fn set_default_spool(list: &str) -> Result<()> {
    set_default_spool_with(list, SpoolOptions::default())
}

/// As [`set_default_spool`], with explicit [`SpoolOptions`].
///
/// # Errors
/// As [`set_default_spool`].
pub fn set_default_spool_with(list: &str, options: SpoolOptions) -> Result<()> {
    let init = Arc::new(Initiator::from_list(list, options)?);
    *DEFAULT.write().unwrap_or_else(|p| p.into_inner()) = Some(init);
    Ok(())
}

/// The default initiator: the one set by [`set_default_spool`], else one made from
/// `QMAIL_SPOOL`.
///
/// # Errors
/// [`ErrorKind::NoSpoolConfigured`] when neither is set.
pub fn default_initiator() -> Result<Arc<Initiator>> {
    if let Some(i) = DEFAULT.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        return Ok(i.clone());
    }
    let list = std::env::var_os(SPOOL_ENV).ok_or_else(no_spool)?;
    let init = Arc::new(Initiator::new(
        std::env::split_paths(&list),
        SpoolOptions::default(),
    )?);
    let mut w = DEFAULT.write().unwrap_or_else(|p| p.into_inner());
    Ok(w.get_or_insert(init).clone())
}

/// Submits through the default initiator (or to the message's own spool).
///
/// # Errors
/// As [`Initiator::submit`]; [`ErrorKind::NoSpoolConfigured`].
pub fn submit(message: &Message) -> Result<QueueId> {
    route(message.spool(), None)?.submit(message)
}
