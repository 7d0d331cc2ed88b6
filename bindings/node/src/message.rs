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
    SpoolOptions,
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
    /// How a string `content` is encoded: `'base64'`, `'hex'`, `'utf8'` / `'utf-8'` (the
    /// default) or `'latin1'` / `'binary'`; the decoded bytes are attached (as nodemailer
    /// does). Anything else is refused (`attachments[N].encoding`).
    pub encoding: Option<String>,
    /// `'attachment'` (the default) or `'inline'`; `'inline'` needs `cid` (an inline part is
    /// referenced from the HTML, RFC 2392); anything else is refused.
    pub content_disposition: Option<String>,
    /// Headers of the part: not supported (the part's fields are the core's); a non-empty
    /// value is refused with `QMAIL_INVALID_ARGUMENT` (`attachments[N].headers`).
    pub headers: Option<IndexMap<String, Either<String, Vec<String>>>>,
}

/// The SMTP envelope, when it must differ from the headers (RFC 5321 §2.3.1).
#[napi(object)]
pub struct Envelope {
    /// MAIL FROM: an address, or `'<>'` for the null reverse-path (no bounces). Default: the
    /// Sender address, else From.
    pub from: Option<String>,
    /// RCPT TO: one address or a list, replacing the recipients taken from to, cc and bcc.
    /// Bare addresses (`a@example.org`, angle brackets allowed), no display names.
    pub to: Option<Either<String, Vec<String>>>,
    /// More RCPT TO addresses (nodemailer's envelope form); merged after `to`.
    pub cc: Option<Either<String, Vec<String>>>,
    /// More RCPT TO addresses (nodemailer's envelope form); merged after `cc`.
    pub bcc: Option<Either<String, Vec<String>>>,
}

/// One URL of nodemailer's `list` option: a string, or `{ url, comment }`.
#[napi(object)]
pub struct ListUrl {
    /// The URL (`https://...`, `mailto:...`, or a bare address for mailto).
    pub url: String,
    /// A comment written after it (RFC 2369 allows comments).
    pub comment: Option<String>,
}

/// nodemailer's `list` option (RFC 2369 / RFC 2919 List-* fields). `unsubscribe` goes to the
/// core's one-click rule (see {@link ListUnsubscribe}): one web URL (https for one-click) and
/// at most one mailto.
#[napi(object)]
pub struct ListOptions {
    /// List-Unsubscribe URLs: one web URL and optionally one mailto.
    pub unsubscribe: Option<Either3<String, ListUrl, Vec<Either<String, ListUrl>>>>,
    /// List-Help.
    pub help: Option<Either3<String, ListUrl, Vec<Either<String, ListUrl>>>>,
    /// List-Subscribe.
    pub subscribe: Option<Either3<String, ListUrl, Vec<Either<String, ListUrl>>>>,
    /// List-Post.
    pub post: Option<Either3<String, ListUrl, Vec<Either<String, ListUrl>>>>,
    /// List-Owner.
    pub owner: Option<Either3<String, ListUrl, Vec<Either<String, ListUrl>>>>,
    /// List-Archive.
    pub archive: Option<Either3<String, ListUrl, Vec<Either<String, ListUrl>>>>,
    /// List-Id (RFC 2919): `'list.example.com'` or `{ url: 'list.example.com', comment: 'Name' }`.
    pub id: Option<Either<String, ListUrl>>,
}

/// One-click unsubscribe, qmail's form (the core's `list_unsubscribe`): `List-Unsubscribe:
/// <url>[, <mailto>]` (RFC 2369) and, with `oneClick` (default true), `List-Unsubscribe-Post:
/// List-Unsubscribe=One-Click` (RFC 8058, needs an https url).
#[napi(object)]
pub struct ListUnsubscribe {
    /// The unsubscribe URL: https (http only with `oneClick: false`).
    pub url: String,
    /// A mailto: URI or a bare address, written after `url`.
    pub mailto: Option<String>,
    /// Write List-Unsubscribe-Post (RFC 8058). Default true.
    pub one_click: Option<bool>,
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
    /// Hold the message until this time, in Unix seconds (scheduled send); qmail.js also takes
    /// a `Date`.
    #[napi(ts_type = "number | Date")]
    pub not_before: Option<f64>,
    /// The Date header: a `Date` or Unix seconds (written in UTC), or an RFC 5322 date-time
    /// string. Default: the time of the submit.
    #[napi(ts_type = "Date | number | string")]
    pub date: Option<Either<f64, String>>,
    /// The Message-ID, `<left@right>` (the brackets are added when missing, as nodemailer
    /// does). Default: generated.
    pub message_id: Option<String>,
    /// In-Reply-To: the Message-ID replied to.
    pub in_reply_to: Option<String>,
    /// References: Message-IDs, as an array or a space-separated string.
    pub references: Option<Either<String, Vec<String>>>,
    /// nodemailer's List-* fields.
    pub list: Option<ListOptions>,
    /// One-click unsubscribe (qmail's form of `list.unsubscribe`).
    pub list_unsubscribe: Option<ListUnsubscribe>,
}

/// A message ready to spool, and where it goes (the core's [`qmail_core::route`]: the call's
/// spool, else the default spool(s), else `QMAIL_SPOOL`).
pub(crate) enum Prepared {
    /// Built by the core (with its envelope override when `envelope` was given: attachments
    /// stay streamed from disk, the priority stays).
    Built(Box<CoreMessage>, Option<PathBuf>, Option<SpoolOptions>),
    /// Composed elsewhere.
    Raw(RawMessage, Option<PathBuf>, Option<SpoolOptions>),
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

/// The envelope recipients (`to`, then `cc`, then `bcc`), when any of them is given.
pub(crate) fn envelope_recipients(e: &Envelope) -> Option<Vec<String>> {
    if e.to.is_none() && e.cc.is_none() && e.bcc.is_none() {
        return None;
    }
    Some(
        [&e.to, &e.cc, &e.bcc]
            .into_iter()
            .flatten()
            .flat_map(recipient_list)
            .collect(),
    )
}

fn invalid(field: impl Into<String>, msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, msg).with_field(field.into())
}

/// A Message-ID as nodemailer writes it: `<...>` added when missing.
fn msg_id(id: &str) -> String {
    let t = id.trim();
    if t.starts_with('<') {
        t.to_owned()
    } else {
        format!("<{t}>")
    }
}

/// The bytes of a string `content` in `encoding` (nodemailer's attachment `encoding`).
fn decode(text: &str, encoding: Option<&str>) -> Result<Vec<u8>, String> {
    use base64::Engine;
    match encoding.map(str::to_ascii_lowercase).as_deref() {
        None | Some("utf8" | "utf-8") => Ok(text.as_bytes().to_vec()),
        Some("base64") => {
            // as Node's Buffer.from(text, 'base64'): whitespace, missing padding and the URL-safe
            // alphabet are accepted
            let compact: String = text
                .chars()
                .filter(|c| !c.is_whitespace())
                .map(|c| match c {
                    '-' => '+',
                    '_' => '/',
                    c => c,
                })
                .collect();
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(compact.trim_end_matches('='))
                .map_err(|e| format!("content is not base64: {e}"))
        }
        Some("hex") => {
            let t = text.trim();
            if !t.len().is_multiple_of(2) || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("content is not hex".into());
            }
            Ok((0..t.len())
                .step_by(2)
                .filter_map(|i| u8::from_str_radix(&t[i..i + 2], 16).ok())
                .collect())
        }
        Some("latin1" | "binary") => text
            .chars()
            .map(|c| u8::try_from(u32::from(c)).map_err(|_| format!("{c:?} is not latin1")))
            .collect(),
        Some(other) => Err(format!(
            "encoding {other:?} is not base64, hex, utf8 or latin1"
        )),
    }
}

fn list_urls(
    v: &Either3<String, ListUrl, Vec<Either<String, ListUrl>>>,
) -> Vec<(String, Option<String>)> {
    let one = |e: &Either<String, ListUrl>| match e {
        Either::A(u) => (u.clone(), None),
        Either::B(ListUrl { url, comment }) => (url.clone(), comment.clone()),
    };
    match v {
        Either3::A(u) => vec![(u.clone(), None)],
        Either3::B(ListUrl { url, comment }) => vec![(url.clone(), comment.clone())],
        Either3::C(list) => list.iter().map(one).collect(),
    }
}

/// `<url> (comment), ...` of a List-* field (RFC 2369 §2); a bare address becomes mailto:.
fn list_value(urls: &[(String, Option<String>)]) -> String {
    urls.iter()
        .map(|(u, c)| {
            let u = u.trim().trim_start_matches('<').trim_end_matches('>');
            let u = if !u.contains(':') && u.contains('@') {
                format!("mailto:{u}")
            } else {
                u.to_owned()
            };
            match c {
                Some(c) => format!("<{u}> ({c})"),
                None => format!("<{u}>"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn set_list(b: &mut MessageBuilder, l: &ListOptions) -> qmail_core::Result<()> {
    if let Some(u) = &l.unsubscribe {
        let urls = list_urls(u);
        let (mail, web): (Vec<_>, Vec<_>) = urls.iter().partition(|(u, _)| {
            let u = u.trim().trim_start_matches('<').to_ascii_lowercase();
            u.starts_with("mailto:") || (!u.contains(':') && u.contains('@'))
        });
        if web.len() != 1 || mail.len() > 1 {
            return Err(invalid(
                "list.unsubscribe",
                "give exactly one http(s) URL and at most one mailto (RFC 8058 §3.1)",
            ));
        }
        let url = web[0]
            .0
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>');
        let mailto = mail
            .first()
            .map(|(m, _)| m.trim().trim_start_matches('<').trim_end_matches('>'));
        // one-click whenever the URL allows it (RFC 8058 needs https)
        let one_click = url.to_ascii_lowercase().starts_with("https://");
        b.set_list_unsubscribe(url, mailto, one_click)
            .map_err(|e| relabel(e, "list.unsubscribe"))?;
    }
    for (name, v) in [
        ("List-Help", &l.help),
        ("List-Subscribe", &l.subscribe),
        ("List-Post", &l.post),
        ("List-Owner", &l.owner),
        ("List-Archive", &l.archive),
    ] {
        if let Some(v) = v {
            b.add_header(name, &list_value(&list_urls(v)))?;
        }
    }
    if let Some(id) = &l.id {
        let value = match id {
            Either::A(i) => format!(
                "<{}>",
                i.trim().trim_start_matches('<').trim_end_matches('>')
            ),
            Either::B(ListUrl { url, comment }) => {
                let i = url.trim().trim_start_matches('<').trim_end_matches('>');
                match comment {
                    Some(c) => format!("\"{}\" <{i}>", c.replace(['"', '\\'], "")),
                    None => format!("<{i}>"),
                }
            }
        };
        b.add_header("List-Id", &value)?;
    }
    Ok(())
}

/// A core error about `list_unsubscribe.*` named by the JS option given.
fn relabel(e: Error, field: &str) -> Error {
    match e.field() {
        Some(f) if f.starts_with("list_unsubscribe") => {
            Error::new(e.kind(), e.message().to_owned()).with_field(field.to_owned())
        }
        _ => e,
    }
}

fn attach(b: &mut MessageBuilder, a: &Attachment, i: usize) -> qmail_core::Result<()> {
    let content_type = a.content_type.as_deref();
    let field = |f: &str| format!("attachments[{i}].{f}");
    if a.headers.as_ref().is_some_and(|h| !h.is_empty()) {
        return Err(invalid(
            field("headers"),
            "headers of an attachment are not supported: its fields are written by qmail",
        ));
    }
    match a
        .content_disposition
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("attachment") => {}
        Some("inline") if a.cid.is_some() => {}
        Some("inline") => {
            return Err(invalid(
                field("contentDisposition"),
                "an inline part needs a cid (it is shown by the HTML through cid:, RFC 2392)",
            ));
        }
        Some(other) => {
            return Err(invalid(
                field("contentDisposition"),
                format!("{other:?} is not 'attachment' or 'inline'"),
            ));
        }
    }
    if a.encoding.is_some() && !matches!(a.content, Some(Either::B(_))) {
        return Err(invalid(
            field("encoding"),
            "encoding applies to a string content only",
        ));
    }
    let filename = a.filename.as_deref();
    match (&a.path, &a.content, &a.cid) {
        (Some(path), None, None) => b.attach_path(path, filename, content_type).map(drop),
        (Some(path), None, Some(cid)) => b
            .attach_inline_path_named(path, cid, filename, content_type)
            .map(drop),
        (None, Some(content), cid) => {
            let bytes: Arc<[u8]> = match content {
                Either::A(buf) => Arc::from(&buf[..]),
                Either::B(text) => Arc::from(
                    decode(text, a.encoding.as_deref())
                        .map_err(|m| invalid(field("encoding"), m))?,
                ),
            };
            match cid {
                None => b.attach_bytes(bytes, filename, content_type).map(drop),
                Some(cid) => b
                    .attach_inline_bytes_named(bytes, cid, filename, content_type)
                    .map(drop),
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
    /// Calls the core builder's setters in option order and builds. `spool` / `options` say
    /// where it goes (`{ spool, fileMode }` of the call).
    pub(crate) fn prepare(
        &self,
        spool: Option<&str>,
        options: Option<SpoolOptions>,
    ) -> qmail_core::Result<Prepared> {
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
        match &self.date {
            None => {}
            Some(Either::A(secs)) => b.set_date_unix(whole(*secs, "date")?).map(drop)?,
            Some(Either::B(text)) => b
                .add_header("Date", text)
                .map(drop)
                .map_err(|e| Error::new(e.kind(), e.message().to_owned()).with_field("date"))?,
        }
        if let Some(id) = &self.message_id {
            b.add_header("Message-ID", &msg_id(id)).map_err(|e| {
                Error::new(e.kind(), e.message().to_owned()).with_field("messageId")
            })?;
        }
        if let Some(id) = &self.in_reply_to {
            b.add_header("In-Reply-To", &msg_id(id)).map_err(|e| {
                Error::new(e.kind(), e.message().to_owned()).with_field("inReplyTo")
            })?;
        }
        if let Some(r) = &self.references {
            let ids: Vec<String> = match r {
                Either::A(s) => s.split_whitespace().map(msg_id).collect(),
                Either::B(list) => list.iter().map(|s| msg_id(s)).collect(),
            };
            b.add_header("References", &ids.join(" ")).map_err(|e| {
                Error::new(e.kind(), e.message().to_owned()).with_field("references")
            })?;
        }
        if let Some(l) = &self.list {
            set_list(&mut b, l)?;
        }
        if let Some(l) = &self.list_unsubscribe {
            b.set_list_unsubscribe(&l.url, l.mailto.as_deref(), l.one_click.unwrap_or(true))
                .map_err(|e| {
                    let f = match e.field() {
                        Some("list_unsubscribe.mailto") => "listUnsubscribe.mailto",
                        _ => "listUnsubscribe.url",
                    };
                    relabel(e, f)
                })?;
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
            attach(&mut b, a, i).map_err(|e| match e.field() {
                Some(f) if f.starts_with("attachments[") => e,
                _ => e.with_field(format!("attachments[{i}]")),
            })?;
        }
        if let Some(t) = self.not_before {
            b.set_not_before(whole(t, "notBefore")?)?;
        }
        if let Some(e) = &self.envelope {
            if let Some(from) = e.from.as_deref() {
                b.set_envelope_from(from)?;
            }
            if let Some(rcpt) = envelope_recipients(e) {
                b.set_envelope_to(&rcpt)?;
            }
        }
        if let Some(p) = spool {
            b.set_spool(p)?;
        }
        let message = b.build()?;
        let spool = message.spool().map(PathBuf::from);
        Ok(Prepared::Built(Box::new(message), spool, options))
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
