//! Submitting messages composed elsewhere (nodemailer's composer, a stored .eml).
//!
//! `qmail_core::RawMessage::parse` does all the work: line breaks become CRLF, Bcc fields are
//! removed (their addresses stay in the envelope), Date and Message-ID are added when missing,
//! lines over 998 octets and messages without From are refused. [`RawSubmit`] does the same for
//! a message given in pieces (a stream), in bounded memory (`qmail_core::RawStream`).

use std::path::Path;

use napi::bindgen_prelude::{AsyncTask, Buffer, Either, Env};
use napi_derive::napi;
use qmail_core::{Error, ErrorKind, Priority, RawMessage, RawStream};

use crate::error::to_js;
use crate::message::{Envelope, Prepared, envelope_recipients, whole};
use crate::spool::{SpoolTask, spool_options, spool_prepared};

/// Options of a raw submit.
#[napi(object)]
pub struct RawOptions {
    /// The SMTP envelope. Default: MAIL FROM = Sender, else From; RCPT TO = every address in
    /// To, Cc and Bcc. nodemailer's `mail.message.getEnvelope()` fits as is.
    pub envelope: Option<Envelope>,
    /// The spool directory, instead of the default spool(s).
    pub spool: Option<String>,
    /// The mode of the spool file written into `spool` (default: the core's).
    pub file_mode: Option<u32>,
    /// Hold the message until this time, in Unix seconds.
    pub not_before: Option<f64>,
    /// The spool priority (`'high'`, 1..5, ...). Default: the message's X-Priority, else
    /// Importance, else Priority header; else normal.
    pub priority: Option<Either<String, f64>>,
}

fn priority(p: &Option<Either<String, f64>>) -> qmail_core::Result<Option<Priority>> {
    Ok(match p {
        None => None,
        Some(Either::A(name)) => Some(Priority::parse(name)?),
        Some(Either::B(n)) => Some(Priority::from_number(whole(*n, "priority")?)?),
    })
}

fn not_before(o: &RawOptions) -> qmail_core::Result<Option<i64>> {
    o.not_before.map(|t| whole(t, "notBefore")).transpose()
}

fn prepare(raw: &[u8], options: &Option<RawOptions>) -> qmail_core::Result<Prepared> {
    let envelope = options.as_ref().and_then(|o| o.envelope.as_ref());
    let from = envelope.and_then(|e| e.from.as_deref());
    let to = envelope.and_then(envelope_recipients);
    let mut message = RawMessage::parse(raw, from, to.as_deref())?;
    if let Some(o) = options {
        message.set_not_before(not_before(o)?);
        if let Some(p) = priority(&o.priority)? {
            message.set_priority(p);
        }
    }
    let spool = options.as_ref().and_then(|o| o.spool.clone());
    let file_mode = options.as_ref().and_then(|o| o.file_mode);
    let spool_opts = spool_options(spool.as_deref(), file_mode)?;
    Ok(Prepared::Raw(message, spool.map(Into::into), spool_opts))
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
/// Rejects with `QMAIL_INVALID_MESSAGE` (field `message`: no empty line after the header
/// section, NUL, a line over 998 octets, no From; field `envelope.to`: no recipient),
/// `QMAIL_INVALID_ADDRESS` (`envelope.from`, `envelope.to`, or the header field),
/// `QMAIL_INVALID_HEADER`, and the spool errors of {@link submit}.
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

/// A raw message spooled as it is streamed (nodemailer's `createReadStream()`), in bounded
/// memory: the header section is buffered (at most 1 MiB) and checked as {@link submitRaw}
/// checks it; then each `write()` goes straight into the spool file (`tmp/`, invisible to the
/// dispatcher), and `finish()` commits it durably. The same bytes are spooled as `submitRaw` of
/// the whole message would. A stream not finished (or `abort()`ed, or failed) leaves nothing.
#[napi]
pub struct RawSubmit {
    stream: Option<RawStream>,
}

fn gone() -> Error {
    Error::new(
        ErrorKind::InvalidArgument,
        "this RawSubmit is finished, aborted or failed",
    )
    .with_field("message")
}

#[napi]
impl RawSubmit {
    /// Starts a streamed submit. Throws the routing errors of {@link submit} (no spool, a bad
    /// spool path) and `QMAIL_INVALID_ARGUMENT` for a bad option.
    #[napi(constructor)]
    pub fn new(env: Env, options: Option<RawOptions>) -> napi::Result<Self> {
        (|| {
            let o = options.as_ref();
            let envelope = o.and_then(|o| o.envelope.as_ref());
            let from = envelope.and_then(|e| e.from.clone());
            let to = envelope.and_then(envelope_recipients);
            let spool = o.and_then(|o| o.spool.clone());
            let spool_opts = spool_options(spool.as_deref(), o.and_then(|o| o.file_mode))?;
            let target = qmail_core::route(spool.as_deref().map(Path::new), spool_opts)?;
            let mut stream = RawStream::new(target, from, to);
            if let Some(o) = o {
                stream.set_not_before(not_before(o)?);
                stream.set_priority(priority(&o.priority)?);
            }
            Ok(RawSubmit {
                stream: Some(stream),
            })
        })()
        .map_err(|e| to_js(&env, &e))
    }

    /// Takes the next piece of the message (written into the spool file once the header
    /// section is complete). Throws the errors of {@link submitRaw}; after one, the stream is
    /// failed and nothing is spooled.
    #[napi]
    pub fn write(&mut self, env: Env, chunk: Buffer) -> napi::Result<()> {
        let r = match self.stream.as_mut() {
            Some(s) => s.write(&chunk),
            None => Err(gone()),
        };
        if r.is_err() {
            self.stream = None;
        }
        r.map_err(|e| to_js(&env, &e))
    }

    /// The Message-ID, once the header section has been read (else null).
    #[napi(getter)]
    pub fn message_id(&self) -> Option<String> {
        self.stream
            .as_ref()
            .and_then(|s| s.message_id().map(str::to_owned))
    }

    /// Ends the message: fsyncs, commits and resolves to the queue id (on the libuv thread
    /// pool). Rejects with the errors of {@link submitRaw}.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn finish(&mut self) -> AsyncTask<SpoolTask> {
        let mut stream = self.stream.take();
        SpoolTask::new(move || match stream.take() {
            Some(s) => s.finish().map(|id| id.to_string()),
            None => Err(gone()),
        })
    }

    /// Drops the stream: nothing is spooled (the temporary file is removed).
    #[napi]
    pub fn abort(&mut self) {
        self.stream = None;
    }
}
