//! Submitting messages composed elsewhere (nodemailer's composer, a stored .eml).
//!
//! `qmail_core::RawMessage::parse` does all the work: line breaks become CRLF, Bcc fields are
//! removed (their addresses stay in the envelope), Date and Message-ID are added when missing,
//! lines over 998 octets and messages without From are refused.

use napi::bindgen_prelude::{AsyncTask, Buffer, Either, Env};
use napi_derive::napi;
use qmail_core::RawMessage;

use crate::error::to_js;
use crate::message::{Envelope, Prepared, recipient_list};
use crate::spool::{SpoolTask, spool_prepared};

/// Options of a raw submit.
#[napi(object)]
pub struct RawOptions {
    /// The SMTP envelope. Default: MAIL FROM = Sender, else From; RCPT TO = every address in
    /// To, Cc and Bcc. nodemailer's `mail.message.getEnvelope()` fits as is.
    pub envelope: Option<Envelope>,
    /// The spool directory, instead of the default spool(s).
    pub spool: Option<String>,
    /// Hold the message until this time, in Unix seconds.
    pub not_before: Option<f64>,
}

fn prepare(raw: &[u8], options: &Option<RawOptions>) -> qmail_core::Result<Prepared> {
    let envelope = options.as_ref().and_then(|o| o.envelope.as_ref());
    let from = envelope.and_then(|e| e.from.as_deref());
    let to = envelope.and_then(|e| e.to.as_ref()).map(recipient_list);
    let mut message = RawMessage::parse(raw, from, to.as_deref())?;
    let not_before = match options.as_ref().and_then(|o| o.not_before) {
        Some(t) => Some(crate::message::whole(t, "notBefore")?),
        None => None,
    };
    message.set_not_before(not_before);
    let spool = options
        .as_ref()
        .and_then(|o| o.spool.as_ref())
        .map(Into::into);
    Ok(Prepared::Raw(message, spool))
}

fn bytes(raw: &Either<Buffer, String>) -> &[u8] {
    match raw {
        Either::A(buf) => buf,
        Either::B(text) => text.as_bytes(),
    }
}

/// Spools an already-composed RFC 5322 message (a Buffer, or a string taken as UTF-8) durably
/// and resolves to its queue id. The work runs on the libuv thread pool.
///
/// Rejects with `QMAIL_INVALID_MESSAGE` (field `message`: no header/body separator, NUL, a line
/// over 998 octets, no From; field `envelope.to`: no recipient), `QMAIL_INVALID_ADDRESS`
/// (`envelope.from`, `envelope.to`, or the header field), `QMAIL_INVALID_HEADER`, and the spool
/// errors of {@link submit}.
#[napi(ts_return_type = "Promise<string>")]
pub fn submit_raw(
    raw: Either<Buffer, String>,
    options: Option<RawOptions>,
) -> AsyncTask<SpoolTask> {
    SpoolTask::new(move || prepare(bytes(&raw), &options).and_then(|p| spool_prepared(&p)))
}

/// {@link submitRaw} on the calling thread: returns the queue id or throws.
#[napi]
pub fn submit_raw_sync(
    env: Env,
    raw: Either<Buffer, String>,
    options: Option<RawOptions>,
) -> napi::Result<String> {
    prepare(bytes(&raw), &options)
        .and_then(|p| spool_prepared(&p))
        .map_err(|e| to_js(&env, &e))
}
