//! Where messages go: `qmail.Spool`, `set_default_spool`, `submit_message`, and the spool-file
//! reader used by tests and operators.
//!
//! A `spool=` argument is a directory (`str` / `os.PathLike`: [`qmail_core::Spool::open`]) or a
//! `qmail.Spool` (one or more directories with round-robin and fail-over:
//! [`qmail_core::Initiator`]). Without one, the process default is used
//! ([`qmail_core::default_initiator`]: `set_default_spool`, else `QMAIL_SPOOL`).

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyMemoryView, PyString};
use qmail_core::{Initiator, Priority, QueueId, RawMessage, SpoolFile, SpoolOptions, Target};

use crate::error::{invalid_argument, to_py};
use crate::message::{text, unix_seconds};

/// A resolved `spool=` argument.
#[derive(Clone)]
pub(crate) enum SpoolTarget {
    /// One directory, opened (and created if missing) at submit.
    Dir(PathBuf),
    /// A `qmail.Spool`.
    Pool(Arc<Initiator>),
}

impl SpoolTarget {
    pub(crate) fn extract(obj: &Bound<'_, PyAny>) -> PyResult<SpoolTarget> {
        if let Ok(s) = obj.cast::<Spool>() {
            return Ok(SpoolTarget::Pool(s.get().initiator.clone()));
        }
        if obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")? {
            return Ok(SpoolTarget::Dir(obj.extract()?));
        }
        Err(PyTypeError::new_err(format!(
            "spool is a str / os.PathLike directory or a qmail.Spool, not {}",
            obj.get_type().name()?
        )))
    }

    /// The core's target for this argument ([`qmail_core::route`] for a directory).
    pub(crate) fn target(&self) -> qmail_core::Result<Target> {
        match self {
            SpoolTarget::Dir(p) => qmail_core::route(Some(p), None),
            SpoolTarget::Pool(i) => Ok(Target::Pool(i.clone())),
        }
    }

    /// Submits a built message (call detached).
    pub(crate) fn submit(&self, message: &qmail_core::Message) -> qmail_core::Result<QueueId> {
        self.target()?.submit(message)
    }
}

/// A list of spool directories: a `str` in `QMAIL_SPOOL` syntax (split at ':'), one
/// `os.PathLike`, or an iterable of paths.
fn path_list(obj: &Bound<'_, PyAny>) -> PyResult<Vec<PathBuf>> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(std::env::split_paths(&*s.to_cow()?).collect());
    }
    if obj.hasattr("__fspath__")? {
        return Ok(vec![obj.extract()?]);
    }
    obj.try_iter()?.map(|p| p?.extract::<PathBuf>()).collect()
}

/// One or more spool directories, with how to write them. paths is a directory, a str list in
/// QMAIL_SPOOL syntax ("/a:/b"), or an iterable of directories. Submits are spread round-robin;
/// a directory that fails is skipped and the next tried. durable=False skips the fsyncs (a
/// crash may then lose the last submits, never expose a partial one). file_mode is the mode of
/// spool files.
///
/// Pass a Spool as spool= to Message.submit() or submit_message(). Raises NoSpoolConfigured
/// when paths names no directory.
#[pyclass(frozen, module = "qmail._qmail", name = "Spool")]
pub struct Spool {
    initiator: Arc<Initiator>,
    durable: bool,
    file_mode: u32,
}

#[pymethods]
impl Spool {
    #[new]
    #[pyo3(signature = (paths, /, *, durable = true, file_mode = None))]
    fn new(paths: &Bound<'_, PyAny>, durable: bool, file_mode: Option<u32>) -> PyResult<Self> {
        let file_mode = file_mode.unwrap_or(SpoolOptions::default().file_mode);
        let options = SpoolOptions { durable, file_mode };
        let initiator = Initiator::new(path_list(paths)?, options).map_err(to_py)?;
        Ok(Spool {
            initiator: Arc::new(initiator),
            durable,
            file_mode,
        })
    }

    /// The directories, in order.
    #[getter]
    fn paths(&self) -> Vec<PathBuf> {
        self.initiator.spools().to_vec()
    }

    /// Whether submits fsync the file and the directory.
    #[getter]
    fn durable(&self) -> bool {
        self.durable
    }

    /// The mode of spool files.
    #[getter]
    fn file_mode(&self) -> u32 {
        self.file_mode
    }

    /// Where message `queue_id` is (read-only; see `crate::status`).
    #[pyo3(signature = (queue_id, /, *, delivery_log = None))]
    fn status(
        &self,
        py: Python<'_>,
        queue_id: &str,
        delivery_log: Option<PathBuf>,
    ) -> PyResult<crate::status::MessageStatus> {
        crate::status::status(py, self.initiator.spools(), queue_id, delivery_log)
    }

    /// The messages in the spool(s), oldest first (read-only; see `crate::status`).
    #[pyo3(signature = (*, state = None, rcpt = None, sender = None, older = None, limit = None))]
    fn list(
        &self,
        py: Python<'_>,
        state: Option<&str>,
        rcpt: Option<String>,
        sender: Option<String>,
        older: Option<i64>,
        limit: Option<usize>,
    ) -> PyResult<Vec<crate::status::MessageStatus>> {
        let spools = self.initiator.spools();
        crate::status::list(py, spools, state, rcpt, sender, older, limit)
    }

    fn __repr__(&self) -> String {
        let paths: Vec<String> = self
            .initiator
            .spools()
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        format!(
            "Spool([{}], durable={}, file_mode=0o{:o})",
            paths.join(", "),
            if self.durable { "True" } else { "False" },
            self.file_mode
        )
    }
}

/// Sets the process-wide default spool(s), used when a submit names none (without a call, the
/// QMAIL_SPOOL environment variable is read). spools is a directory, a str list in QMAIL_SPOOL
/// syntax ("/a:/b"), or an iterable of directories.
///
/// Raises NoSpoolConfigured for an empty list, InvalidArgument for a path containing ':'.
#[pyfunction]
#[pyo3(signature = (spools, /, *, durable = true, file_mode = None))]
pub fn set_default_spool(
    spools: &Bound<'_, PyAny>,
    durable: bool,
    file_mode: Option<u32>,
) -> PyResult<()> {
    let file_mode = file_mode.unwrap_or(SpoolOptions::default().file_mode);
    let list = match spools.cast::<PyString>() {
        Ok(s) => s.to_cow()?.into_owned(),
        Err(_) => {
            let joined = std::env::join_paths(path_list(spools)?).map_err(|e| {
                invalid_argument("spools", format!("cannot make a spool list: {e}"))
            })?;
            joined
                .into_string()
                .map_err(|_| invalid_argument("spools", "a spool path is not UTF-8"))?
        }
    };
    qmail_core::set_default_spool_with(&list, SpoolOptions { durable, file_mode }).map_err(to_py)
}

/// The message bytes of `message`: bytes-like as is, an `email.message.Message` through its
/// own `as_bytes()` (its policy decides the encoding; line ends are normalised by the core).
fn message_bytes(message: &Bound<'_, PyAny>) -> PyResult<PyBackedBytes> {
    if let Ok(b) = message.extract::<PyBackedBytes>() {
        return Ok(b);
    }
    if message.is_instance_of::<PyMemoryView>() {
        return Ok(message
            .py()
            .get_type::<PyBytes>()
            .call1((message,))?
            .extract::<PyBackedBytes>()?);
    }
    if message.hasattr("as_bytes")? && !message.is_instance_of::<PyString>() {
        return message
            .call_method0("as_bytes")?
            .extract::<PyBackedBytes>()
            .map_err(Into::into);
    }
    Err(PyTypeError::new_err(format!(
        "message is an email.message.Message or bytes, not {}",
        message.get_type().name()?
    )))
}

/// Spools a message composed with Python's email package (serialised with its as_bytes()), or
/// any RFC 5322 bytes; returns the queue id. Line ends become CRLF, Bcc fields are removed (the
/// addresses stay in the envelope), Date and Message-ID are added when missing. Recipients
/// default to To, Cc and Bcc; envelope_from to Sender, else From ("<>" for none). The GIL is
/// released while parsing and writing.
///
/// Raises InvalidMessage, InvalidHeader, InvalidAddress (field "envelope_from", "recipients",
/// "to", ...), SpoolError, NoSpoolConfigured; TypeError for anything but a message or bytes.
#[pyfunction]
#[pyo3(signature = (message, /, spool = None, envelope_from = None, recipients = None, *, not_before = None, priority = None))]
pub fn submit_message(
    py: Python<'_>,
    message: &Bound<'_, PyAny>,
    spool: Option<&Bound<'_, PyAny>>,
    envelope_from: Option<&Bound<'_, PyAny>>,
    recipients: Option<&Bound<'_, PyAny>>,
    not_before: Option<&Bound<'_, PyAny>>,
    priority: Option<&Bound<'_, PyAny>>,
) -> PyResult<String> {
    let bytes = message_bytes(message)?;
    let target = spool.map(SpoolTarget::extract).transpose()?;
    let not_before = not_before
        .map(|t| unix_seconds(t, "not_before"))
        .transpose()?;
    let envelope_from = envelope_from
        .filter(|o| !o.is_none())
        .map(|o| text(o, "envelope_from"))
        .transpose()?;
    let recipients: Option<Vec<String>> = match recipients.filter(|o| !o.is_none()) {
        None => None,
        Some(r) if r.is_instance_of::<PyString>() => {
            return Err(PyTypeError::new_err(
                "recipients is an iterable of addresses, not one str",
            ));
        }
        Some(r) => Some(
            r.try_iter()?
                .map(|a| text(&a?, "recipients"))
                .collect::<PyResult<_>>()?,
        ),
    };
    let priority: Option<Priority> = priority.map(crate::message::priority).transpose()?;
    let id = py.detach(move || {
        let mut raw = RawMessage::parse(&bytes, envelope_from.as_deref(), recipients.as_deref())?;
        raw.set_not_before(not_before);
        if let Some(p) = priority {
            raw.set_priority(p);
        }
        match &target {
            Some(t) => t.target()?.submit_raw(&raw),
            None => qmail_core::route(None, None)?.submit_raw(&raw),
        }
    });
    Ok(id.map_err(to_py)?.to_string())
}

/// Reads a committed spool file back (test and operations support; not a stable API): the
/// header as a dict (version, mail_from, rcpt_to, smtputf8, eightbitmime, created, not_before,
/// priority, message_id) and the message bytes as the dispatcher sends them.
///
/// Raises CorruptSpoolFile for an incomplete or foreign file, SpoolError (code "Io") when it
/// cannot be read.
#[pyfunction]
pub fn _read_spool_file<'py>(
    py: Python<'py>,
    path: PathBuf,
) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyBytes>)> {
    let (file, body) = py
        .detach(move || {
            let file = SpoolFile::open(&path)?;
            let body = file.read_body()?;
            Ok::<_, qmail_core::Error>((file, body))
        })
        .map_err(to_py)?;
    let h = &file.header;
    let d = PyDict::new(py);
    d.set_item("version", file.version)?;
    d.set_item("mail_from", &h.envelope.mail_from)?;
    d.set_item("rcpt_to", &h.envelope.rcpt_to)?;
    d.set_item("smtputf8", h.envelope.smtputf8)?;
    d.set_item("eightbitmime", h.envelope.eightbitmime)?;
    d.set_item("created", h.created)?;
    d.set_item("not_before", h.not_before)?;
    d.set_item("priority", h.priority)?;
    d.set_item("message_id", &h.message_id)?;
    Ok((d, PyBytes::new(py, &body)))
}

/// Parses text holding exactly one mailbox as strictly as the core does everywhere
/// (RFC 5322 §3.4, RFC 5321 §4.1.2; an internationalised domain becomes IDNA A-labels) and
/// returns ``(display name or None, addr-spec)``. Web-framework backends use it to check
/// every envelope address as Django's SMTP backend does, before anything is spooled.
///
/// Raises InvalidAddress / InvalidHeader naming ``field`` (also for a list of several
/// addresses), InvalidArgument for a lone surrogate.
#[pyfunction]
#[pyo3(signature = (text, /, field = "address"))]
pub fn parse_mailbox(text: &Bound<'_, PyAny>, field: &str) -> PyResult<(Option<String>, String)> {
    let t = crate::message::text(text, field)?;
    let m =
        qmail_core::Mailbox::parse_one(&t).map_err(|e| to_py(e.with_field(field.to_owned())))?;
    Ok((m.name().map(str::to_owned), m.address().to_string()))
}
