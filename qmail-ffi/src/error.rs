//! Results and the per-thread last error.
//!
//! Every fallible function returns a [`qmail_result`]. The numbers are grouped by where the
//! fault is: 1xxx the spool, 2xxx the message, 9xxx the call itself. A number is never reused
//! for another meaning; a retired one stays here, commented as reserved. `map_error` is the
//! one place a `qmail_core::ErrorKind` becomes a number.
//!
//! The text of the last error of the calling thread (naming the field at fault, e.g.
//! `"reply_to: ..."`) is kept in a thread-local and read with [`qmail_last_error_message`].

use std::cell::RefCell;
use std::ffi::{CStr, c_char};

use qmail_core::{ErrorKind, spool::queue_id};

use crate::handle::{c_str_ptr, write_truncated};
use crate::panic::ffi_infallible;

/// The result of a fallible qmail call: `QMAIL_RESULT_OK` (0) or what went wrong.
///
/// Numbers are stable and never reused: 1xxx the spool, 2xxx the message, 9xxx the call
/// itself. `qmail_result_name()` gives the name of a number, `qmail_result_is_transient()`
/// says whether trying again later (or another spool) may succeed, and
/// `qmail_last_error_message()` gives the text, naming the field at fault.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum qmail_result {
    /// Success.
    Ok = 0,

    /// A spool cannot be created, opened or written: permission denied, disk full, a file
    /// where the directory should be, a share gone. Transient: a later try, or another spool,
    /// may work. Nothing is left in the spool.
    SpoolUnavailable = 1001,
    /// No spool named on the message, set with `qmail_set_default_spool()`, or found in the
    /// `QMAIL_SPOOL` environment variable. Permanent until one is configured.
    NoSpoolConfigured = 1002,
    /// A spool file cannot be parsed (bad magic, unknown version, truncated). Permanent.
    Corrupt = 1003,
    /// Another I/O failure. Transient.
    Io = 1004,

    /// A parameter is out of its domain: an empty spool path, a priority outside 1..5, a
    /// negative time, a bad content type or file name. Permanent.
    InvalidArgument = 2001,
    /// An address is malformed (RFC 5322 §3.4, RFC 5321 §4.1.2) or too long (RFC 5321
    /// §4.5.3.1); CR, LF or NUL anywhere in it. Permanent.
    InvalidAddress = 2002,
    /// A header name or value is unacceptable: CR, LF, NUL or another control in a value, a
    /// name outside printable US-ASCII or containing ':' (RFC 5322 §2.2), or a field that
    /// has its own setter (From, To, Subject, ...). Permanent.
    InvalidHeader = 2003,
    /// The message as a whole is incomplete or inconsistent: no From, no recipient, a
    /// `cid:` reference without an inline part (RFC 2392), a NUL in a body. Permanent.
    InvalidMessage = 2004,
    /// An attachment file cannot be read: missing, not a regular file, unreadable, or a read
    /// error while the message is written. Permanent for this message.
    Attachment = 2005,

    /// A pointer argument that must not be NULL was NULL. Permanent.
    NullParameter = 9001,
    /// A string argument is not valid UTF-8. Permanent.
    InvalidUtf8 = 9002,
    /// An output buffer is too small; nothing was done (see `qmail_submit()`). Permanent.
    BufferTooSmall = 9003,
    /// qmail panicked (a bug in qmail): the call was abandoned, nothing unwound into C, and
    /// the panic message is the last error. A message handle used in the call should be
    /// freed, not used again.
    Panic = 9004,
    /// An error kind this version of the C ABI does not know (qmail-core added one). Not
    /// expected: a test checks that every kind of qmail-core has a number.
    Unknown = 9005,
}

/// Every result, in number order (for `qmail_result_name` and the tests).
pub(crate) const ALL_RESULTS: &[qmail_result] = &[
    qmail_result::Ok,
    qmail_result::SpoolUnavailable,
    qmail_result::NoSpoolConfigured,
    qmail_result::Corrupt,
    qmail_result::Io,
    qmail_result::InvalidArgument,
    qmail_result::InvalidAddress,
    qmail_result::InvalidHeader,
    qmail_result::InvalidMessage,
    qmail_result::Attachment,
    qmail_result::NullParameter,
    qmail_result::InvalidUtf8,
    qmail_result::BufferTooSmall,
    qmail_result::Panic,
    qmail_result::Unknown,
];

impl qmail_result {
    /// The stable name: the `qmail_core::ErrorKind` name for kinds that come from the core
    /// (`"InvalidAddress"`), the variant name for the others (`"NullParameter"`).
    pub(crate) fn name(self) -> &'static CStr {
        match self {
            qmail_result::Ok => c"Ok",
            qmail_result::SpoolUnavailable => c"SpoolUnavailable",
            qmail_result::NoSpoolConfigured => c"NoSpoolConfigured",
            qmail_result::Corrupt => c"Corrupt",
            qmail_result::Io => c"Io",
            qmail_result::InvalidArgument => c"InvalidArgument",
            qmail_result::InvalidAddress => c"InvalidAddress",
            qmail_result::InvalidHeader => c"InvalidHeader",
            qmail_result::InvalidMessage => c"InvalidMessage",
            qmail_result::Attachment => c"Attachment",
            qmail_result::NullParameter => c"NullParameter",
            qmail_result::InvalidUtf8 => c"InvalidUtf8",
            qmail_result::BufferTooSmall => c"BufferTooSmall",
            qmail_result::Panic => c"Panic",
            qmail_result::Unknown => c"Unknown",
        }
    }

    /// The core kind behind a result, when it comes from the core.
    fn kind(self) -> Option<ErrorKind> {
        ErrorKind::ALL
            .iter()
            .copied()
            .find(|&k| map_error(k) == self)
    }

    fn from_u32(n: u32) -> Option<qmail_result> {
        ALL_RESULTS.iter().copied().find(|&r| r as u32 == n)
    }
}

/// The one mapping from a core error kind to a result number.
pub(crate) fn map_error(kind: ErrorKind) -> qmail_result {
    match kind {
        ErrorKind::SpoolUnavailable => qmail_result::SpoolUnavailable,
        ErrorKind::NoSpoolConfigured => qmail_result::NoSpoolConfigured,
        ErrorKind::Corrupt => qmail_result::Corrupt,
        ErrorKind::Io => qmail_result::Io,
        ErrorKind::InvalidArgument => qmail_result::InvalidArgument,
        ErrorKind::InvalidAddress => qmail_result::InvalidAddress,
        ErrorKind::InvalidHeader => qmail_result::InvalidHeader,
        ErrorKind::InvalidMessage => qmail_result::InvalidMessage,
        ErrorKind::Attachment => qmail_result::Attachment,
        // ErrorKind is #[non_exhaustive]; `every_core_kind_has_a_number` fails when the core
        // adds a kind without a number here.
        _ => qmail_result::Unknown,
    }
}

/// Why a call failed, before it becomes a number and a last-error text.
#[derive(Debug)]
pub(crate) enum Failure {
    /// An error from qmail-core.
    Core(qmail_core::Error),
    /// A pointer argument, by parameter name, was NULL.
    Null(&'static str),
    /// A string argument, by parameter name, is not UTF-8.
    Utf8 {
        param: &'static str,
        valid_up_to: usize,
    },
    /// `id_buf_len` is below [`crate::QMAIL_ID_BUF_LEN`].
    IdBufferTooSmall { given: usize },
    /// A panic was caught; its message.
    Panic(String),
}

impl From<qmail_core::Error> for Failure {
    fn from(e: qmail_core::Error) -> Self {
        Failure::Core(e)
    }
}

/// The last error of a thread: its number, the field at fault and the text.
struct LastError {
    result: qmail_result,
    field: Option<String>,
    /// `field: message`, as `qmail_core::Error` displays it.
    text: String,
}

thread_local! {
    static LAST_ERROR: RefCell<Option<LastError>> = const { RefCell::new(None) };
}

impl Failure {
    fn into_last_error(self) -> LastError {
        let (result, field, message): (_, Option<String>, String) = match self {
            Failure::Core(e) => (
                map_error(e.kind()),
                e.field().map(str::to_owned),
                e.message().to_owned(),
            ),
            Failure::Null(p) => (
                qmail_result::NullParameter,
                Some(p.to_owned()),
                "must not be NULL".to_owned(),
            ),
            Failure::Utf8 { param, valid_up_to } => (
                qmail_result::InvalidUtf8,
                Some(param.to_owned()),
                format!("is not valid UTF-8 (the first bad byte is at offset {valid_up_to})"),
            ),
            Failure::IdBufferTooSmall { given } => (
                qmail_result::BufferTooSmall,
                Some("id_buf_len".to_owned()),
                format!(
                    "is {given}; a queue id needs QMAIL_ID_BUF_LEN ({}) bytes: the message was not submitted",
                    crate::QMAIL_ID_BUF_LEN
                ),
            ),
            Failure::Panic(m) => (
                qmail_result::Panic,
                None,
                format!("qmail panicked (a bug in qmail): {m}"),
            ),
        };
        let text = match &field {
            Some(f) => format!("{f}: {message}"),
            None => message,
        };
        LastError {
            result,
            field,
            text,
        }
    }
}

/// Records a failure as the calling thread's last error and returns its number.
pub(crate) fn set_last_error(f: Failure) -> qmail_result {
    let last = f.into_last_error();
    let result = last.result;
    LAST_ERROR.with(|l| *l.borrow_mut() = Some(last));
    result
}

/// Forgets the calling thread's last error (after a call that returned `QMAIL_RESULT_OK`).
pub(crate) fn clear_last_error() {
    LAST_ERROR.with(|l| {
        // try_borrow_mut: never panic here, even if a panic left a borrow behind
        if let Ok(mut l) = l.try_borrow_mut() {
            *l = None;
        }
    });
}

/// Copies the text of the calling thread's last error into `buf`.
///
/// The text names the field at fault first, e.g. `"reply_to: contains a forbidden character
/// '\r'"` or `"attachments[0]: cannot read /tmp/a.pdf: No such file or directory (os error
/// 2)"`. It is UTF-8.
///
/// Shape: like `snprintf`: writes at most `len` bytes including a terminating NUL (when `len`
/// is at least 1; truncated at a UTF-8 character boundary), and returns the length of the
/// whole text in bytes, without the NUL. A return value `>= len` means the text was
/// truncated: call again with a buffer of `return value + 1` bytes. `buf` may be NULL when
/// `len` is 0 (to ask for the length). Returns 0 and writes `""` when there is no last error.
///
/// Errors: the last error is set by every call that returns a `qmail_result` other than
/// `QMAIL_RESULT_OK` (and by `qmail_message_new()` returning NULL), and cleared by every call
/// that returns `QMAIL_RESULT_OK`. This function and the other `qmail_last_error_*` and
/// `qmail_result_*` functions neither set nor clear it.
///
/// Ownership: the caller owns `buf`. Threads: each thread has its own last error; safe to
/// call from any thread at any time.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_last_error_message(buf: *mut c_char, len: usize) -> usize {
    ffi_infallible(|| {
        LAST_ERROR.with(|l| match l.try_borrow() {
            Ok(l) => write_truncated(buf, len, l.as_ref().map_or("", |e| &e.text)),
            Err(_) => write_truncated(buf, len, ""),
        })
    })
}

/// Copies the name of the field at fault in the calling thread's last error into `buf`:
/// `"from"`, `"to"`, `"reply_to"`, `"subject"`, `"headers.X-Trace"`, `"attachments[2]"`,
/// `"inline[0]"`, `"spool"`, or the parameter name for `QMAIL_RESULT_NULL_PARAMETER` and
/// `QMAIL_RESULT_INVALID_UTF8` (`"msg"`, `"address"`, ...).
///
/// Shape: as `qmail_last_error_message()` (snprintf-like, returns the full length). Writes
/// `""` and returns 0 when there is no last error or it names no field. Threads: as
/// `qmail_last_error_message()`.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_last_error_field(buf: *mut c_char, len: usize) -> usize {
    ffi_infallible(|| {
        LAST_ERROR.with(|l| match l.try_borrow() {
            Ok(l) => write_truncated(
                buf,
                len,
                l.as_ref().and_then(|e| e.field.as_deref()).unwrap_or(""),
            ),
            Err(_) => write_truncated(buf, len, ""),
        })
    })
}

/// The result number of the calling thread's last error, or `QMAIL_RESULT_OK` when there is
/// none. Useful after `qmail_message_new()` returned NULL. Threads: per thread; safe anywhere.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_last_error_result() -> qmail_result {
    ffi_infallible(|| {
        LAST_ERROR.with(|l| match l.try_borrow() {
            Ok(l) => l.as_ref().map_or(qmail_result::Ok, |e| e.result),
            Err(_) => qmail_result::Ok,
        })
    })
}

/// The stable name of a result number, e.g. `"InvalidAddress"` for 2002: the same string that
/// the Rust, Python and Node APIs use for that kind of error. `"Unknown"` for a number that is
/// not a `qmail_result`.
///
/// Ownership: the string is static; do not free or modify it. Never NULL. Threads: safe
/// anywhere.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_result_name(result: u32) -> *const c_char {
    ffi_infallible(|| {
        c_str_ptr(
            qmail_result::from_u32(result)
                .unwrap_or(qmail_result::Unknown)
                .name(),
        )
    })
}

/// True when the same call may succeed if tried again later or on another spool
/// (`QMAIL_RESULT_SPOOL_UNAVAILABLE`, `QMAIL_RESULT_IO`); false for `QMAIL_RESULT_OK`, for
/// permanent errors (a bad address stays bad) and for numbers that are not a `qmail_result`.
/// The rule is qmail-core's `Error::is_transient`. Threads: safe anywhere.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_result_is_transient(result: u32) -> bool {
    ffi_infallible(|| {
        qmail_result::from_u32(result)
            .and_then(qmail_result::kind)
            .is_some_and(|k| qmail_core::Error::new(k, "").is_transient())
    })
}

// The id buffer constant must follow the core's bound on queue ids.
const _: () = assert!(crate::QMAIL_ID_MAX == queue_id::MAX_LEN);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_kind_has_a_number() {
        for &k in ErrorKind::ALL {
            let r = map_error(k);
            assert_ne!(r, qmail_result::Unknown, "{k} has no qmail_result");
            assert_eq!(r.name().to_str().unwrap(), k.as_str(), "name of {k}");
            assert_eq!(r.kind(), Some(k));
        }
    }

    #[test]
    fn numbers_are_stable() {
        // The ABI: these numbers are published in qmail.h and must never change.
        let expected: &[(qmail_result, u32)] = &[
            (qmail_result::Ok, 0),
            (qmail_result::SpoolUnavailable, 1001),
            (qmail_result::NoSpoolConfigured, 1002),
            (qmail_result::Corrupt, 1003),
            (qmail_result::Io, 1004),
            (qmail_result::InvalidArgument, 2001),
            (qmail_result::InvalidAddress, 2002),
            (qmail_result::InvalidHeader, 2003),
            (qmail_result::InvalidMessage, 2004),
            (qmail_result::Attachment, 2005),
            (qmail_result::NullParameter, 9001),
            (qmail_result::InvalidUtf8, 9002),
            (qmail_result::BufferTooSmall, 9003),
            (qmail_result::Panic, 9004),
            (qmail_result::Unknown, 9005),
        ];
        assert_eq!(expected.len(), ALL_RESULTS.len());
        for &(r, n) in expected {
            assert_eq!(r as u32, n, "{r:?}");
            assert_eq!(qmail_result::from_u32(n), Some(r));
        }
    }

    #[test]
    fn transient_follows_the_core() {
        for &r in ALL_RESULTS {
            let expected = matches!(r, qmail_result::SpoolUnavailable | qmail_result::Io);
            assert_eq!(qmail_result_is_transient(r as u32), expected, "{r:?}");
        }
        assert!(!qmail_result_is_transient(4242));
    }
}
