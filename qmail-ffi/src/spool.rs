//! Submitting: `qmail_submit` and the process-wide default spool.
//!
//! A submit builds the message (the last validation: From, a recipient, `cid:` references)
//! and hands it to `qmail_core::submit`, which writes it into the message's own spool or
//! spreads it over the default spools (round-robin, skipping one that fails). See
//! `docs/spool-format.md` for what lands on disk.

use std::ffi::c_char;

use qmail_core::SpoolOptions;

use crate::QMAIL_ID_BUF_LEN;
use crate::error::{Failure, qmail_result};
use crate::handle::{str_arg, try_ref_from_ptr, write_whole};
use crate::message::qmail_message;
use crate::panic::ffi_fallible;

/// Submits the message: validates it, renders it (RFC 5322, MIME) and writes it into a spool,
/// then writes its queue id into `id_buf`.
///
/// Where: the spool named with `qmail_message_set_spool()`, else the default spool(s) of
/// `qmail_set_default_spool()`, else those of the `QMAIL_SPOOL` environment variable (read at
/// the first submit that needs it).
///
/// Shape: `msg` must not be NULL and is not modified: it may be submitted again (each submit
/// is a new message with a new Message-ID, unless one was set with
/// `qmail_message_add_header()`) or freed. `id_buf` receives the queue id, a NUL-terminated
/// ASCII string of at most `QMAIL_ID_MAX` bytes (`[A-Za-z0-9._-]`), the name under which the
/// dispatcher knows the message. It must hold at least `QMAIL_ID_BUF_LEN` (129) bytes; this
/// is checked before anything is done, so a too-small buffer never leaves a message spooled
/// whose id was lost. Pass `id_buf` NULL and `id_buf_len` 0 when the id is not needed. The
/// caller owns `id_buf`; it is written only on success.
///
/// Durability: after `QMAIL_RESULT_OK` the message is committed (fsynced file and directory)
/// and survives a crash or power loss, unless the default spool was set with
/// `qmail_set_default_spool_with(..., durable = false, ...)`. On any error nothing is left in
/// the spool. Files attached with `qmail_attach()` are read now.
///
/// Errors:
/// - `QMAIL_RESULT_NULL_PARAMETER`: `msg` is NULL, or `id_buf` is NULL with a non-zero
///   `id_buf_len`;
/// - `QMAIL_RESULT_BUFFER_TOO_SMALL` naming `id_buf_len`: below `QMAIL_ID_BUF_LEN`; not
///   submitted;
/// - `QMAIL_RESULT_INVALID_MESSAGE` naming `from` (no From), `to` (no recipient at all) or
///   `html` (a `cid:` reference without an inline part); permanent;
/// - `QMAIL_RESULT_ATTACHMENT` naming `attachments[N]` / `inline[N]`: a file became
///   unreadable; permanent for this message;
/// - `QMAIL_RESULT_SPOOL_UNAVAILABLE` naming `spool`: the spool cannot be created or written
///   (permission, disk full, a file in the way; with several default spools, all of them
///   failed); transient;
/// - `QMAIL_RESULT_NO_SPOOL_CONFIGURED` naming `spool`: no spool anywhere.
///
/// Threads: safe to call from many threads at once, each with its own message (or on one
/// message that no thread modifies meanwhile); spools need no locks.
#[unsafe(no_mangle)]
pub extern "C" fn qmail_submit(
    msg: *const qmail_message,
    id_buf: *mut c_char,
    id_buf_len: usize,
) -> qmail_result {
    ffi_fallible(|| {
        let builder = try_ref_from_ptr(msg, "msg")?;
        let want_id = !(id_buf.is_null() && id_buf_len == 0);
        if want_id {
            if id_buf.is_null() {
                return Err(Failure::Null("id_buf"));
            }
            if id_buf_len < QMAIL_ID_BUF_LEN {
                return Err(Failure::IdBufferTooSmall { given: id_buf_len });
            }
        }
        let message = builder.build()?;
        let id = qmail_core::submit(&message)?;
        if want_id {
            write_whole(id_buf, id_buf_len, id.as_str());
        }
        Ok(())
    })
}

/// Sets the process-wide default spool(s): one or more directories separated by ':', the
/// syntax of the `QMAIL_SPOOL` environment variable (which it overrides), e.g.
/// `"/var/spool/qmail:/mnt/nfs/qmail"`. Submits spread over them round-robin and skip a spool
/// that fails. Durable: every submit is fsynced; files are created with mode 0640 (readable by
/// the spool's group: the dispatcher user reads them through the submit group).
///
/// Shape: `spools` must not be NULL; UTF-8; copied. The directories are opened (and created
/// when missing) lazily by the first submit that uses each.
///
/// Errors: `QMAIL_RESULT_NULL_PARAMETER`, `QMAIL_RESULT_INVALID_UTF8`,
/// `QMAIL_RESULT_NO_SPOOL_CONFIGURED` for a list with no directory (the previous default is
/// kept).
///
/// Threads: safe at any time, also while other threads submit (a submit uses the default that
/// was set when it started).
#[unsafe(no_mangle)]
pub extern "C" fn qmail_set_default_spool(spools: *const c_char) -> qmail_result {
    ffi_fallible(|| {
        qmail_core::set_default_spool(str_arg(spools, "spools")?)?;
        Ok(())
    })
}

/// As `qmail_set_default_spool()`, with the write options.
///
/// `durable`: true fsyncs each spool file and its directory before `qmail_submit()` returns
/// (a committed message survives power loss); false skips both syncs: much faster, and a
/// crash may lose the last submits (it never exposes a partial one). `file_mode`: permission
/// bits of spool files, at most 0777, e.g. 0640 (the default of `qmail_set_default_spool()`:
/// the dispatcher reads through the submit group) or 0600 when one user does both; directories it creates get the same
/// bits plus search (x) where read is granted.
///
/// Errors: as `qmail_set_default_spool()`; `QMAIL_RESULT_INVALID_ARGUMENT` naming `file_mode`
/// for a mode over 0777 (found by the first submit).
#[unsafe(no_mangle)]
pub extern "C" fn qmail_set_default_spool_with(
    spools: *const c_char,
    durable: bool,
    file_mode: u32,
) -> qmail_result {
    ffi_fallible(|| {
        let options = SpoolOptions { durable, file_mode };
        qmail_core::set_default_spool_with(str_arg(spools, "spools")?, options)?;
        Ok(())
    })
}
