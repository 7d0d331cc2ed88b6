//! `qmail_message`: a message being built, and its setters.
//!
//! Each setter hands its argument to the matching `qmail_core::MessageBuilder` setter, which
//! validates it at once; nothing is checked here beyond NULL and UTF-8. On an error the
//! message is unchanged and the error names the field (`"to"`, `"headers.X-Trace"`,
//! `"attachments[0]"`).

use std::ffi::c_char;

use qmail_core::{AddressInput, MessageBuilder, Priority};

use crate::error::qmail_result;
use crate::handle::{
    Castable, bytes_arg, free_box, opt_str_arg, path_arg, str_arg, to_boxed_mut_ptr,
    try_mut_from_ptr,
};
use crate::panic::{ffi_fallible, ffi_infallible};

/// A message being built: addresses, subject, bodies, headers, attachments, and where it goes.
///
/// Made by `qmail_message_new()`, released by `qmail_message_free()`. Submitted (any number of
/// times) with `qmail_submit()`. A handle may be used by one thread at a time; different
/// handles may be used by different threads at once.
#[allow(non_camel_case_types)]
pub struct qmail_message {
    _private: [u8; 0],
}

impl Castable for qmail_message {
    type Rust = MessageBuilder;
}

/// X-Priority 1, Importance high (for `qmail_message_set_priority()`).
pub const QMAIL_PRIORITY_HIGHEST: i32 = 1;
/// X-Priority 2, Importance high.
pub const QMAIL_PRIORITY_HIGH: i32 = 2;
/// X-Priority 3, Importance normal: the default, no priority headers are written.
pub const QMAIL_PRIORITY_NORMAL: i32 = 3;
/// X-Priority 4, Importance low.
pub const QMAIL_PRIORITY_LOW: i32 = 4;
/// X-Priority 5, Importance low.
pub const QMAIL_PRIORITY_LOWEST: i32 = 5;

// cbindgen needs literals; these keep them equal to the core's numbers.
const _: () = assert!(
    QMAIL_PRIORITY_HIGHEST == Priority::Highest as i32
        && QMAIL_PRIORITY_HIGH == Priority::High as i32
        && QMAIL_PRIORITY_NORMAL == Priority::Normal as i32
        && QMAIL_PRIORITY_LOW == Priority::Low as i32
        && QMAIL_PRIORITY_LOWEST == Priority::Lowest as i32
);

/// The body of a setter that takes one string: `msg` checked, then the string (NULL, UTF-8),
/// then the core setter.
fn set_str(
    msg: *mut qmail_message,
    value: *const c_char,
    param: &'static str,
    set: impl FnOnce(&mut MessageBuilder, &str) -> qmail_core::Result<()>,
) -> qmail_result {
    ffi_fallible(|| {
        let m = try_mut_from_ptr(msg, "msg")?;
        set(m, str_arg(value, param)?)?;
        Ok(())
    })
}

/// The body of an address setter with the display name apart.
fn set_named(
    msg: *mut qmail_message,
    name: *const c_char,
    address: *const c_char,
    set: impl FnOnce(&mut MessageBuilder, AddressInput) -> qmail_core::Result<()>,
) -> qmail_result {
    ffi_fallible(|| {
        let m = try_mut_from_ptr(msg, "msg")?;
        let name = opt_str_arg(name, "name")?.map(str::to_owned);
        set(
            m,
            AddressInput::Parts(name, str_arg(address, "address")?.to_owned()),
        )?;
        Ok(())
    })
}

/// A new, empty message.
///
/// Ownership: the caller owns the result and must release it with `qmail_message_free()`.
/// Returns NULL only if qmail panicked (then `qmail_last_error_result()` is
/// `QMAIL_RESULT_PANIC`). Threads: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_new() -> *mut qmail_message {
    ffi_infallible(|| to_boxed_mut_ptr::<qmail_message>(MessageBuilder::default()))
}

/// Releases a message made by `qmail_message_new()`, and everything it holds (attachment
/// bytes copied by `qmail_attach_bytes()` included; attached files are not touched).
///
/// NULL is a no-op. Must not be called twice on the same handle, nor while another thread
/// uses it; the handle is invalid afterwards.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_free(msg: *mut qmail_message) {
    ffi_infallible(|| free_box(msg))
}

/// Sets From (RFC 5322 §3.6.2), required: `"Name <addr@example.com>"`, `"<addr@example.com>"`
/// or a bare `"addr@example.com"`. A display name with ',' or other specials is quoted:
/// `"\"Dupont, Élodie\" <elodie@example.com>"`; non-ASCII names are encoded when the message
/// is rendered (RFC 2047). A non-ASCII domain is converted to IDNA A-labels.
///
/// Shape (every setter): `msg` and `address` must not be NULL (`QMAIL_RESULT_NULL_PARAMETER`);
/// strings are NUL-terminated UTF-8 (`QMAIL_RESULT_INVALID_UTF8`), copied: the caller keeps
/// ownership and may free them after the call. On an error the message is unchanged and the
/// last error names the field. Threads: one thread at a time per message.
///
/// Errors: `QMAIL_RESULT_INVALID_ADDRESS` naming `from` (malformed; CR, LF or NUL anywhere),
/// `QMAIL_RESULT_INVALID_HEADER` (a control character in the display name).
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_set_from(
    msg: *mut qmail_message,
    address: *const c_char,
) -> qmail_result {
    set_str(msg, address, "address", |m, v| m.set_from(v).map(drop))
}

/// Sets Sender (RFC 5322 §3.6.2): the agent that sends on behalf of From. Also the default
/// envelope sender when set. Shape and errors as `qmail_message_set_from()`, naming `sender`.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_set_sender(
    msg: *mut qmail_message,
    address: *const c_char,
) -> qmail_result {
    set_str(msg, address, "address", |m, v| m.set_sender(v).map(drop))
}

/// Adds a Reply-To address (call again for more). Shape and errors as
/// `qmail_message_set_from()`, naming `reply_to`.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_add_reply_to(
    msg: *mut qmail_message,
    address: *const c_char,
) -> qmail_result {
    set_str(msg, address, "address", |m, v| m.add_reply_to(v).map(drop))
}

/// Adds a To recipient (call again for more). At least one To, Cc or Bcc recipient is
/// required. Shape and errors as `qmail_message_set_from()`, naming `to`.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_add_to(
    msg: *mut qmail_message,
    address: *const c_char,
) -> qmail_result {
    set_str(msg, address, "address", |m, v| m.add_to(v).map(drop))
}

/// Adds a Cc recipient. Shape and errors as `qmail_message_set_from()`, naming `cc`.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_add_cc(
    msg: *mut qmail_message,
    address: *const c_char,
) -> qmail_result {
    set_str(msg, address, "address", |m, v| m.add_cc(v).map(drop))
}

/// Adds a Bcc recipient: it goes into the envelope only and is never written into the
/// message's headers. Shape and errors as `qmail_message_set_from()`, naming `bcc`.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_add_bcc(
    msg: *mut qmail_message,
    address: *const c_char,
) -> qmail_result {
    set_str(msg, address, "address", |m, v| m.add_bcc(v).map(drop))
}

/// Adds one envelope recipient (SMTP RCPT TO, RFC 5321 §2.3.1) apart from the headers: the
/// first call replaces the recipients derived from To, Cc and Bcc (which stay in the headers
/// as given), later calls add to the list; duplicates are dropped. `address` is a bare
/// addr-spec, angle brackets allowed, UTF-8, copied. Use it for a mailing list's expansion or
/// a Bcc-only delivery. Threads: one thread at a time per message.
///
/// Errors: `QMAIL_RESULT_NULL_PARAMETER` naming `msg` or `address`;
/// `QMAIL_RESULT_INVALID_UTF8` naming `address`; `QMAIL_RESULT_INVALID_ADDRESS` naming
/// `envelope_to` (the list is left as it was).
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_add_envelope_to(
    msg: *mut qmail_message,
    address: *const c_char,
) -> qmail_result {
    set_str(msg, address, "address", |m, v| {
        m.add_envelope_to(v).map(drop)
    })
}

/// Sets From from a display name and an address given apart, so that the name needs no
/// quoting: `qmail_message_set_from_with_name(msg, "Dupont, Élodie", "elodie@example.com")`.
/// The same for the other address fields: `qmail_message_set_sender_with_name`,
/// `qmail_message_add_reply_to_with_name`, `qmail_message_add_to_with_name`,
/// `qmail_message_add_cc_with_name`, `qmail_message_add_bcc_with_name`.
///
/// Shape: `msg` and `address` must not be NULL; `name` may be NULL or empty (no display
/// name). `name` is raw text, any Unicode (quoted or RFC 2047 encoded when rendered);
/// `address` is a bare addr-spec, `local@domain`, without angle brackets. Both UTF-8, copied.
/// Threads: one thread at a time per message.
///
/// Errors: `QMAIL_RESULT_INVALID_HEADER` naming the field for CR, LF, NUL or another control
/// character in the name; `QMAIL_RESULT_INVALID_ADDRESS` naming the field for the address.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_set_from_with_name(
    msg: *mut qmail_message,
    name: *const c_char,
    address: *const c_char,
) -> qmail_result {
    set_named(msg, name, address, |m, a| m.set_from(a).map(drop))
}

/// Sets Sender from a name and an address given apart; see
/// `qmail_message_set_from_with_name()`.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_set_sender_with_name(
    msg: *mut qmail_message,
    name: *const c_char,
    address: *const c_char,
) -> qmail_result {
    set_named(msg, name, address, |m, a| m.set_sender(a).map(drop))
}

/// Adds a Reply-To address from a name and an address given apart; see
/// `qmail_message_set_from_with_name()`.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_add_reply_to_with_name(
    msg: *mut qmail_message,
    name: *const c_char,
    address: *const c_char,
) -> qmail_result {
    set_named(msg, name, address, |m, a| m.add_reply_to(a).map(drop))
}

/// Adds a To recipient from a name and an address given apart; see
/// `qmail_message_set_from_with_name()`.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_add_to_with_name(
    msg: *mut qmail_message,
    name: *const c_char,
    address: *const c_char,
) -> qmail_result {
    set_named(msg, name, address, |m, a| m.add_to(a).map(drop))
}

/// Adds a Cc recipient from a name and an address given apart; see
/// `qmail_message_set_from_with_name()`.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_add_cc_with_name(
    msg: *mut qmail_message,
    name: *const c_char,
    address: *const c_char,
) -> qmail_result {
    set_named(msg, name, address, |m, a| m.add_cc(a).map(drop))
}

/// Adds a Bcc recipient from a name and an address given apart (the name is not written
/// anywhere: Bcc is envelope only); see `qmail_message_set_from_with_name()`.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_add_bcc_with_name(
    msg: *mut qmail_message,
    name: *const c_char,
    address: *const c_char,
) -> qmail_result {
    set_named(msg, name, address, |m, a| m.add_bcc(a).map(drop))
}

/// Asks for a read receipt: Disposition-Notification-To (RFC 8098) with this address. Shape
/// and errors as `qmail_message_set_from()`, naming `read_receipt_to`.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_set_read_receipt_to(
    msg: *mut qmail_message,
    address: *const c_char,
) -> qmail_result {
    set_str(msg, address, "address", |m, v| {
        m.set_read_receipt_to(v).map(drop)
    })
}

/// Sets the Subject: any Unicode text on one line (RFC 2047 encoded when needed, folded to
/// lines of at most 78 characters). Shape as `qmail_message_set_from()`.
///
/// Errors: `QMAIL_RESULT_INVALID_HEADER` naming `subject` for CR, LF, NUL or another control
/// character (a trailing newline too: header values are one line).
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_set_subject(
    msg: *mut qmail_message,
    subject: *const c_char,
) -> qmail_result {
    set_str(msg, subject, "subject", |m, v| m.set_subject(v).map(drop))
}

/// Sets the text/plain body (UTF-8; LF, CRLF or lone CR line breaks all become CRLF; long
/// lines are encoded, never cut). With an HTML body too, both go in a multipart/alternative
/// (RFC 2046 §5.1.4). Shape as `qmail_message_set_from()`; the text is copied.
///
/// Errors: none beyond NULL and UTF-8 (a C string cannot hold the NUL that the core refuses).
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_set_text(
    msg: *mut qmail_message,
    text: *const c_char,
) -> qmail_result {
    set_str(msg, text, "text", |m, v| m.set_text(v).map(drop))
}

/// Sets the text/html body. `cid:NAME` references must match an inline part added with
/// `qmail_attach_inline()` (checked by `qmail_submit()`). Shape and errors as
/// `qmail_message_set_text()`.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_set_html(
    msg: *mut qmail_message,
    html: *const c_char,
) -> qmail_result {
    set_str(msg, html, "html", |m, v| m.set_html(v).map(drop))
}

/// Adds a custom header field, e.g. `("X-Campaign", "spring")`. `Message-ID` and `Date`
/// replace the generated ones (and are checked: `<left@right>`; an RFC 5322 §3.3 date-time).
/// Shape as `qmail_message_set_from()`; both strings are copied.
///
/// Errors: `QMAIL_RESULT_INVALID_HEADER` naming `headers.NAME`: a name that is empty, over 76
/// characters, or not printable US-ASCII 33..126 without ':' (RFC 5322 §2.2); CR, LF, NUL or
/// another control character in the value; a field that has its own setter (From, To, Cc,
/// Bcc, Subject, Content-Type, ...).
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_add_header(
    msg: *mut qmail_message,
    name: *const c_char,
    value: *const c_char,
) -> qmail_result {
    ffi_fallible(|| {
        let m = try_mut_from_ptr(msg, "msg")?;
        m.add_header(str_arg(name, "name")?, str_arg(value, "value")?)?;
        Ok(())
    })
}

/// Sets the priority, written as X-Priority and Importance (RFC 2156 §5.3):
/// `QMAIL_PRIORITY_HIGHEST` (1) .. `QMAIL_PRIORITY_LOWEST` (5); `QMAIL_PRIORITY_NORMAL` (3) is
/// the default. Also the dispatcher's order of sending. Threads: one thread at a time per
/// message.
///
/// Errors: `QMAIL_RESULT_NULL_PARAMETER` for a NULL `msg`; `QMAIL_RESULT_INVALID_ARGUMENT`
/// naming `priority` outside 1..5.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_set_priority(
    msg: *mut qmail_message,
    priority: i32,
) -> qmail_result {
    ffi_fallible(|| {
        let m = try_mut_from_ptr(msg, "msg")?;
        m.set_priority(Priority::from_number(i64::from(priority))?)?;
        Ok(())
    })
}

/// Sets the envelope sender (SMTP MAIL FROM, where bounces go): an address with or without
/// angle brackets, or `"<>"` (or `""`) for the null reverse-path (RFC 5321 §4.5.5). Default:
/// Sender if set, else From. Shape as `qmail_message_set_from()`.
///
/// Errors: `QMAIL_RESULT_INVALID_ADDRESS` naming `envelope_from`.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_set_envelope_from(
    msg: *mut qmail_message,
    address: *const c_char,
) -> qmail_result {
    set_str(msg, address, "address", |m, v| {
        m.set_envelope_from(v).map(drop)
    })
}

/// Holds the message until this time, in Unix seconds (UTC): it is spooled at once but a
/// dispatcher sends it only from then on (scheduled send). A time in the past means now.
/// Threads: one thread at a time per message.
///
/// Errors: `QMAIL_RESULT_NULL_PARAMETER` for a NULL `msg`; `QMAIL_RESULT_INVALID_ARGUMENT`
/// naming `not_before` for a negative time.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_set_not_before(
    msg: *mut qmail_message,
    unix_seconds: i64,
) -> qmail_result {
    ffi_fallible(|| {
        let m = try_mut_from_ptr(msg, "msg")?;
        m.set_not_before(unix_seconds)?;
        Ok(())
    })
}

/// Names the spool directory this message is submitted to, instead of the default spool(s)
/// of `qmail_set_default_spool()` / `QMAIL_SPOOL`. The directory (and its state
/// subdirectories) is created by `qmail_submit()` when missing. Submits to a named spool are
/// durable (fsynced). `path` is any NUL-terminated byte string (need not be UTF-8), copied.
///
/// Errors: `QMAIL_RESULT_NULL_PARAMETER`; `QMAIL_RESULT_INVALID_ARGUMENT` naming `spool` for
/// an empty path. Whether the directory is usable is found out by `qmail_submit()`.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_set_spool(
    msg: *mut qmail_message,
    path: *const c_char,
) -> qmail_result {
    ffi_fallible(|| {
        let m = try_mut_from_ptr(msg, "msg")?;
        m.set_spool(path_arg(path, "path")?)?;
        Ok(())
    })
}

/// Attaches a file. The file must exist and be a readable regular file now; its bytes are
/// read (streamed, base64-encoded) by `qmail_submit()`, so it must still be there then.
///
/// Shape: `msg` and `path` must not be NULL; `path` is any byte string (need not be UTF-8).
/// `filename` (UTF-8, may be NULL) is the name shown to the recipient, default the path's
/// last component; non-ASCII names are written per RFC 2231. `content_type` (may be NULL) is
/// `type/subtype`, default guessed from the file name's extension, else
/// `application/octet-stream`. All strings are copied; the caller keeps ownership.
///
/// Errors: `QMAIL_RESULT_ATTACHMENT` naming `attachments[N]` (N counts from 0) when the file
/// is missing, not a regular file or unreadable; `QMAIL_RESULT_INVALID_ARGUMENT` for a bad
/// content type (RFC 2045 §5.1) or a file name that is empty or has control characters.
/// Threads: one thread at a time per message.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_attach(
    msg: *mut qmail_message,
    path: *const c_char,
    filename: *const c_char,
    content_type: *const c_char,
) -> qmail_result {
    ffi_fallible(|| {
        let m = try_mut_from_ptr(msg, "msg")?;
        m.attach_path(
            path_arg(path, "path")?,
            opt_str_arg(filename, "filename")?,
            opt_str_arg(content_type, "content_type")?,
        )?;
        Ok(())
    })
}

/// Attaches `len` bytes from memory (copied: the caller may free `data` after the call).
///
/// Shape: `msg` must not be NULL; `data` may be NULL only when `len` is 0 (an empty
/// attachment). `filename` (UTF-8, may be NULL: no name) and `content_type` (may be NULL:
/// guessed from `filename`, else `application/octet-stream`) as in `qmail_attach()`.
///
/// Errors: `QMAIL_RESULT_INVALID_ARGUMENT` naming `attachments[N]` for a bad content type or
/// file name. Threads: one thread at a time per message.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_attach_bytes(
    msg: *mut qmail_message,
    data: *const u8,
    len: usize,
    filename: *const c_char,
    content_type: *const c_char,
) -> qmail_result {
    ffi_fallible(|| {
        let m = try_mut_from_ptr(msg, "msg")?;
        let data = bytes_arg(data, len, "data")?;
        m.attach_bytes(
            data,
            opt_str_arg(filename, "filename")?,
            opt_str_arg(content_type, "content_type")?,
        )?;
        Ok(())
    })
}

/// Adds an inline part from a file (an image the HTML shows), referenced from the HTML body
/// as `cid:CONTENT_ID` (RFC 2392). `content_id` is given without angle brackets, e.g.
/// `"logo@example.com"` or `"logo"`. The file is read by `qmail_submit()`.
///
/// Shape: `msg`, `path` and `content_id` must not be NULL; `content_type` may be NULL
/// (guessed from the file name). Strings are copied.
///
/// Errors: `QMAIL_RESULT_ATTACHMENT` naming `inline[N]` for a missing or unreadable file;
/// `QMAIL_RESULT_INVALID_HEADER` for a Content-ID that is not printable ASCII without
/// specials; `QMAIL_RESULT_INVALID_ARGUMENT` for a bad content type. Threads: one thread at a
/// time per message.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_attach_inline(
    msg: *mut qmail_message,
    path: *const c_char,
    content_id: *const c_char,
    content_type: *const c_char,
) -> qmail_result {
    ffi_fallible(|| {
        let m = try_mut_from_ptr(msg, "msg")?;
        m.attach_inline_path(
            path_arg(path, "path")?,
            str_arg(content_id, "content_id")?,
            opt_str_arg(content_type, "content_type")?,
        )?;
        Ok(())
    })
}

/// Adds an inline part from `len` bytes in memory (copied), referenced from the HTML body as
/// `cid:CONTENT_ID`. Shape and errors as `qmail_attach_inline()` and `qmail_attach_bytes()`:
/// `data` may be NULL only when `len` is 0; `content_type` NULL means
/// `application/octet-stream`.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_attach_inline_bytes(
    msg: *mut qmail_message,
    data: *const u8,
    len: usize,
    content_id: *const c_char,
    content_type: *const c_char,
) -> qmail_result {
    ffi_fallible(|| {
        let m = try_mut_from_ptr(msg, "msg")?;
        let data = bytes_arg(data, len, "data")?;
        m.attach_inline_bytes(
            data,
            str_arg(content_id, "content_id")?,
            opt_str_arg(content_type, "content_type")?,
        )?;
        Ok(())
    })
}
