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
use crate::spool::{QueueId, Spool, SpoolOptions};

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
    /// [`ErrorKind::NoSpoolConfigured`] for an empty list.
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

    fn spread(
        &self,
        named: Option<&Path>,
        submit: impl Fn(&Spool) -> Result<QueueId>,
    ) -> Result<QueueId> {
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
    if let Some(p) = message.spool() {
        return Spool::open(p)?.submit(message);
    }
    default_initiator()?.submit(message)
}
