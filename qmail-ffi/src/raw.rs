//! Submitting a message composed elsewhere: `qmail_submit_raw`, the C side of Python's
//! `submit_message()` and Node's `submitRaw()`.

use std::ffi::c_char;
use std::path::Path;

use qmail_core::RawMessage;

use crate::QMAIL_ID_BUF_LEN;
use crate::error::{Failure, qmail_result};
use crate::handle::{bytes_arg, opt_str_arg, path_arg, str_array_arg, write_whole};
use crate::panic::ffi_fallible;

/// Spools an already composed RFC 5322 message (`data`, `len` bytes: header section, empty
/// line, body; e.g. what a mail library serialised) and writes its queue id into `id_buf`.
///
/// What is done to the bytes, as for Python's `submit_message()` and Node's `submitRaw()`:
/// line ends become CRLF; Bcc fields are removed (their addresses stay in the envelope); Date
/// and Message-ID are added when missing. A NUL, a line over 998 octets (RFC 5322 §2.1.1), a
/// bad field name or a header section without From is refused.
///
/// Envelope (RFC 5321 MAIL FROM / RCPT TO): `envelope_from` NULL = the Sender field, else
/// From; `"<>"` = the null reverse-path. `recipients` (`recipients_len` addresses) with
/// `recipients_len` 0 = To, Cc and Bcc; `recipients` may be NULL then.
///
/// Where: `spool` (a directory) when not NULL, else the default spool(s) as for
/// `qmail_submit()`. When: `not_before` (Unix seconds) 0 = now; a later time puts the message
/// in `scheduled/` until then.
///
/// Shape: `data` must point to `len` bytes (NULL only with `len` 0, which is refused as a
/// message without header); borrowed for the call. `id_buf`/`id_buf_len` as for
/// `qmail_submit()`: at least `QMAIL_ID_BUF_LEN` bytes, or NULL and 0; written only on
/// success.
///
/// Durability: as `qmail_submit()`: after `QMAIL_RESULT_OK` the message is committed.
///
/// Errors:
/// - `QMAIL_RESULT_NULL_PARAMETER` naming `data`, `recipients` (a NULL array with a non-zero
///   length, or a NULL element) or `id_buf`;
/// - `QMAIL_RESULT_INVALID_UTF8` naming `envelope_from` / `recipients`;
/// - `QMAIL_RESULT_BUFFER_TOO_SMALL` naming `id_buf_len`; nothing submitted;
/// - `QMAIL_RESULT_INVALID_MESSAGE` naming `message` (no empty line after the header, a NUL,
///   a long line, no From, no recipient); `QMAIL_RESULT_INVALID_HEADER` for a bad field name;
///   `QMAIL_RESULT_INVALID_ADDRESS` naming `envelope_from`, `recipients` or the header field;
/// - `QMAIL_RESULT_SPOOL_UNAVAILABLE`, `QMAIL_RESULT_NO_SPOOL_CONFIGURED` naming `spool`.
///
/// Threads: safe from many threads at once.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn qmail_submit_raw(
    data: *const u8,
    len: usize,
    envelope_from: *const c_char,
    recipients: *const *const c_char,
    recipients_len: usize,
    spool: *const c_char,
    not_before: i64,
    id_buf: *mut c_char,
    id_buf_len: usize,
) -> qmail_result {
    ffi_fallible(|| {
        let want_id = !(id_buf.is_null() && id_buf_len == 0);
        if want_id {
            if id_buf.is_null() {
                return Err(Failure::Null("id_buf"));
            }
            if id_buf_len < QMAIL_ID_BUF_LEN {
                return Err(Failure::IdBufferTooSmall { given: id_buf_len });
            }
        }
        let bytes = bytes_arg(data, len, "data")?;
        let from = opt_str_arg(envelope_from, "envelope_from")?;
        let rcpts: Vec<String> = str_array_arg(recipients, recipients_len, "recipients")?
            .into_iter()
            .map(str::to_owned)
            .collect();
        let spool: Option<&Path> = if spool.is_null() {
            None
        } else {
            Some(path_arg(spool, "spool")?)
        };
        let mut raw =
            RawMessage::parse(bytes, from, (!rcpts.is_empty()).then_some(rcpts.as_slice()))?;
        raw.set_not_before((not_before != 0).then_some(not_before));
        let id = match spool {
            Some(p) => qmail_core::Spool::open(p)?.submit_raw(&raw)?,
            None => qmail_core::default_initiator()?.submit_raw(&raw, None)?,
        };
        if want_id {
            write_whole(id_buf, id_buf_len, id.as_str());
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    const MSG: &[u8] = b"From: Shop <noreply@example.com>\nTo: a@example.org\nBcc: hidden@example.org\nSubject: raw\n\nbody\n";

    fn submit(
        data: &[u8],
        from: Option<&str>,
        rcpts: &[&str],
        spool: &std::path::Path,
    ) -> (qmail_result, String) {
        let from = from.map(|f| CString::new(f).unwrap());
        let rc: Vec<CString> = rcpts.iter().map(|r| CString::new(*r).unwrap()).collect();
        let ptrs: Vec<*const c_char> = rc.iter().map(|c| c.as_ptr()).collect();
        let sp = CString::new(spool.to_str().unwrap()).unwrap();
        let mut id = [0 as c_char; QMAIL_ID_BUF_LEN];
        let r = qmail_submit_raw(
            data.as_ptr(),
            data.len(),
            from.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            if ptrs.is_empty() {
                std::ptr::null()
            } else {
                ptrs.as_ptr()
            },
            ptrs.len(),
            sp.as_ptr(),
            0,
            id.as_mut_ptr(),
            id.len(),
        );
        let id: String = id
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8 as char)
            .collect();
        (r, id)
    }

    #[test]
    fn raw_bytes_are_spooled_with_their_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let (r, id) = submit(MSG, None, &[], dir.path());
        assert_eq!(r, qmail_result::Ok);
        let f = qmail_core::SpoolFile::open(&dir.path().join("ready").join(&id)).unwrap();
        assert_eq!(f.header.envelope.mail_from, "noreply@example.com");
        assert_eq!(
            f.header.envelope.rcpt_to,
            ["a@example.org", "hidden@example.org"]
        );
        let body = f.read_body().unwrap();
        assert!(
            !String::from_utf8_lossy(&body).contains("hidden@"),
            "Bcc removed"
        );
        assert!(body.windows(2).any(|w| w == b"\r\n"));

        let (r, id) = submit(MSG, Some("<>"), &["x@example.net"], dir.path());
        assert_eq!(r, qmail_result::Ok);
        let f = qmail_core::SpoolFile::open(&dir.path().join("ready").join(&id)).unwrap();
        assert_eq!(f.header.envelope.mail_from, "");
        assert_eq!(f.header.envelope.rcpt_to, ["x@example.net"]);
    }

    #[test]
    fn bad_input_is_a_result_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let (r, _) = submit(b"no header separator", None, &[], dir.path());
        assert_eq!(r, qmail_result::InvalidMessage);
        let (r, _) = submit(MSG, None, &["not-an-address"], dir.path());
        assert_eq!(r, qmail_result::InvalidAddress);
        let r = qmail_submit_raw(
            std::ptr::null(),
            5,
            std::ptr::null(),
            std::ptr::null(),
            0,
            std::ptr::null(),
            0,
            std::ptr::null_mut(),
            0,
        );
        assert_eq!(r, qmail_result::NullParameter);
        let r = qmail_submit_raw(
            MSG.as_ptr(),
            MSG.len(),
            std::ptr::null(),
            std::ptr::null(),
            2,
            std::ptr::null(),
            0,
            std::ptr::null_mut(),
            0,
        );
        assert_eq!(r, qmail_result::NullParameter);
        // refused before the spool is touched: not even its directories exist
        assert!(!dir.path().join("ready").exists());
    }
}
