//! `qmail.Message`: keyword arguments in, [`MessageBuilder`] setters out.
//!
//! Each argument goes to one core setter, in the order of the signature, so the first bad
//! argument raises and names its field (`to`, `headers.X-Trace`, `attachments[1]`). Validation of
//! the whole (From, a recipient, `cid:` references) happens in [`MessageBuilder::build`], at
//! `submit()`.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString, PyTuple, PyType};
use qmail_core::{AddressInput, MessageBuilder, Priority};

use crate::error::{invalid_argument, to_py};
use crate::spool::SpoolTarget;

/// An email to build and submit.
///
/// Addresses are "Name <a@example.com>", "a@example.com" or (name, address) tuples; to, cc,
/// bcc and reply_to also take a list of them. Bcc goes to the envelope only. headers is a
/// mapping or (name, value) pairs (Message-ID and Date replace the generated ones); priority is
/// 1..5 or "highest".."lowest"; envelope_from is MAIL FROM ("<>" for none); not_before is a
/// datetime to hold the message until; spool is where submit() writes by default.
///
/// Every argument is checked when given: the first bad one raises a QmailError subclass whose
/// .field names it (InvalidAddress, InvalidHeader, InvalidMessage, InvalidArgument).
#[pyclass(module = "qmail._qmail", name = "Message")]
pub struct Message {
    builder: MessageBuilder,
    /// The message's own spool (`spool=`); `submit(spool=...)` overrides it.
    spool: Option<SpoolTarget>,
    /// How many attachments / inline parts were added (for the field names of errors).
    attachments: usize,
    inline: usize,
}

/// A Python `str` as Rust text. A `str` holding a lone surrogate (U+D800..U+DFFF, e.g. from
/// `os.fsdecode` or `errors="surrogateescape"`) is not Unicode text: it is refused as
/// `InvalidArgument` naming `field`, never passed on as a bare `UnicodeEncodeError` and never
/// replaced by U+FFFD.
pub(crate) fn text(obj: &Bound<'_, PyAny>, field: &str) -> PyResult<String> {
    let s = obj.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{field}: expected a str, not {}",
            obj.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    match s.to_cow() {
        Ok(v) => Ok(v.into_owned()),
        Err(_) => {
            let at = s
                .to_string_lossy()
                .chars()
                .position(|c| c == char::REPLACEMENT_CHARACTER)
                .unwrap_or(0);
            Err(invalid_argument(
                field.to_owned(),
                format!(
                    "holds a lone surrogate at index {at} (U+D800..U+DFFF): not Unicode text; \
                     decode the bytes with their real encoding"
                ),
            ))
        }
    }
}

/// An optional text argument (see [`text`]).
fn opt_text(obj: Option<&Bound<'_, PyAny>>, field: &str) -> PyResult<Option<String>> {
    obj.filter(|o| !o.is_none())
        .map(|o| text(o, field))
        .transpose()
}

/// One address: `"Name <a@example.com>"`, `"a@example.com"` (in a list field also a whole
/// address list `"a@x, B <b@y>"`) or `(name, address)`.
fn address(obj: &Bound<'_, PyAny>, field: &str) -> PyResult<AddressInput> {
    if obj.is_instance_of::<PyString>() {
        return Ok(AddressInput::Text(text(obj, field)?));
    }
    if let Ok(t) = obj.cast::<PyTuple>()
        && t.len() == 2
    {
        let name = opt_text(Some(&t.get_item(0)?), field)?;
        let addr = text(&t.get_item(1)?, field)?;
        return Ok(AddressInput::Parts(name, addr));
    }
    Err(PyTypeError::new_err(format!(
        "an address is a str or a (name, address) tuple, not {}",
        obj.get_type().name()?
    )))
}

/// One address, or an iterable (not a tuple: a tuple is one `(name, address)`) of them.
fn addresses(obj: &Bound<'_, PyAny>, field: &str) -> PyResult<Vec<AddressInput>> {
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyTuple>() {
        return Ok(vec![address(obj, field)?]);
    }
    obj.try_iter()?.map(|item| address(&item?, field)).collect()
}

/// Header pairs from a mapping (`.items()`) or an iterable of `(name, value)` pairs.
fn header_pairs(obj: &Bound<'_, PyAny>) -> PyResult<Vec<(String, String)>> {
    let items = match obj.hasattr("items")? {
        true => obj.call_method0("items")?,
        false => obj.clone(),
    };
    items
        .try_iter()?
        .map(|pair| {
            let pair = pair?;
            let t = pair
                .cast::<PyTuple>()
                .map_err(|_| PyTypeError::new_err("headers: a mapping or (name, value) pairs"))?;
            if t.len() != 2 {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "headers: a (name, value) pair has 2 items, not {}",
                    t.len()
                )));
            }
            let name = text(&t.get_item(0)?, "headers")?;
            let value = text(&t.get_item(1)?, &format!("headers.{name}"))?;
            Ok((name, value))
        })
        .collect()
}

/// `1`..`5` or `"highest" | "high" | "normal" | "low" | "lowest"`.
pub(crate) fn priority(obj: &Bound<'_, PyAny>) -> PyResult<Priority> {
    if obj.is_instance_of::<PyString>() {
        return Priority::parse(&text(obj, "priority")?).map_err(to_py);
    }
    // bool is an int subclass in Python: True would silently mean "highest"
    if obj.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(
            "priority is an int 1..5 or a str such as 'high', not a bool",
        ));
    }
    match obj.extract::<i64>() {
        Ok(n) => Priority::from_number(n).map_err(to_py),
        Err(_) => Err(PyTypeError::new_err(
            "priority is an int 1..5 or a str such as 'high'",
        )),
    }
}

static DATETIME: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// A `datetime` as Unix seconds (`datetime.timestamp()`: a naive datetime is local time).
pub(crate) fn unix_seconds(obj: &Bound<'_, PyAny>, field: &str) -> PyResult<i64> {
    let datetime = DATETIME.import(obj.py(), "datetime", "datetime")?;
    if !obj.is_instance(datetime)? {
        return Err(PyTypeError::new_err(format!(
            "{field} is a datetime.datetime"
        )));
    }
    let secs: f64 = obj.call_method0("timestamp")?.extract()?;
    Ok(secs.floor() as i64)
}

/// What `attach` / `attach_inline` take: bytes-like content, or a path.
pub(crate) enum Content {
    Bytes(Arc<[u8]>),
    Path(PathBuf),
}

fn content(obj: &Bound<'_, PyAny>) -> PyResult<Content> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Content::Bytes(Arc::from(b.as_bytes())));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Content::Bytes(Arc::from(b.to_vec())));
    }
    if obj.is_instance_of::<PyMemoryView>() {
        let b = obj.py().get_type::<PyBytes>().call1((obj,))?;
        return Ok(Content::Bytes(Arc::from(b.cast::<PyBytes>()?.as_bytes())));
    }
    if obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")? {
        return Ok(Content::Path(obj.extract()?));
    }
    Err(PyTypeError::new_err(format!(
        "an attachment is bytes (content) or a str / os.PathLike (a file), not {}",
        obj.get_type().name()?
    )))
}

#[pymethods]
impl Message {
    #[new]
    #[pyo3(signature = (
        *, from_, to = None, cc = None, bcc = None, reply_to = None, sender = None,
        subject = None, text = None, html = None, headers = None, priority = None,
        envelope_from = None, envelope_to = None, not_before = None, read_receipt_to = None,
        date = None, spool = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        from_: &Bound<'_, PyAny>,
        to: Option<&Bound<'_, PyAny>>,
        cc: Option<&Bound<'_, PyAny>>,
        bcc: Option<&Bound<'_, PyAny>>,
        reply_to: Option<&Bound<'_, PyAny>>,
        sender: Option<&Bound<'_, PyAny>>,
        subject: Option<&Bound<'_, PyAny>>,
        text: Option<&Bound<'_, PyAny>>,
        html: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyAny>>,
        priority: Option<&Bound<'_, PyAny>>,
        envelope_from: Option<&Bound<'_, PyAny>>,
        envelope_to: Option<&Bound<'_, PyAny>>,
        not_before: Option<&Bound<'_, PyAny>>,
        read_receipt_to: Option<&Bound<'_, PyAny>>,
        date: Option<&Bound<'_, PyAny>>,
        spool: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let mut b = MessageBuilder::default();
        b.set_from(address(from_, "from")?).map_err(to_py)?;
        if let Some(s) = sender {
            b.set_sender(address(s, "sender")?).map_err(to_py)?;
        }
        for a in reply_to
            .map(|o| addresses(o, "reply_to"))
            .transpose()?
            .unwrap_or_default()
        {
            b.add_reply_to(a).map_err(to_py)?;
        }
        for a in to
            .map(|o| addresses(o, "to"))
            .transpose()?
            .unwrap_or_default()
        {
            b.add_to(a).map_err(to_py)?;
        }
        for a in cc
            .map(|o| addresses(o, "cc"))
            .transpose()?
            .unwrap_or_default()
        {
            b.add_cc(a).map_err(to_py)?;
        }
        for a in bcc
            .map(|o| addresses(o, "bcc"))
            .transpose()?
            .unwrap_or_default()
        {
            b.add_bcc(a).map_err(to_py)?;
        }
        if let Some(s) = opt_text(subject, "subject")? {
            b.set_subject(&s).map_err(to_py)?;
        }
        if let Some(s) = opt_text(text, "text")? {
            b.set_text(&s).map_err(to_py)?;
        }
        if let Some(s) = opt_text(html, "html")? {
            b.set_html(&s).map_err(to_py)?;
        }
        for (name, value) in headers.map(header_pairs).transpose()?.unwrap_or_default() {
            b.add_header(&name, &value).map_err(to_py)?;
        }
        if let Some(p) = priority {
            b.set_priority(self::priority(p)?).map_err(to_py)?;
        }
        if let Some(s) = opt_text(envelope_from, "envelope_from")? {
            b.set_envelope_from(&s).map_err(to_py)?;
        }
        if let Some(list) = envelope_to {
            let list: Vec<String> = if list.is_instance_of::<PyString>() {
                vec![self::text(list, "envelope_to")?]
            } else {
                list.try_iter()?
                    .map(|a| self::text(&a?, "envelope_to"))
                    .collect::<PyResult<_>>()?
            };
            b.set_envelope_to(&list).map_err(to_py)?;
        }
        if let Some(t) = not_before {
            b.set_not_before(unix_seconds(t, "not_before")?)
                .map_err(to_py)?;
        }
        if let Some(a) = read_receipt_to {
            b.set_read_receipt_to(address(a, "read_receipt_to")?)
                .map_err(to_py)?;
        }
        if let Some(d) = date {
            b.set_date_unix(unix_seconds(d, "date")?).map_err(to_py)?;
        }
        let spool = spool.map(SpoolTarget::extract).transpose()?;
        if let Some(SpoolTarget::Dir(p)) = &spool {
            // the core's check of a message's spool path; the target itself is kept here so
            // that submit(spool=...) can override it
            MessageBuilder::default().set_spool(p).map_err(to_py)?;
        }
        Ok(Message {
            builder: b,
            spool,
            attachments: 0,
            inline: 0,
        })
    }

    /// Offers unsubscribing (RFC 2369 List-Unsubscribe; with one_click also RFC 8058
    /// List-Unsubscribe-Post: List-Unsubscribe=One-Click, which needs an https url). mailto is
    /// a mailto: URI or a bare address.
    ///
    /// Raises InvalidArgument (field "list_unsubscribe.url" / "list_unsubscribe.mailto").
    #[pyo3(signature = (url, /, mailto = None, one_click = true))]
    fn list_unsubscribe(
        &mut self,
        url: &Bound<'_, PyAny>,
        mailto: Option<&Bound<'_, PyAny>>,
        one_click: bool,
    ) -> PyResult<()> {
        let url = text(url, "list_unsubscribe.url")?;
        let mailto = opt_text(mailto, "list_unsubscribe.mailto")?;
        self.builder
            .set_list_unsubscribe(&url, mailto.as_deref(), one_click)
            .map_err(to_py)?;
        Ok(())
    }

    /// Adds an attachment: a file (str or os.PathLike, streamed from disk at submit time) or
    /// bytes-like content. filename defaults to the file's name; content_type to a guess from
    /// the file name, else application/octet-stream.
    ///
    /// Raises AttachmentError (field "attachments[N]") for a file that cannot be read, and
    /// InvalidArgument for a bad content type or file name.
    #[pyo3(signature = (path_or_bytes, /, filename = None, content_type = None))]
    fn attach(
        &mut self,
        path_or_bytes: &Bound<'_, PyAny>,
        filename: Option<&Bound<'_, PyAny>>,
        content_type: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let field = format!("attachments[{}]", self.attachments);
        let filename = opt_text(filename, &field)?;
        let content_type = opt_text(content_type, &field)?;
        let (filename, content_type) = (filename.as_deref(), content_type.as_deref());
        match content(path_or_bytes)? {
            Content::Bytes(b) => self.builder.attach_bytes(b, filename, content_type),
            Content::Path(p) => self.builder.attach_path(p, filename, content_type),
        }
        .map_err(to_py)?;
        self.attachments += 1;
        Ok(())
    }

    /// Adds an inline part (RFC 2392), shown by the HTML as <img src="cid:CID">. cid is given
    /// without angle brackets.
    ///
    /// Raises AttachmentError (field "inline[N]"), InvalidHeader for a bad Content-ID,
    /// InvalidArgument for a bad content type.
    #[pyo3(signature = (path_or_bytes, /, cid, content_type = None, filename = None))]
    fn attach_inline(
        &mut self,
        path_or_bytes: &Bound<'_, PyAny>,
        cid: &Bound<'_, PyAny>,
        content_type: Option<&Bound<'_, PyAny>>,
        filename: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let field = format!("inline[{}]", self.inline);
        let cid = text(cid, &field)?;
        let content_type = opt_text(content_type, &field)?;
        let filename = opt_text(filename, &field)?;
        let (filename, content_type) = (filename.as_deref(), content_type.as_deref());
        match content(path_or_bytes)? {
            Content::Bytes(b) => {
                self.builder
                    .attach_inline_bytes_named(b, &cid, filename, content_type)
            }
            Content::Path(p) => {
                self.builder
                    .attach_inline_path_named(p, &cid, filename, content_type)
            }
        }
        .map_err(to_py)?;
        self.inline += 1;
        Ok(())
    }

    /// Builds, renders and spools the message, with the GIL released; returns the queue id (the
    /// spool file's name). With a durable spool (the default), the message survives a crash
    /// once this returns.
    ///
    /// spool (a directory or a qmail.Spool) overrides the message's own spool; without either,
    /// the process default is used (set_default_spool(), else QMAIL_SPOOL).
    ///
    /// Raises InvalidMessage (no recipient; a cid: reference without an inline part),
    /// AttachmentError, SpoolError (transient), NoSpoolConfigured.
    #[pyo3(signature = (spool = None))]
    fn submit(slf: &Bound<'_, Self>, spool: Option<&Bound<'_, PyAny>>) -> PyResult<String> {
        let py = slf.py();
        let target = match spool {
            Some(s) => Some(SpoolTarget::extract(s)?),
            None => None,
        };
        // borrow only to build: the borrow is not held while detached
        let (message, target) = {
            let me = slf.borrow();
            (
                me.builder.build().map_err(to_py)?,
                target.or_else(|| me.spool.clone()),
            )
        };
        let id = py.detach(move || match &target {
            Some(t) => t.submit(&message),
            None => qmail_core::route(None, None)?.submit(&message),
        });
        Ok(id.map_err(to_py)?.to_string())
    }
}
