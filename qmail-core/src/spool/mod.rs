//! The spool: a directory whose subdirectories are the queue states (as Postfix's queue).
//!
//! ```text
//! SPOOL/tmp/        being written by an initiator (never read by a dispatcher)
//! SPOOL/ready/      committed, due now: a dispatcher may claim it
//! SPOOL/scheduled/  committed, held until its not-before time
//! SPOOL/active/     claimed by a dispatcher (see docs/spool-format.md for the claim protocol)
//! SPOOL/deferred/   a temporary failure; retried later
//! SPOOL/failed/     permanent failure or queue lifetime exceeded (dead letters)
//! SPOOL/corrupt/    files that could not be parsed, kept for a human
//! SPOOL/hold/       put on hold by an operator: never claimed, never expired (Postfix's hold queue)
//! ```
//! A message's state is the directory its file is in; a state change is one `rename(2)`.
//!
//! # Durability
//! A submit writes `tmp/ID` (created with `O_EXCL`, mode 0640 by default), writes the header,
//! the message and the trailer, `fsync`s the file, renames it into `ready/` (or `scheduled/`)
//! and `fsync`s that directory (in the two-user layout, where the initiator may not open it,
//! the file once more: see "Two users"). After `Ok` the message survives a crash or power loss; a
//! dispatcher never sees a half-written file. With `durable = false` both syncs are skipped
//! (faster; a crash may lose the last submits, never expose a partial one).
//!
//! # Errors
//! I/O failures on the spool are [`ErrorKind::SpoolUnavailable`] (transient: another spool or
//! a later try may work); unreadable attachments are [`ErrorKind::Attachment`]. On any error the
//! temporary file is removed: nothing is left in `ready/`.
//!
//! # Two users
//! In a deployment the web application (the initiator) and the dispatcher run as different
//! users, as Postfix's maildrop/postdrop: `qmail-dispatcher spool init DIR` makes the spool
//! root 0750 and `tmp/ ready/ scheduled/` mode 3730, owned by the dispatcher user and group
//! `qmail-submit` (setgid: files keep the group; sticky: no web user removes another's file;
//! no group read: no web user lists the queue); every other directory is the dispatcher's
//! alone. Files are created 0640 so that the dispatcher (a member of the group) reads them.
//! [`Spool::open`] then creates nothing and changes no mode; a dispatcher-only directory it
//! cannot create is left to the dispatcher.

pub mod queue_id;
pub mod record;
pub mod status;

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::raw::RawMessage;
pub use queue_id::{MessageId, QueueId, short_host_name};
pub use record::{SpoolFile, SpoolHeader};

/// The queue states, each one directory of the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueState {
    /// `tmp/`: being written.
    Tmp,
    /// `ready/`: due now, waiting for a dispatcher.
    Ready,
    /// `scheduled/`: held until its not-before time.
    Scheduled,
    /// `active/`: claimed by a dispatcher.
    Active,
    /// `deferred/`: waiting for a retry.
    Deferred,
    /// `failed/`: dead letters, with their diagnosis.
    Failed,
    /// `corrupt/`: unparseable files.
    Corrupt,
    /// `hold/`: put on hold by an operator (`qmail-dispatcher hold ID`); no dispatcher claims
    /// it and the queue lifetime does not fail it; `release` moves it back (Postfix's hold
    /// queue, `postsuper -h`/`-H`).
    Held,
}

impl QueueState {
    /// Every state, in lifecycle order.
    pub const ALL: [QueueState; 8] = [
        QueueState::Tmp,
        QueueState::Ready,
        QueueState::Scheduled,
        QueueState::Active,
        QueueState::Deferred,
        QueueState::Failed,
        QueueState::Corrupt,
        QueueState::Held,
    ];

    /// The directory name.
    pub fn dir_name(self) -> &'static str {
        match self {
            QueueState::Tmp => "tmp",
            QueueState::Ready => "ready",
            QueueState::Scheduled => "scheduled",
            QueueState::Active => "active",
            QueueState::Deferred => "deferred",
            QueueState::Failed => "failed",
            QueueState::Corrupt => "corrupt",
            QueueState::Held => "hold",
        }
    }
}

/// How a spool is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolOptions {
    /// fsync the file and the directory on submit (default true).
    pub durable: bool,
    /// Mode of spool files (default 0o640: readable by the spool's group, so by a dispatcher
    /// running as another user in that group; 0o600 for one user alone). Directories created
    /// by [`Spool::open`] get the same bits plus search (x) where read is granted.
    pub file_mode: u32,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            durable: true,
            file_mode: 0o640,
        }
    }
}

/// An open spool directory. Cheap to clone; safe to use from many threads and processes at
/// once (no locks: every submit has its own unique file name).
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    options: SpoolOptions,
}

fn unavailable(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::io(ErrorKind::SpoolUnavailable, what, e).with_field("spool")
}

/// fsyncs a directory (open it and `sync_all`; no unsafe needed).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Opens a spool with default options (durable, files 0640), creating the directory and
    /// its state subdirectories when missing (see "Two users" in the module docs: a directory
    /// only the dispatcher writes, which this user may not create, is left to the dispatcher).
    ///
    /// # Errors
    /// [`ErrorKind::SpoolUnavailable`] naming `spool` when the directory cannot be created or
    /// is not a directory.
    pub fn open(path: impl AsRef<Path>) -> Result<Spool> {
        Spool::open_with(path, SpoolOptions::default())
    }

    /// Opens a spool with explicit options (see [`Spool::open`]).
    ///
    /// # Errors
    /// As [`Spool::open`]; [`ErrorKind::InvalidArgument`] for a file mode over 0o777.
    pub fn open_with(path: impl AsRef<Path>, options: SpoolOptions) -> Result<Spool> {
        let root = path.as_ref().to_owned();
        if root.as_os_str().is_empty() {
            return Err(
                Error::new(ErrorKind::NoSpoolConfigured, "the spool path is empty")
                    .with_field("spool"),
            );
        }
        if options.file_mode & 0o002 != 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "file mode {:o} makes spool files world-writable",
                    options.file_mode
                ),
            )
            .with_field("file_mode"));
        }
        if options.file_mode > 0o777 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("file mode {:o} is over 0777", options.file_mode),
            )
            .with_field("file_mode"));
        }
        let m = options.file_mode;
        let dir_mode = 0o700
            | (m & 0o077)
            | if m & 0o040 != 0 { 0o010 } else { 0 }
            | if m & 0o004 != 0 { 0o001 } else { 0 };
        let mut b = fs::DirBuilder::new();
        b.recursive(true).mode(dir_mode);
        for st in QueueState::ALL {
            let d = root.join(st.dir_name());
            if st == QueueState::Held {
                // the dispatcher's directory (0700 in the two-user layout): an initiator may
                // not be allowed to create it, and never needs it
                if !d.is_dir() {
                    let _ = b.create(&d);
                }
                continue;
            }
            if !d.is_dir() {
                match b.create(&d) {
                    Ok(()) => {}
                    // an initiator in the submit group cannot create active/, deferred/, ...:
                    // those are the dispatcher's, which creates them; tmp/ ready/ scheduled/
                    // are what a submit needs
                    Err(e)
                        if e.kind() == std::io::ErrorKind::PermissionDenied
                            && !matches!(
                                st,
                                QueueState::Tmp | QueueState::Ready | QueueState::Scheduled
                            ) => {}
                    Err(e) => {
                        return Err(unavailable(
                            format_args!("cannot create {}", d.display()),
                            e,
                        ));
                    }
                }
            }
        }
        Ok(Spool { root, options })
    }

    /// The spool's directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The options it writes with.
    pub fn options(&self) -> SpoolOptions {
        self.options
    }

    /// The directory of a queue state.
    pub fn state_dir(&self, state: QueueState) -> PathBuf {
        self.root.join(state.dir_name())
    }

    /// Validates nothing more (the message is valid once built), renders the message into the
    /// spool and commits it (see the module docs for the steps and durability). Returns the
    /// queue id.
    ///
    /// # Errors
    /// [`ErrorKind::SpoolUnavailable`] (disk full, permission denied, share gone: transient);
    /// [`ErrorKind::Attachment`] naming `attachments[N]` when a file attachment cannot be read.
    pub fn submit(&self, message: &Message) -> Result<QueueId> {
        let header = SpoolHeader {
            envelope: message.envelope().clone(),
            created: now_secs(),
            not_before: message.not_before(),
            priority: message.priority().number(),
            message_id: message.message_id().to_owned(),
        };
        self.commit(&header, |w| message.render(w))
    }

    /// Spools a message composed elsewhere (Python's `email`, nodemailer), prepared by
    /// [`RawMessage::parse`].
    ///
    /// # Errors
    /// As [`Spool::submit`].
    pub fn submit_raw(&self, message: &RawMessage) -> Result<QueueId> {
        let header = SpoolHeader {
            envelope: message.envelope().clone(),
            created: now_secs(),
            not_before: message.not_before(),
            priority: message.priority().number(),
            message_id: message.message_id().to_owned(),
        };
        self.commit(&header, |w| {
            w.write_all(message.bytes())
                .map_err(|e| Error::io(ErrorKind::Io, "cannot write", e))?;
            Ok(message.bytes().len() as u64)
        })
    }

    fn commit(
        &self,
        header: &SpoolHeader,
        body: impl FnOnce(&mut BufWriter<File>) -> Result<u64>,
    ) -> Result<QueueId> {
        let mut pending = self.begin(header)?;
        let len = body(&mut pending.w).map_err(|e| match e.kind() {
            ErrorKind::Io => match e.io_error() {
                Some(io) => unavailable(
                    "cannot write the spool file",
                    std::io::Error::new(io.kind(), io.to_string()),
                ),
                None => Error::new(ErrorKind::SpoolUnavailable, e.message()).with_field("spool"),
            },
            _ => e,
        })?;
        pending.len = len;
        pending.commit()
    }

    /// Starts a spool file whose message bytes are written piece by piece
    /// ([`PendingSubmit::write`]): `tmp/ID` is created exclusively and the spool header
    /// written. Nothing is visible to a dispatcher until [`PendingSubmit::commit`]; dropping the
    /// [`PendingSubmit`] removes the file. Used for messages streamed from another library
    /// (`RawStream`), so memory stays bounded whatever the message size.
    ///
    /// # Errors
    /// [`ErrorKind::SpoolUnavailable`] naming `spool`; [`ErrorKind::InvalidMessage`] for an
    /// envelope too large for the spool header.
    pub fn begin(&self, header: &SpoolHeader) -> Result<PendingSubmit> {
        // encoded once, before any file exists: an oversized envelope leaves nothing behind
        let encoded = record::encode_header(header)?;
        let id = QueueId::generate();
        let tmp = self.state_dir(QueueState::Tmp).join(id.as_str());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(self.options.file_mode)
            .open(&tmp)
            .map_err(|e| unavailable(format_args!("cannot create {}", tmp.display()), e))?;
        let mut pending = PendingSubmit {
            spool: self.clone(),
            header: header.clone(),
            encoded_len: encoded.len(),
            id,
            tmp,
            w: BufWriter::with_capacity(128 * 1024, file),
            len: 0,
            done: false,
        };
        // umask may have cleared bits the caller asked for (e.g. 0640 under umask 077)
        if self.options.file_mode & 0o077 != 0 {
            pending
                .w
                .get_ref()
                .set_permissions(fs::Permissions::from_mode(self.options.file_mode))
                .map_err(|e| unavailable("cannot set the file mode", e))?;
        }
        record::write_encoded_header(&mut pending.w, &encoded)
            .map_err(|e| unavailable("cannot write the spool file", e))?;
        Ok(pending)
    }
}

/// A spool file being written: `tmp/ID` with its header, waiting for the message bytes. See
/// [`Spool::begin`]. Dropped without [`PendingSubmit::commit`], the file is removed.
#[derive(Debug)]
pub struct PendingSubmit {
    spool: Spool,
    header: SpoolHeader,
    encoded_len: usize,
    id: QueueId,
    tmp: PathBuf,
    w: BufWriter<File>,
    len: u64,
    done: bool,
}

impl PendingSubmit {
    /// Appends message bytes (already CRLF, as the dispatcher will send them).
    ///
    /// # Errors
    /// [`ErrorKind::SpoolUnavailable`] naming `spool`.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.w
            .write_all(bytes)
            .map_err(|e| unavailable("cannot write the spool file", e))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// The spool header as begun.
    pub fn header(&self) -> &SpoolHeader {
        &self.header
    }

    /// Marks the envelope as needing 8BITMIME (RFC 6152), learnt from the bytes streamed; the
    /// header is rewritten in place at commit (its encoded length does not change).
    pub fn set_eightbitmime(&mut self) {
        self.header.envelope.eightbitmime = true;
    }

    /// Writes the trailer, fsyncs (when durable), renames into `ready/` (or `scheduled/`) and
    /// fsyncs the directory; returns the queue id.
    ///
    /// # Errors
    /// [`ErrorKind::SpoolUnavailable`] naming `spool`; the file is removed.
    pub fn commit(mut self) -> Result<QueueId> {
        record::write_trailer(&mut self.w, self.len)
            .map_err(|e| unavailable("cannot write the spool file", e))?;
        self.w
            .flush()
            .map_err(|e| unavailable("cannot write the spool file", e))?;
        let file = self.w.get_ref();
        if self.header.envelope.eightbitmime {
            let encoded = record::encode_header(&self.header)?;
            if encoded.len() != self.encoded_len {
                return Err(Error::new(
                    ErrorKind::SpoolUnavailable,
                    "the spool header changed length when rewritten",
                )
                .with_field("spool"));
            }
            use std::os::unix::fs::FileExt;
            file.write_all_at(&encoded, record::PREFIX_LEN)
                .map_err(|e| unavailable("cannot write the spool file", e))?;
        }
        let durable = self.spool.options.durable;
        if durable {
            file.sync_all()
                .map_err(|e| unavailable("cannot fsync the spool file", e))?;
        }
        let state = match self.header.not_before {
            Some(t) if t > now_secs() => QueueState::Scheduled,
            _ => QueueState::Ready,
        };
        let dir = self.spool.state_dir(state);
        fs::rename(&self.tmp, dir.join(self.id.as_str()))
            .map_err(|e| unavailable(format_args!("cannot rename into {}", dir.display()), e))?;
        self.done = true;
        if durable {
            match sync_dir(&dir) {
                Ok(()) => {}
                // the two-user layout: ready/ and scheduled/ grant the submit group no read,
                // so an initiator cannot open them to fsync. fsync the renamed file again
                // instead: its inode changed with the rename (ctime), and on journaling
                // filesystems (ext4, xfs, btrfs) that commit carries the rename with it.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => file
                    .sync_all()
                    .map_err(|e| unavailable("cannot fsync the spool file", e))?,
                Err(e) => return Err(unavailable("cannot fsync the spool directory", e)),
            }
        }
        Ok(self.id.clone())
    }
}

impl Drop for PendingSubmit {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// The local clock as Unix seconds (0 if the clock is before 1970).
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
