//! One-click unsubscribe for C callers: the core builder's `list_unsubscribe` (RFC 2369
//! `List-Unsubscribe`, RFC 8058 `List-Unsubscribe-Post`), the same rule as in Python and Node.

use std::ffi::c_char;

use crate::error::qmail_result;
use crate::handle::{opt_str_arg, str_arg, try_mut_from_ptr};
use crate::message::qmail_message;
use crate::panic::ffi_fallible;

/// Offers unsubscribing: writes `List-Unsubscribe: <url>[, <mailto>]` (RFC 2369 §3.2) and,
/// when `one_click` is non-zero, `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
/// (RFC 8058), for which `url` must be an `https://` URI. `mailto` (may be NULL) is a
/// `mailto:` URI or a bare address, written after `url`. UTF-8, NUL-terminated; the strings are
/// copied. Threads: one thread at a time per message.
///
/// Errors: `QMAIL_RESULT_NULL_PARAMETER` for a NULL `msg` or `url`;
/// `QMAIL_RESULT_INVALID_ARGUMENT` naming `list_unsubscribe.url` (not an http(s) URI, not
/// https with `one_click`, spaces, `<`, `>`, `"` or `,` in it, over 900 octets) or
/// `list_unsubscribe.mailto` (not a mailto: URI of a valid address).
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_set_list_unsubscribe(
    msg: *mut qmail_message,
    url: *const c_char,
    mailto: *const c_char,
    one_click: i32,
) -> qmail_result {
    ffi_fallible(|| {
        let m = try_mut_from_ptr(msg, "msg")?;
        let url = str_arg(url, "url")?;
        let mailto = opt_str_arg(mailto, "mailto")?;
        m.set_list_unsubscribe(url, mailto, one_click != 0)?;
        Ok(())
    })
}
