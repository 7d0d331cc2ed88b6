//! The exception classes: one per [`ErrorKind`], under the builtin a Python caller would catch.
//!
//! ```text
//! QmailError(Exception)                     .code  .field  .transient
//! ├── InvalidArgument(QmailError, ValueError)   InvalidArgument
//! ├── InvalidAddress(QmailError, ValueError)    InvalidAddress
//! ├── InvalidHeader(QmailError, ValueError)     InvalidHeader
//! ├── InvalidMessage(QmailError, ValueError)    InvalidMessage
//! ├── AttachmentError(QmailError, OSError)      Attachment
//! └── SpoolError(QmailError, OSError)           SpoolUnavailable, Io
//!     ├── NoSpoolConfigured(SpoolError)         NoSpoolConfigured
//!     └── CorruptSpoolFile(SpoolError)          Corrupt
//! ```
//! `.code` is [`ErrorKind::as_str`], the one name every binding uses; `.field` is
//! [`qmail_core::Error::field`]. The classes are made with `type(name, bases, dict)` because a
//! class with two bases (ours and a builtin) cannot be declared with `create_exception!`.
//! `ERROR_CLASSES` maps every code of [`ErrorKind::ALL`] to its class.

use pyo3::exceptions::{PyException, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use qmail_core::ErrorKind;

/// One exception class: its name, its qmail parent (`None` = `QmailError` itself), the builtin
/// it also derives from, and its docstring.
struct ClassDef {
    name: &'static str,
    parent: Option<&'static str>,
    builtin: Builtin,
    doc: &'static str,
}

#[derive(Clone, Copy)]
enum Builtin {
    None,
    Exception,
    ValueError,
    OSError,
}

const CLASSES: &[ClassDef] = &[
    ClassDef {
        name: "QmailError",
        parent: None,
        builtin: Builtin::Exception,
        doc: "Base class of every qmail error.\n\n\
              Attributes:\n    \
              code: the stable error code (qmail-core's ErrorKind name, e.g. 'InvalidAddress').\n    \
              field: the field at fault ('to', 'headers.X-Trace', 'attachments[0]'), or None.\n    \
              message: the message without the field prefix.\n    \
              transient: True when a later try (or another spool) may succeed.",
    },
    ClassDef {
        name: "InvalidArgument",
        parent: Some("QmailError"),
        builtin: Builtin::ValueError,
        doc: "A parameter is out of its domain (priority, content type, file name, file mode).",
    },
    ClassDef {
        name: "InvalidAddress",
        parent: Some("QmailError"),
        builtin: Builtin::ValueError,
        doc: "An address is malformed (RFC 5322 3.4, RFC 5321 4.1.2) or too long.",
    },
    ClassDef {
        name: "InvalidHeader",
        parent: Some("QmailError"),
        builtin: Builtin::ValueError,
        doc: "A header name or value is unacceptable: CR, LF or NUL in it, a bad field name \
              (RFC 5322 2.2), or a field that has its own parameter.",
    },
    ClassDef {
        name: "InvalidMessage",
        parent: Some("QmailError"),
        builtin: Builtin::ValueError,
        doc: "The message as a whole is incomplete or inconsistent: no recipient, a cid: \
              reference without an inline part, raw bytes that are not RFC 5322.",
    },
    ClassDef {
        name: "AttachmentError",
        parent: Some("QmailError"),
        builtin: Builtin::OSError,
        doc: "An attachment file cannot be read (missing, not a regular file, read error).",
    },
    ClassDef {
        name: "SpoolError",
        parent: Some("QmailError"),
        builtin: Builtin::OSError,
        doc: "A spool cannot be opened, written or read (permission denied, disk full, share \
              gone). Transient: another spool, or a later try, may work.",
    },
    ClassDef {
        name: "NoSpoolConfigured",
        parent: Some("SpoolError"),
        builtin: Builtin::None,
        doc: "No spool was given, set with set_default_spool(), or found in QMAIL_SPOOL.",
    },
    ClassDef {
        name: "CorruptSpoolFile",
        parent: Some("SpoolError"),
        builtin: Builtin::None,
        doc: "A spool file cannot be parsed: bad magic, unknown version, truncated.",
    },
];

/// The class of each kind. A kind added to the core later falls back to `QmailError` (its
/// `.code` still names it) until it gets a class here.
fn class_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidArgument => "InvalidArgument",
        ErrorKind::InvalidAddress => "InvalidAddress",
        ErrorKind::InvalidHeader => "InvalidHeader",
        ErrorKind::InvalidMessage => "InvalidMessage",
        ErrorKind::Attachment => "AttachmentError",
        ErrorKind::SpoolUnavailable | ErrorKind::Io => "SpoolError",
        ErrorKind::NoSpoolConfigured => "NoSpoolConfigured",
        ErrorKind::Corrupt => "CorruptSpoolFile",
        _ => "QmailError",
    }
}

/// The classes, made once per process, in the order of [`CLASSES`].
static TYPES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

fn types(py: Python<'_>) -> PyResult<&Vec<Py<PyType>>> {
    TYPES.get_or_try_init(py, || {
        let mut made: Vec<Py<PyType>> = Vec::with_capacity(CLASSES.len());
        for def in CLASSES {
            let mut bases: Vec<Bound<'_, PyType>> = Vec::new();
            if let Some(parent) = def.parent {
                let i = CLASSES
                    .iter()
                    .position(|c| c.name == parent)
                    .ok_or_else(|| {
                        pyo3::exceptions::PyRuntimeError::new_err(format!(
                            "qmail: exception class {parent} must be defined before its subclasses"
                        ))
                    })?;
                bases.push(made[i].bind(py).clone());
            }
            match def.builtin {
                Builtin::None => {}
                Builtin::Exception => bases.push(py.get_type::<PyException>()),
                Builtin::ValueError => bases.push(py.get_type::<PyValueError>()),
                Builtin::OSError => bases.push(py.get_type::<PyOSError>()),
            }
            let dict = PyDict::new(py);
            dict.set_item("__module__", "qmail")?;
            dict.set_item("__doc__", def.doc)?;
            if def.parent.is_none() {
                dict.set_item("code", "QmailError")?;
                dict.set_item("field", py.None())?;
                dict.set_item("message", "")?;
                dict.set_item("transient", false)?;
            }
            let class =
                py.get_type::<PyType>()
                    .call1((def.name, PyTuple::new(py, bases)?, dict))?;
            made.push(class.cast_into::<PyType>()?.unbind());
        }
        Ok(made)
    })
}

fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    let i = CLASSES.iter().position(|c| c.name == name).unwrap_or(0);
    Ok(types(py)?[i].bind(py).clone())
}

/// Adds every class and `ERROR_CLASSES` (code -> class) to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    for (def, ty) in CLASSES.iter().zip(types(py)?) {
        m.add(def.name, ty.bind(py))?;
    }
    let by_code = PyDict::new(py);
    for kind in ErrorKind::ALL {
        by_code.set_item(kind.as_str(), class(py, class_name(*kind))?)?;
    }
    m.add("ERROR_CLASSES", by_code)
}

/// Converts a core error into the matching Python exception, with `.code`, `.field`,
/// `.message` and `.transient` set; OS errors also set `errno`.
pub(crate) fn to_py(e: qmail_core::Error) -> PyErr {
    Python::attach(|py| match build(py, &e) {
        Ok(err) => err,
        Err(failed) => failed,
    })
}

fn build(py: Python<'_>, e: &qmail_core::Error) -> PyResult<PyErr> {
    let cls = class(py, class_name(e.kind()))?;
    let text = e.to_string();
    let errno = e.io_error().and_then(std::io::Error::raw_os_error);
    let is_os = cls.is_subclass(&py.get_type::<PyOSError>())?;
    // one argument, so str() is "field: message": OSError(errno, strerror), or errno and
    // strerror both set, would make it "[Errno N] strerror"; errno alone is set
    let value = cls.call1((text,))?;
    if let (Some(n), true) = (errno, is_os) {
        value.setattr("errno", n)?;
    }
    value.setattr("code", e.kind().as_str())?;
    value.setattr("field", e.field())?;
    value.setattr("message", e.message())?;
    value.setattr("transient", e.kind().is_transient())?;
    Ok(PyErr::from_value(value))
}

/// A core error made by the binding itself (for checks on Python-only input shapes).
pub(crate) fn invalid_argument(
    field: impl Into<std::borrow::Cow<'static, str>>,
    message: impl Into<String>,
) -> PyErr {
    to_py(qmail_core::Error::new(ErrorKind::InvalidArgument, message).with_field(field))
}
