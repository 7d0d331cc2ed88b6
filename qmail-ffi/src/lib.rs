/*!
The C ABI of qmail: `libqmail.so` / `libqmail.a` and the header `include/qmail.h`, generated
from this crate by cbindgen (`scripts/gen-header`).

# Brief overview
A C program makes a `qmail_message` with `qmail_message_new()`, sets its fields with the
`qmail_message_*` setters and `qmail_attach*()`, submits it with `qmail_submit()` (which
writes the queue id into a caller's buffer) and frees it with `qmail_message_free()`. Every
fallible function returns a `qmail_result` (0 is OK; see [`error`]) and leaves a readable
message for the calling thread in `qmail_last_error_message()`.

This crate converts types and errors and nothing else: every rule (address syntax, header
checks, MIME, the spool) is `qmail_core`'s. The conventions (naming, ownership, NULL,
threads) are in `qmail-ffi/README.md`.

# Where `unsafe` is
Only in `handle.rs` (pointer to handle, string and buffer conversions, `free`); every block
says why it is sound. The `#[unsafe(no_mangle)]` attributes that export the functions are the
only other uses of the word. `panic.rs` keeps panics from unwinding into C.
*/
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod handle;
mod panic;

// in this order in qmail.h
pub mod error;
pub mod message;
pub mod raw;
pub mod spool;
// one-click unsubscribe (issue 16), after the message setters in qmail.h
pub mod list;
pub mod status;

use std::ffi::{CString, c_char};
use std::sync::OnceLock;

pub use error::qmail_result;
pub use message::qmail_message;

/// The longest queue id, in bytes, without the terminating NUL.
pub const QMAIL_ID_MAX: usize = 128;

/// The size of an id buffer for `qmail_submit()`: `QMAIL_ID_MAX` plus the NUL.
pub const QMAIL_ID_BUF_LEN: usize = 129;

const _: () = assert!(QMAIL_ID_BUF_LEN == QMAIL_ID_MAX + 1);

/// The library version, e.g. `"0.1.0"` (the qmail-core version it was built from; the
/// SONAME carries its major number).
///
/// Ownership: a static string; do not free or modify it. Never NULL. Threads: safe anywhere.
///
/// The header's `QMAIL_VERSION_MAJOR`, `QMAIL_VERSION_MINOR`, `QMAIL_VERSION_PATCH` and
/// `QMAIL_VERSION` say which version a program was compiled against; this says which library
/// it runs with.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_version() -> *const c_char {
    static VERSION: OnceLock<CString> = OnceLock::new();
    panic::ffi_infallible(|| {
        VERSION
            .get_or_init(|| CString::new(qmail_core::VERSION).unwrap_or_default())
            .as_ptr()
    })
}
