//! The one error taxonomy of qmail.
//!
//! Every fallible call in `qmail-core` returns [`Error`]: a [`ErrorKind`] (a stable name that the
//! C ABI maps to a `qmail_result` number, Python to an exception class and Node to an
//! `Error.code`), the field at fault when there is one (`"to"`, `"subject"`, `"headers.X-Trace"`,
//! `"attachments[2]"`), a lowercase human message, and the underlying I/O error when there is one.

use std::borrow::Cow;
use std::fmt;
use std::io;

/// What went wrong, in categories callers can act on. The variant name (see [`ErrorKind::as_str`])
/// is the one string used by every binding; names are never reused for another meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A parameter is out of its domain (empty where a value is needed, bad option value, ...).
    InvalidArgument,
    /// An address is malformed (RFC 5322 §3.4, RFC 5321 §4.1.2) or too long (RFC 5321 §4.5.3.1).
    InvalidAddress,
    /// A header name or value is unacceptable: CR, LF or NUL in it, a name outside printable
    /// US-ASCII or containing ':' (RFC 5322 §2.2), or a field that must be set another way.
    InvalidHeader,
    /// The message as a whole is incomplete or inconsistent: no From, no recipient, a `cid:`
    /// reference without an inline part (RFC 2392), a raw message that is not RFC 5322.
    InvalidMessage,
    /// An attachment cannot be read (missing file, permission, read error mid-stream).
    Attachment,
    /// A spool cannot be opened or written (permission denied, disk full, unreachable share).
    /// Transient from the initiator's view: another spool, or a later try, may work.
    SpoolUnavailable,
    /// No spool was given to the call, set as the default, or found in `QMAIL_SPOOL`.
    NoSpoolConfigured,
    /// A spool file cannot be parsed: bad magic, unknown version, truncated, bad envelope.
    Corrupt,
    /// Another I/O failure.
    Io,
}

impl ErrorKind {
    /// The stable name of the kind, e.g. `"InvalidAddress"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "InvalidArgument",
            ErrorKind::InvalidAddress => "InvalidAddress",
            ErrorKind::InvalidHeader => "InvalidHeader",
            ErrorKind::InvalidMessage => "InvalidMessage",
            ErrorKind::Attachment => "Attachment",
            ErrorKind::SpoolUnavailable => "SpoolUnavailable",
            ErrorKind::NoSpoolConfigured => "NoSpoolConfigured",
            ErrorKind::Corrupt => "Corrupt",
            ErrorKind::Io => "Io",
        }
    }

    /// True for the kinds a later try (or another spool) may not have: a spool that cannot be
    /// written and other I/O failures. Every validation kind is permanent: the same input fails
    /// the same way. The one rule the bindings use (`transient` in Python, Node and C).
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::SpoolUnavailable | ErrorKind::Io)
    }

    /// Every kind, in a fixed order; bindings enumerate this to build their own tables.
    pub const ALL: &'static [ErrorKind] = &[
        ErrorKind::InvalidArgument,
        ErrorKind::InvalidAddress,
        ErrorKind::InvalidHeader,
        ErrorKind::InvalidMessage,
        ErrorKind::Attachment,
        ErrorKind::SpoolUnavailable,
        ErrorKind::NoSpoolConfigured,
        ErrorKind::Corrupt,
        ErrorKind::Io,
    ];
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A qmail error: a kind, the field at fault (if any), a message and an optional source.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    field: Option<Cow<'static, str>>,
    message: String,
    source: Option<io::Error>,
}

impl Error {
    /// A new error of `kind` with a human message (lowercase, specific).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            field: None,
            message: message.into(),
            source: None,
        }
    }

    /// The same error, naming the field at fault (`"reply_to"`, `"headers.X-Trace"`).
    pub fn with_field(mut self, field: impl Into<Cow<'static, str>>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The same error, with the I/O error that caused it.
    pub fn with_source(mut self, source: io::Error) -> Self {
        self.source = Some(source);
        self
    }

    pub(crate) fn io(kind: ErrorKind, what: impl fmt::Display, source: io::Error) -> Self {
        Error::new(kind, format!("{what}: {source}")).with_source(source)
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The field at fault, e.g. `"to"` or `"attachments[0]"`, when the error is about one.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// The message without the field prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The underlying I/O error, when there is one.
    pub fn io_error(&self) -> Option<&io::Error> {
        self.source.as_ref()
    }

    /// True when retrying the same call later (or on another spool) may succeed: spool and I/O
    /// failures. Validation failures are permanent.
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// `Result<T, qmail_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
