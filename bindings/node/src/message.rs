//! nodemailer-style message options, turned into core builder calls.
//!
//! The option names are nodemailer's (`from`, `to`, `replyTo`, `attachments[].contentType`, ...)
//! so its users feel at home. Each option maps to one `qmail_core::MessageBuilder` setter, called
//! in the order the options are listed here; the first failing setter's error is the one
//! reported. Nothing is checked here that the core does not check.

// The option types are JS unions (`string | Address | Array<...>`), spelled out in full so that
// napi-rs can write them into index.d.ts; a type alias would reach TypeScript as an unknown name.
#![allow(clippy::type_complexity)]

use std::path::PathBuf;
use std::sync::Arc;

use indexmap::IndexMap;
use napi::bindgen_prelude::{Buffer, Either, Either3};
use napi_derive::napi;
use qmail_core::{
    AddressInput, Error, ErrorKind, Message as CoreMessage, MessageBuilder, Priority, RawMessage,
};

/// A mailbox as an object, as nodemailer takes it: `{ name: 'Shop', address: 'noreply@example.com' }`.
#[napi(object)]
pub struct Address {
    /// The display name: any Unicode text on one line, written as RFC 2047 encoded-words when
    /// it is not plain ASCII.
    pub name: Option<String>,
    /// The addr-spec `local@domain` (RFC 5322 §3.4.1); internationalised domains are sent as
    /// IDNA A-labels, non-ASCII local parts need SMTPUTF8 (RFC 6531).
    pub address: String,
}

/// One custom header in the list form nodemailer also takes: `{ key: 'X-Campaign', value: 'spring' }`.
#[napi(object)]
pub struct Header {
    /// The field name: printable US-ASCII without ':' or space (RFC 5322 §2.2).
    pub key: String,
    /// The value: one line, any Unicode (RFC 2047 encoded when needed).
    pub value: String,
}

/// An attachment, or an inline part when `cid` is set.
#[napi(object)]
pub struct Attachment {
    /// The file name shown to the recipient (RFC 2231 encoded when not ASCII). Default: the
    /// base name of `path`; none for `content`.
    pub filename: Option<String>,
    /// A file to attach, streamed from disk when the message is spooled (never held in memory
    /// whole). Exactly one of `path` and `content`.
    pub path: Option<String>,
    /// The bytes to attach: a Buffer, or a string taken as UTF-8 text.
    pub content: Option<Either<Buffer, String>>,
    /// The MIME type, `type/subtype` (RFC 2045 §5.1). Default: guessed from the file name's
    /// extension, else `application/octet-stream`.
    pub content_type: Option<String>,
    /// Makes this an inline part with this Content-ID (RFC 2392), referenced from `html` as
    /// `cid:...`.
    pub cid: Option<String>,
}

/// The SMTP envelope, when it must differ from the headers (RFC 5321 §2.3.1).
#[napi(object)]
pub struct Envelope {
    /// MAIL FROM: an address, or `'<>'` for the null reverse-path (no bounces). Default: the
    /// Sender address, else From.
    pub from: Option<String>,
    /// RCPT TO: one address or a list, replacing the recipients taken from to, cc and bcc.
    /// Bare addresses (`a@example.org`), no display names.
    pub to: Option<Either<String, Vec<String>>>,
}

/// The message, in nodemailer's option names. Every address option takes a string
/// (`'Name <a@example.com>'` or `'a@example.com'`) or an {@link Address} object; `to`, `cc`,
/// `bcc` and `replyTo` also take an array of them (one address per element).
#[napi(object)]
pub struct Message {
    /// From (RFC 5322 §3.6.2). Required.
    pub from: Option<Either<String, Address>>,
    /// Sender: the agent sending on behalf of From (RFC 5322 §3.6.2).
    pub sender: Option<Either<String, Address>>,
    /// To recipients.
    pub to: Option<Either3<String, Vec<Either<String, Address>>, Address>>,
    /// Cc recipients.
    pub cc: Option<Either3<String, Vec<Either<String, Address>>, Address>>,
    /// Bcc recipients: in the envelope only, never written into the message.
    pub bcc: Option<Either3<String, Vec<Either<String, Address>>, Address>>,
    /// Reply-To addresses.
    pub reply_to: Option<Either3<String, Vec<Either<String, Address>>, Address>>,
    /// The Subject: one line of any Unicode text (RFC 2047 encoded when needed).
    pub subject: Option<String>,
    /// The text/plain body; line breaks become CRLF.
    pub text: Option<String>,
    /// The text/html body; with `text` too, both go in a multipart/alternative.
    pub html: Option<String>,
    /// Custom headers: `{ 'X-Campaign': 'spring' }` (an array value repeats the field) or
    /// `[{ key, value }]`. `Message-ID` and `Date` replace the generated ones; fields with their
    /// own option (From, To, Subject, ...) are refused.
    pub headers: Option<Either<Vec<Header>, IndexMap<String, Either<String, Vec<String>>>>>,
    /// `'highest' | 'high' | 'normal' | 'low' | 'lowest'` or the X-Priority number 1..5; written
    /// as X-Priority and Importance, and used by the dispatcher to order its queue.
    pub priority: Option<Either<String, f64>>,
    /// Attachments and inline parts, in order.
    pub attachments: Option<Vec<Attachment>>,
    /// The SMTP envelope, when it must differ from the headers.
    pub envelope: Option<Envelope>,
    /// Hold the message until this time, in Unix seconds (scheduled send).
    pub not_before: Option<f64>,
}

/// A message ready to spool: built by the core, or (when the caller set its own envelope
/// recipients) rendered and prepared as a raw message with that envelope.
pub(crate) enum Prepared {
    /// Spooled with `qmail_core::submit` (its own spool, else the default initiator).
    Built(Box<CoreMessage>),
    /// Spooled with `submit_raw` to `spool`, else the default initiator.
    Raw(RawMessage, Option<PathBuf>),
}

fn address(a: &Either<String, Address>) -> AddressInput {
    match a {
        Either::A(text) => AddressInput::Text(text.clone()),
        Either::B(Address { name, address }) => AddressInput::Parts(name.clone(), address.clone()),
    }
}

fn addresses(list: &Either3<String, Vec<Either<String, Address>>, Address>) -> Vec<AddressInput> {
    match list {
        Either3::A(text) => vec![AddressInput::Text(text.clone())],
        Either3::B(items) => items.iter().map(address).collect(),
        Either3::C(Address { name, address }) => {
            vec![AddressInput::Parts(name.clone(), address.clone())]
        }
    }
}

/// `to` of an envelope as a list.
pub(crate) fn recipient_list(to: &Either<String, Vec<String>>) -> Vec<String> {
    match to {
        Either::A(one) => vec![one.clone()],
        Either::B(list) => list.clone(),
    }
}

fn attach(b: &mut MessageBuilder, a: &Attachment) -> qmail_core::Result<()> {
    let content_type = a.content_type.as_deref();
    match (&a.path, &a.content, &a.cid) {
        (Some(path), None, None) => b
            .attach_path(path, a.filename.as_deref(), content_type)
            .map(drop),
        (Some(path), None, Some(cid)) => b.attach_inline_path(path, cid, content_type).map(drop),
        (None, Some(content), cid) => {
            let bytes: Arc<[u8]> = match content {
                Either::A(buf) => Arc::from(&buf[..]),
                Either::B(text) => Arc::from(text.as_bytes()),
            };
            match cid {
                None => b
                    .attach_bytes(bytes, a.filename.as_deref(), content_type)
                    .map(drop),
                Some(cid) => b.attach_inline_bytes(bytes, cid, content_type).map(drop),
            }
        }
        (Some(_), Some(_), _) => Err(Error::new(
            ErrorKind::InvalidArgument,
            "give either path or content, not both",
        )),
        (None, None, _) => Err(Error::new(
            ErrorKind::InvalidArgument,
            "give path or content",
        )),
    }
}

impl Message {
    /// Calls the core builder's setters in option order and builds. `spool` names the spool
    /// (`{ spool }` of the call).
    pub(crate) fn prepare(&self, spool: Option<&str>) -> qmail_core::Result<Prepared> {
        let mut b = CoreMessage::builder();
        if let Some(a) = &self.from {
            b.set_from(address(a))?;
        }
        if let Some(a) = &self.sender {
            b.set_sender(address(a))?;
        }
        for a in self.to.iter().flat_map(addresses) {
            b.add_to(a)?;
        }
        for a in self.cc.iter().flat_map(addresses) {
            b.add_cc(a)?;
        }
        for a in self.bcc.iter().flat_map(addresses) {
            b.add_bcc(a)?;
        }
        for a in self.reply_to.iter().flat_map(addresses) {
            b.add_reply_to(a)?;
        }
        if let Some(s) = &self.subject {
            b.set_subject(s)?;
        }
        if let Some(s) = &self.text {
            b.set_text(s)?;
        }
        if let Some(s) = &self.html {
            b.set_html(s)?;
        }
        match &self.headers {
            None => {}
            Some(Either::A(list)) => {
                for h in list {
                    b.add_header(&h.key, &h.value)?;
                }
            }
            Some(Either::B(map)) => {
                for (name, value) in map {
                    match value {
                        Either::A(v) => b.add_header(name, v).map(drop)?,
                        Either::B(vs) => {
                            for v in vs {
                                b.add_header(name, v)?;
                            }
                        }
                    }
                }
            }
        }
        match &self.priority {
            None => {}
            Some(Either::A(name)) => b.set_priority(Priority::parse(name)?).map(drop)?,
            Some(Either::B(n)) => b
                .set_priority(Priority::from_number(whole(*n, "priority")?)?)
                .map(drop)?,
        }
        for (i, a) in self.attachments.iter().flatten().enumerate() {
            // the JS index, whether the part ends up an attachment or inline
            attach(&mut b, a).map_err(|e| e.with_field(format!("attachments[{i}]")))?;
        }
        if let Some(t) = self.not_before {
            b.set_not_before(whole(t, "notBefore")?)?;
        }
        let envelope_from = self.envelope.as_ref().and_then(|e| e.from.as_deref());
        if let Some(from) = envelope_from {
            b.set_envelope_from(from)?;
        }
        if let Some(p) = spool {
            b.set_spool(p)?;
        }
        let message = b.build()?;
        let Some(to) = self.envelope.as_ref().and_then(|e| e.to.as_ref()) else {
            return Ok(Prepared::Built(Box::new(message)));
        };
        // The builder derives RCPT TO from to/cc/bcc and has no override; a caller-given list
        // goes through the raw path, which takes recipients (the bytes are the core's own
        // rendering, so no rule of the raw parser can refuse them).
        let mut bytes = Vec::with_capacity(4096);
        message.render(&mut bytes)?;
        let mut raw = RawMessage::parse(&bytes, envelope_from, Some(&recipient_list(to)))?;
        raw.set_not_before(message.not_before());
        Ok(Prepared::Raw(raw, message.spool().map(Into::into)))
    }
}

/// A JS number that must be a whole number (NaN, Infinity, 1.5 and values outside ±2^53 are
/// refused instead of being truncated by the conversion to i64).
pub(crate) fn whole(n: f64, field: &'static str) -> qmail_core::Result<i64> {
    const MAX_SAFE: f64 = 9_007_199_254_740_991.0;
    if n.is_finite() && n.fract() == 0.0 && n.abs() <= MAX_SAFE {
        Ok(n as i64)
    } else {
        Err(qmail_core::Error::new(
            qmail_core::ErrorKind::InvalidArgument,
            format!("{n} is not a whole number"),
        )
        .with_field(field))
    }
}
