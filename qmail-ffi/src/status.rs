//! Where a submitted message is: `qmail_message_state`, over the read-only status view of
//! `qmail_core::spool::status` (the same answer as `qmail-dispatcher list`, Python's
//! `Spool.status()` and Node's `status()`).

use std::ffi::c_char;

use qmail_core::spool::status::{self, State};

use crate::error::qmail_result;
use crate::handle::{opt_str_arg, path_arg, str_arg, write_out, write_truncated};
use crate::panic::ffi_fallible;

/// Where a message is (see `qmail_message_state()`).
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum qmail_state {
    /// In `ready/`: waiting for a dispatcher.
    Queued = 0,
    /// In `scheduled/`: held until its not-before time (`next_attempt`).
    Scheduled = 1,
    /// In `active/`: a dispatcher is delivering it now.
    Active = 2,
    /// In `deferred/`: a temporary failure; retried at `next_attempt`; `reply_buf` gets the
    /// last reply (e.g. `"451 4.7.1 try later"`).
    Deferred = 3,
    /// In `hold/`: put on hold by an operator (`qmail-dispatcher hold ID`).
    Held = 4,
    /// In `failed/` or `corrupt/`: `reply_buf` gets the reasons (`"<rcpt>: 550 ..."`).
    Failed = 5,
    /// Delivered: in `sent/`, or recorded as delivered in the delivery log given.
    Delivered = 6,
    /// Not in the spool, and not in the delivery log given (if any).
    Unknown = 7,
}

impl From<State> for qmail_state {
    fn from(s: State) -> Self {
        match s {
            State::Queued => qmail_state::Queued,
            State::Scheduled => qmail_state::Scheduled,
            State::Active => qmail_state::Active,
            State::Deferred => qmail_state::Deferred,
            State::Held => qmail_state::Held,
            State::Failed => qmail_state::Failed,
            State::Delivered => qmail_state::Delivered,
            State::Unknown => qmail_state::Unknown,
        }
    }
}

/// What `qmail_message_state()` found. Times are Unix seconds, 0 when not applicable.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct qmail_message_status {
    /// Where the message is.
    pub state: qmail_state,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (deferred: the retry time; scheduled: the not-before
    /// time), Unix seconds; 0 when none.
    pub next_attempt: i64,
    /// When it was delivered, Unix seconds; 0 when not delivered (or not known).
    pub delivered_at: i64,
}

/// Asks where message `queue_id` (the id `qmail_submit()` wrote) is in spool `spool`.
/// Read-only: it lists directories and reads the spool file header, the dispatcher's state
/// file and (when given) the delivery log; it never changes anything, and may run beside
/// dispatchers (a message moving meanwhile is seen in one state or the next).
///
/// Shape: `spool` and `queue_id` must not be NULL (UTF-8 for the id; the spool path is
/// bytes). `delivery_log` may be NULL: the dispatcher's `delivery_log` file, read to tell a
/// delivered message from an unknown one when `sent/` does not keep it. `out` must not be
/// NULL and receives the state, attempts and times. `reply_buf` (may be NULL with
/// `reply_buf_len` 0) receives, snprintf-style (truncated at a UTF-8 boundary, always
/// NUL-terminated), the last reply of a deferred message or the reasons of a failed one
/// (`"; "`-separated), else an empty string; the caller owns it.
///
/// Errors:
/// - `QMAIL_RESULT_NULL_PARAMETER` naming `spool`, `queue_id` or `out`;
/// - `QMAIL_RESULT_INVALID_UTF8` naming `queue_id` or `delivery_log`;
/// - `QMAIL_RESULT_INVALID_ARGUMENT` naming `queue_id`: not a queue id (nothing is looked up);
/// - `QMAIL_RESULT_SPOOL_UNAVAILABLE` naming `spool`: not a readable directory.
///
/// Threads: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_message_state(
    spool: *const c_char,
    queue_id: *const c_char,
    delivery_log: *const c_char,
    out: *mut qmail_message_status,
    reply_buf: *mut c_char,
    reply_buf_len: usize,
) -> qmail_result {
    ffi_fallible(|| {
        let spool = path_arg(spool, "spool")?;
        let id = str_arg(queue_id, "queue_id")?;
        let log = opt_str_arg(delivery_log, "delivery_log")?;
        if out.is_null() {
            return Err(crate::error::Failure::Null("out"));
        }
        let s = status::status(spool, id, log.map(std::path::Path::new))?;
        let text = if s.reasons.is_empty() {
            s.last_reply.clone().unwrap_or_default()
        } else {
            s.reasons.join("; ")
        };
        write_out(
            out,
            "out",
            qmail_message_status {
                state: s.state.into(),
                attempts: s.attempts,
                next_attempt: s.next_attempt.unwrap_or(0),
                delivered_at: s.delivered_at.unwrap_or(0),
            },
        )?;
        write_truncated(reply_buf, reply_buf_len, &text);
        Ok(())
    })
}
