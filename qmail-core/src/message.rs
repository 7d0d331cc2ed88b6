//! The message model: what an initiator builds and submits.
//!
//! A [`Message`] is built with [`Message::builder`] and is valid once built: every address is
//! parsed, every header checked, Date and Message-ID fixed (so every delivery attempt sends the
//! same bytes), and the envelope derived. Rendering it ([`Message::render`]) and spooling it
//! ([`crate::Spool::submit`]) cannot fail on its content, only on I/O.
//!
//! # Example
//! ```
//! use qmail_core::Message;
//! let msg = Message::builder()
//!     .from("Shop <noreply@example.com>")
//!     .to(("Customer", "customer@example.org"))
//!     .subject("Your order")
//!     .text("Thanks!")
//!     .build()?;
//! assert_eq!(msg.envelope().rcpt_to, ["customer@example.org"]);
//! # Ok::<(), qmail_core::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::address::{EmailAddress, Mailbox, ReversePath};
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::mime::header;
use crate::unsubscribe::{ListUnsubscribe, ONE_CLICK};

/// Message priority, written as `X-Priority` (1..5) and `Importance` (RFC 2156 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Priority {
    /// X-Priority 1, Importance high.
    Highest = 1,
    /// X-Priority 2, Importance high.
    High = 2,
    /// X-Priority 3, Importance normal. When no priority is set at all, neither header is
    /// written; setting Normal explicitly writes both.
    Normal = 3,
    /// X-Priority 4, Importance low.
    Low = 4,
    /// X-Priority 5, Importance low.
    Lowest = 5,
}

impl Priority {
    /// From the X-Priority number 1 (highest) ..= 5 (lowest).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] outside 1..=5.
    pub fn from_number(n: i64) -> Result<Self> {
        Ok(match n {
            1 => Priority::Highest,
            2 => Priority::High,
            3 => Priority::Normal,
            4 => Priority::Low,
            5 => Priority::Lowest,
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("priority {n} is outside 1 (highest) ..= 5 (lowest)"),
                )
                .with_field("priority"));
            }
        })
    }

    /// Parses `"highest" | "high" | "normal" | "low" | "lowest"` or `"1"`..`"5"`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`].
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "highest" => Ok(Priority::Highest),
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            "lowest" => Ok(Priority::Lowest),
            other => match other.parse::<i64>() {
                Ok(n) => Priority::from_number(n),
                Err(_) => Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("priority {s:?} is not highest, high, normal, low, lowest or 1..5"),
                )
                .with_field("priority")),
            },
        }
    }

    /// The X-Priority number, 1..=5.
    pub fn number(self) -> u8 {
        self as u8
    }
}

/// Where an attachment's bytes come from.
#[derive(Debug, Clone)]
pub enum AttachmentSource {
    /// A file, streamed at submit time in bounded chunks.
    Path(PathBuf),
    /// Bytes held in memory.
    Bytes(Arc<[u8]>),
}

/// An attachment or an inline part.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub(crate) source: AttachmentSource,
    pub(crate) filename: Option<String>,
    pub(crate) content_type: String,
    pub(crate) content_id: Option<String>,
}

impl Attachment {
    /// The source of the bytes.
    pub fn source(&self) -> &AttachmentSource {
        &self.source
    }
    /// The file name written in Content-Disposition, if any.
    pub fn filename(&self) -> Option<&str> {
        self.filename.as_deref()
    }
    /// The MIME type, e.g. `application/pdf`.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }
    /// The Content-ID (without angle brackets) of an inline part.
    pub fn content_id(&self) -> Option<&str> {
        self.content_id.as_deref()
    }
}

/// Anything that names a mailbox: `"Name <a@example.com>"`, `"a@example.com"`,
/// `(name, address)`, or a parsed [`Mailbox`].
#[derive(Debug, Clone)]
pub enum AddressInput {
    /// A string to parse with [`Mailbox::parse`].
    Text(String),
    /// A display name (optional) and an addr-spec.
    Parts(Option<String>, String),
    /// Already parsed.
    Mailbox(Mailbox),
}

impl AddressInput {
    /// The mailboxes: a text is an address list (RFC 5322 §3.4) split at its top-level commas,
    /// every member strict ([`Mailbox::parse_list`]); parts and mailboxes are one each.
    fn into_mailboxes(self) -> Result<Vec<Mailbox>> {
        match self {
            AddressInput::Text(s) => Mailbox::parse_list(&s),
            AddressInput::Parts(n, a) => Ok(vec![Mailbox::new(n.as_deref(), &a)?]),
            AddressInput::Mailbox(m) => Ok(vec![m]),
        }
    }
}

impl From<&str> for AddressInput {
    fn from(s: &str) -> Self {
        AddressInput::Text(s.to_owned())
    }
}
impl From<String> for AddressInput {
    fn from(s: String) -> Self {
        AddressInput::Text(s)
    }
}
impl From<&String> for AddressInput {
    fn from(s: &String) -> Self {
        AddressInput::Text(s.clone())
    }
}
impl From<(&str, &str)> for AddressInput {
    fn from((n, a): (&str, &str)) -> Self {
        AddressInput::Parts(Some(n.to_owned()), a.to_owned())
    }
}
impl From<Mailbox> for AddressInput {
    fn from(m: Mailbox) -> Self {
        AddressInput::Mailbox(m)
    }
}

/// Header names set through dedicated builder methods (or generated); refused in
/// [`MessageBuilder::header`] so that no field is written twice.
const RESERVED: &[(&str, &str)] = &[
    ("from", "from"),
    ("sender", "sender"),
    ("reply-to", "reply_to"),
    ("to", "to"),
    ("cc", "cc"),
    ("bcc", "bcc (envelope only; never written)"),
    ("subject", "subject"),
    ("mime-version", "nothing: it is generated"),
    ("content-type", "text/html/attachments"),
    (
        "content-transfer-encoding",
        "nothing: it is chosen per part",
    ),
    ("content-disposition", "attachments"),
    ("x-priority", "priority"),
    ("importance", "priority"),
    ("disposition-notification-to", "read_receipt_to"),
    (
        "return-path",
        "envelope_from (Return-Path is added at final delivery)",
    ),
];

/// Builds a [`Message`]. Setters taking `&mut self` return the error at once (for bindings that
/// report per call); the chaining setters keep the first error and return it from
/// [`MessageBuilder::build`].
#[derive(Debug, Default)]
pub struct MessageBuilder {
    error: Option<Error>,
    from: Option<Mailbox>,
    sender: Option<Mailbox>,
    reply_to: Vec<Mailbox>,
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    bcc: Vec<Mailbox>,
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    attachments: Vec<Attachment>,
    inline: Vec<Attachment>,
    headers: Vec<(String, String)>,
    message_id: Option<String>,
    date: Option<String>,
    priority: Option<Priority>,
    read_receipt_to: Option<Mailbox>,
    envelope_from: Option<ReversePath>,
    envelope_to: Option<Vec<EmailAddress>>,
    list_unsubscribe: Option<ListUnsubscribe>,
    /// `List-Unsubscribe` / `List-Unsubscribe-Post` given as custom headers (checked in build).
    list_unsubscribe_header: Option<String>,
    one_click_header: bool,
    not_before: Option<i64>,
    spool: Option<PathBuf>,
}

macro_rules! chain {
    ($(#[$doc:meta])* $name:ident => $set:ident($($arg:ident : $ty:ty),*)) => {
        $(#[$doc])*
        ///
        /// Chaining form: an error is kept and returned by [`MessageBuilder::build`].
        pub fn $name(mut self, $($arg: $ty),*) -> Self {
            if self.error.is_none() {
                if let Err(e) = self.$set($($arg),*) {
                    self.error = Some(e);
                }
            }
            self
        }
    };
}

/// Exactly one mailbox (From, Sender, Disposition-Notification-To).
fn addr(field: &'static str, a: impl Into<AddressInput>) -> Result<Mailbox> {
    match a.into() {
        AddressInput::Text(s) => Mailbox::parse_one(&s),
        AddressInput::Parts(n, a) => Mailbox::new(n.as_deref(), &a),
        AddressInput::Mailbox(m) => Ok(m),
    }
    .map_err(|e| e.with_field(field))
}

/// One mailbox or an address list given as one string.
fn addrs(field: &'static str, a: impl Into<AddressInput>) -> Result<Vec<Mailbox>> {
    a.into().into_mailboxes().map_err(|e| e.with_field(field))
}

fn text_value(field: &'static str, v: &str) -> Result<String> {
    header::check_value(v).map_err(|e| e.with_field(field))?;
    Ok(v.to_owned())
}

impl MessageBuilder {
    /// Sets From (RFC 5322 §3.6.2). Required.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidAddress`] / [`ErrorKind::InvalidHeader`] naming `from`.
    pub fn set_from(&mut self, a: impl Into<AddressInput>) -> Result<&mut Self> {
        self.from = Some(addr("from", a)?);
        Ok(self)
    }
    /// Sets Sender (RFC 5322 §3.6.2): the agent that sent on behalf of From.
    ///
    /// # Errors
    /// As [`MessageBuilder::set_from`], naming `sender`.
    pub fn set_sender(&mut self, a: impl Into<AddressInput>) -> Result<&mut Self> {
        self.sender = Some(addr("sender", a)?);
        Ok(self)
    }
    /// Adds Reply-To addresses: one mailbox, or an address list given as one string
    /// (`"a@example.com, B <b@example.org>"`, split by the RFC 5322 §3.4 list parser, every
    /// member strict). The same holds for [`MessageBuilder::add_to`], `add_cc` and `add_bcc`.
    ///
    /// # Errors
    /// As [`MessageBuilder::set_from`], naming `reply_to`.
    pub fn add_reply_to(&mut self, a: impl Into<AddressInput>) -> Result<&mut Self> {
        self.reply_to.extend(addrs("reply_to", a)?);
        Ok(self)
    }
    /// Adds a To recipient.
    ///
    /// # Errors
    /// As [`MessageBuilder::set_from`], naming `to`.
    pub fn add_to(&mut self, a: impl Into<AddressInput>) -> Result<&mut Self> {
        self.to.extend(addrs("to", a)?);
        Ok(self)
    }
    /// Adds a Cc recipient.
    ///
    /// # Errors
    /// As [`MessageBuilder::set_from`], naming `cc`.
    pub fn add_cc(&mut self, a: impl Into<AddressInput>) -> Result<&mut Self> {
        self.cc.extend(addrs("cc", a)?);
        Ok(self)
    }
    /// Adds a Bcc recipient: envelope only, never written into the headers.
    ///
    /// # Errors
    /// As [`MessageBuilder::set_from`], naming `bcc`.
    pub fn add_bcc(&mut self, a: impl Into<AddressInput>) -> Result<&mut Self> {
        self.bcc.extend(addrs("bcc", a)?);
        Ok(self)
    }
    /// Sets the Subject: any Unicode text on one line (RFC 2047 encoded when needed).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidHeader`] naming `subject` for CR, LF, NUL or other controls.
    pub fn set_subject(&mut self, s: &str) -> Result<&mut Self> {
        self.subject = Some(text_value("subject", s)?);
        Ok(self)
    }
    /// Sets the text/plain body. Line breaks (LF, CRLF or lone CR) become CRLF.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidMessage`] naming `text` for a NUL byte.
    pub fn set_text(&mut self, s: &str) -> Result<&mut Self> {
        self.text = Some(body_value("text", s)?);
        Ok(self)
    }
    /// Sets the text/html body. With a text body too, both go in a multipart/alternative.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidMessage`] naming `html` for a NUL byte.
    pub fn set_html(&mut self, s: &str) -> Result<&mut Self> {
        self.html = Some(body_value("html", s)?);
        Ok(self)
    }
    /// Adds a custom header. `Message-ID` and `Date` replace the generated ones (and are
    /// checked: `<left@right>` without whitespace; RFC 5322 §3.3 date-time).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidHeader`] naming `headers.NAME`: a bad name (RFC 5322 §2.2), CR, LF,
    /// NUL in the value, or a field that has its own setter (From, To, Bcc, Subject, ...).
    pub fn add_header(&mut self, name: &str, value: &str) -> Result<&mut Self> {
        let field = || format!("headers.{}", name.escape_debug());
        header::check_name(name).map_err(|e| e.with_field(field()))?;
        header::check_value(value).map_err(|e| e.with_field(field()))?;
        let lower = name.to_ascii_lowercase();
        if let Some((_, use_)) = RESERVED.iter().find(|(n, _)| *n == lower) {
            return Err(Error::new(
                ErrorKind::InvalidHeader,
                format!("{name} cannot be set as a custom header; use {use_}"),
            )
            .with_field(field()));
        }
        match lower.as_str() {
            "message-id" => {
                let v = value.trim();
                check_message_id(v).map_err(|e| e.with_field(field()))?;
                self.message_id = Some(v.to_owned());
            }
            "date" => {
                let v = value.trim();
                if v.len() > 100 {
                    return Err(Error::new(
                        ErrorKind::InvalidHeader,
                        "a Date is at most 100 characters",
                    )
                    .with_field(field()));
                }
                chrono::DateTime::parse_from_rfc2822(v).map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidHeader,
                        format!("{v:?} is not an RFC 5322 §3.3 date-time: {e}"),
                    )
                    .with_field(field())
                })?;
                self.date = Some(v.to_owned());
            }
            "in-reply-to" | "references" => {
                check_msg_id_list(value).map_err(|e| e.with_field(field()))?;
                self.headers
                    .push((name.to_owned(), value.trim().to_owned()));
            }
            "list-unsubscribe" => {
                if self.list_unsubscribe_header.is_some() {
                    return Err(Error::new(
                        ErrorKind::InvalidHeader,
                        "List-Unsubscribe is given twice (RFC 2369 §3: at most once)",
                    )
                    .with_field(field()));
                }
                // checked at once (one_click decided in build)
                ListUnsubscribe::parse_value(value, false, "headers.List-Unsubscribe")?;
                self.list_unsubscribe_header = Some(value.to_owned());
            }
            "list-unsubscribe-post" => {
                if value.trim() != ONE_CLICK {
                    return Err(Error::new(
                        ErrorKind::InvalidHeader,
                        format!("the only value is {ONE_CLICK:?} (RFC 8058 §3.1)"),
                    )
                    .with_field(field()));
                }
                self.one_click_header = true;
            }
            _ => self.headers.push((name.to_owned(), value.to_owned())),
        }
        Ok(self)
    }
    /// Sets the Date from a Unix time in seconds (written in UTC, RFC 5322 §3.3), instead of
    /// the time of [`MessageBuilder::build`].
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming `date` outside years 1970..=9999.
    pub fn set_date_unix(&mut self, unix_secs: i64) -> Result<&mut Self> {
        if !(0..=253_402_300_799).contains(&unix_secs) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{unix_secs} is not a Unix time in years 1970..=9999"),
            )
            .with_field("date"));
        }
        self.date = Some(format_date(unix_secs));
        Ok(self)
    }
    /// Sets the envelope recipients (RCPT TO), apart from the headers (RFC 5321 §2.3.1):
    /// replaces the recipients derived from To, Cc and Bcc. Each is a bare addr-spec (angle
    /// brackets allowed), strict; duplicates are dropped.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidAddress`] naming `envelope_to` for a bad address;
    /// [`ErrorKind::InvalidMessage`] naming `envelope_to` for an empty list.
    pub fn set_envelope_to<S: AsRef<str>>(&mut self, list: &[S]) -> Result<&mut Self> {
        if list.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                "the envelope needs at least one recipient",
            )
            .with_field("envelope_to"));
        }
        let mut out = Vec::with_capacity(list.len());
        for a in list {
            out.push(envelope_rcpt(a.as_ref())?);
        }
        self.envelope_to = Some(out);
        Ok(self)
    }
    /// Adds one envelope recipient (RCPT TO) apart from the headers (RFC 5321 §2.3.1): the
    /// first call replaces the recipients derived from To, Cc and Bcc, later calls add to the
    /// list (as [`MessageBuilder::set_envelope_to`], one address at a time: the shape C
    /// callers need). A bare addr-spec, angle brackets allowed, strict; duplicates are dropped.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidAddress`] naming `envelope_to` for a bad address (the list is
    /// left as it was).
    pub fn add_envelope_to(&mut self, address: &str) -> Result<&mut Self> {
        let a = envelope_rcpt(address)?;
        self.envelope_to.get_or_insert_with(Vec::new).push(a);
        Ok(self)
    }
    /// Offers unsubscribing: writes `List-Unsubscribe: <url>[, <mailto>]` (RFC 2369 §3.2) and,
    /// with `one_click`, `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058), for
    /// which `url` must be `https://`. `mailto` is a `mailto:` URI or a bare address.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming `list_unsubscribe.url` or
    /// `list_unsubscribe.mailto` (see [`ListUnsubscribe::new`]).
    pub fn set_list_unsubscribe(
        &mut self,
        url: &str,
        mailto: Option<&str>,
        one_click: bool,
    ) -> Result<&mut Self> {
        self.list_unsubscribe = Some(ListUnsubscribe::new(url, mailto, one_click)?);
        Ok(self)
    }
    /// Sets the priority (X-Priority and Importance).
    pub fn set_priority(&mut self, p: Priority) -> Result<&mut Self> {
        self.priority = Some(p);
        Ok(self)
    }
    /// Asks for a read receipt: Disposition-Notification-To (RFC 8098) with this address.
    ///
    /// # Errors
    /// As [`MessageBuilder::set_from`], naming `read_receipt_to`.
    pub fn set_read_receipt_to(&mut self, a: impl Into<AddressInput>) -> Result<&mut Self> {
        self.read_receipt_to = Some(addr("read_receipt_to", a)?);
        Ok(self)
    }
    /// Sets the envelope sender (MAIL FROM, the return path): an address, or `<>` for none.
    /// Default: Sender if set, else From.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidAddress`] naming `envelope_from`.
    pub fn set_envelope_from(&mut self, s: &str) -> Result<&mut Self> {
        self.envelope_from =
            Some(ReversePath::parse(s).map_err(|e| e.with_field("envelope_from"))?);
        Ok(self)
    }
    /// Holds the message until this time, in Unix seconds (scheduled send).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming `not_before` for a negative time.
    pub fn set_not_before(&mut self, unix_secs: i64) -> Result<&mut Self> {
        if unix_secs < 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "must be a Unix time in seconds, ≥ 0",
            )
            .with_field("not_before"));
        }
        self.not_before = Some(unix_secs);
        Ok(self)
    }
    /// Names the spool directory this message goes to (instead of the initiator's default).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming `spool` for an empty, relative or space-padded
    /// path.
    pub fn set_spool(&mut self, path: impl AsRef<Path>) -> Result<&mut Self> {
        let p = path.as_ref();
        if p.as_os_str().is_empty() {
            return Err(
                Error::new(ErrorKind::InvalidArgument, "spool path is empty").with_field("spool"),
            );
        }
        crate::initiator::check_spool_path(p)?;
        self.spool = Some(p.to_owned());
        Ok(self)
    }
    /// Attaches a file, streamed from disk at submit time. `filename` defaults to the path's
    /// file name; `content_type` is guessed from the file name's extension when `None`.
    ///
    /// # Errors
    /// [`ErrorKind::Attachment`] naming `attachments[N]` when the file is not a readable regular
    /// file; [`ErrorKind::InvalidArgument`] for a bad content type or file name.
    pub fn attach_path(
        &mut self,
        path: impl AsRef<Path>,
        filename: Option<&str>,
        content_type: Option<&str>,
    ) -> Result<&mut Self> {
        let field = format!("attachments[{}]", self.attachments.len());
        let att = file_attachment(path.as_ref(), filename, content_type, None)
            .map_err(|e| e.with_field(field))?;
        self.attachments.push(att);
        Ok(self)
    }
    /// Attaches bytes held in memory. `content_type` defaults to a guess from `filename`, else
    /// `application/octet-stream`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming `attachments[N]` for a bad content type or name.
    pub fn attach_bytes(
        &mut self,
        data: impl Into<Arc<[u8]>>,
        filename: Option<&str>,
        content_type: Option<&str>,
    ) -> Result<&mut Self> {
        let field = format!("attachments[{}]", self.attachments.len());
        let att = bytes_attachment(data.into(), filename, content_type, None)
            .map_err(|e| e.with_field(field))?;
        self.attachments.push(att);
        Ok(self)
    }
    /// Adds an inline part from a file, referenced from the HTML as `cid:CONTENT_ID`
    /// (RFC 2392). `content_id` is given without angle brackets.
    ///
    /// # Errors
    /// As [`MessageBuilder::attach_path`], naming `inline[N]`; a bad Content-ID is
    /// [`ErrorKind::InvalidHeader`].
    pub fn attach_inline_path(
        &mut self,
        path: impl AsRef<Path>,
        content_id: &str,
        content_type: Option<&str>,
    ) -> Result<&mut Self> {
        self.attach_inline_path_named(path, content_id, None, content_type)
    }
    /// As [`MessageBuilder::attach_inline_path`], with the file name written in the part's
    /// Content-Disposition (default: the path's file name; reduced to its final component).
    ///
    /// # Errors
    /// As [`MessageBuilder::attach_inline_path`].
    pub fn attach_inline_path_named(
        &mut self,
        path: impl AsRef<Path>,
        content_id: &str,
        filename: Option<&str>,
        content_type: Option<&str>,
    ) -> Result<&mut Self> {
        let field = format!("inline[{}]", self.inline.len());
        let att = file_attachment(path.as_ref(), filename, content_type, Some(content_id))
            .map_err(|e| e.with_field(field))?;
        self.inline.push(att);
        Ok(self)
    }
    /// Adds an inline part from bytes (see [`MessageBuilder::attach_inline_path`]).
    ///
    /// # Errors
    /// As [`MessageBuilder::attach_inline_path`].
    pub fn attach_inline_bytes(
        &mut self,
        data: impl Into<Arc<[u8]>>,
        content_id: &str,
        content_type: Option<&str>,
    ) -> Result<&mut Self> {
        self.attach_inline_bytes_named(data, content_id, None, content_type)
    }
    /// As [`MessageBuilder::attach_inline_bytes`], with a file name for the part's
    /// Content-Disposition (reduced to its final component).
    ///
    /// # Errors
    /// As [`MessageBuilder::attach_inline_bytes`].
    pub fn attach_inline_bytes_named(
        &mut self,
        data: impl Into<Arc<[u8]>>,
        content_id: &str,
        filename: Option<&str>,
        content_type: Option<&str>,
    ) -> Result<&mut Self> {
        let field = format!("inline[{}]", self.inline.len());
        let att = bytes_attachment(data.into(), filename, content_type, Some(content_id))
            .map_err(|e| e.with_field(field))?;
        self.inline.push(att);
        Ok(self)
    }

    chain!(/// Sets From.
        from => set_from(a: impl Into<AddressInput>));
    chain!(/// Sets Sender.
        sender => set_sender(a: impl Into<AddressInput>));
    chain!(/// Adds a Reply-To address.
        reply_to => add_reply_to(a: impl Into<AddressInput>));
    chain!(/// Adds a To recipient.
        to => add_to(a: impl Into<AddressInput>));
    chain!(/// Adds a Cc recipient.
        cc => add_cc(a: impl Into<AddressInput>));
    chain!(/// Adds a Bcc recipient.
        bcc => add_bcc(a: impl Into<AddressInput>));
    chain!(/// Sets the Subject.
        subject => set_subject(s: &str));
    chain!(/// Sets the text body.
        text => set_text(s: &str));
    chain!(/// Sets the HTML body.
        html => set_html(s: &str));
    chain!(/// Adds a custom header.
        header => add_header(name: &str, value: &str));
    chain!(/// Sets the priority.
        priority => set_priority(p: Priority));
    chain!(/// Asks for a read receipt.
        read_receipt_to => set_read_receipt_to(a: impl Into<AddressInput>));
    chain!(/// Sets the envelope sender (`<>` allowed).
        envelope_from => set_envelope_from(s: &str));
    chain!(/// Sets the envelope recipients (RCPT TO), apart from the headers.
        envelope_to => set_envelope_to(list: &[&str]));
    chain!(/// Offers one-click unsubscribe (RFC 2369, RFC 8058).
        list_unsubscribe => set_list_unsubscribe(url: &str, mailto: Option<&str>, one_click: bool));
    chain!(/// Sets the Date from a Unix time.
        date_unix => set_date_unix(unix_secs: i64));
    chain!(/// Holds the message until this Unix time (seconds).
        not_before => set_not_before(unix_secs: i64));
    chain!(/// Names the spool.
        spool => set_spool(path: impl AsRef<Path>));
    chain!(/// Attaches a file.
        attach => attach_path(path: impl AsRef<Path>, filename: Option<&str>, content_type: Option<&str>));
    chain!(/// Attaches bytes.
        attach_data => attach_bytes(data: impl Into<Arc<[u8]>>, filename: Option<&str>, content_type: Option<&str>));
    chain!(/// Adds an inline part from a file.
        inline => attach_inline_path(path: impl AsRef<Path>, content_id: &str, content_type: Option<&str>));
    chain!(/// Adds an inline part from bytes.
        inline_data => attach_inline_bytes(data: impl Into<Arc<[u8]>>, content_id: &str, content_type: Option<&str>));

    /// Validates the whole message, fixes Date and Message-ID and derives the envelope.
    ///
    /// # Errors
    /// The first error of a chaining setter; [`ErrorKind::InvalidMessage`] naming `from` when
    /// there is no From, `to` when there is no recipient at all, `html` when a `cid:` reference
    /// has no inline part (RFC 2392).
    pub fn build(&self) -> Result<Message> {
        if let Some(e) = &self.error {
            return Err(clone_error(e));
        }
        let from = self.from.clone().ok_or_else(|| {
            Error::new(ErrorKind::InvalidMessage, "a From address is required").with_field("from")
        })?;
        if self.to.is_empty() && self.cc.is_empty() && self.bcc.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                "at least one recipient (to, cc or bcc) is required",
            )
            .with_field("to"));
        }
        if let Some(html) = &self.html {
            for cid in cid_references(html) {
                if !self
                    .inline
                    .iter()
                    .any(|a| a.content_id.as_deref() == Some(cid.as_str()))
                {
                    return Err(Error::new(
                        ErrorKind::InvalidMessage,
                        format!(
                            "the HTML references cid:{cid} but no inline part has that Content-ID"
                        ),
                    )
                    .with_field("html"));
                }
            }
        }
        let reverse_path = match &self.envelope_from {
            Some(p) => p.clone(),
            None => ReversePath::Address(self.sender.as_ref().unwrap_or(&from).address().clone()),
        };
        let rcpt = match &self.envelope_to {
            Some(list) => crate::envelope::unique_recipients(list.iter().map(|a| a.to_string())),
            None => crate::envelope::unique_recipients(
                self.to
                    .iter()
                    .chain(&self.cc)
                    .chain(&self.bcc)
                    .map(|m| m.address().to_string()),
            ),
        };
        let list_unsubscribe = match (&self.list_unsubscribe, &self.list_unsubscribe_header) {
            (Some(_), Some(_)) => {
                return Err(Error::new(
                    ErrorKind::InvalidHeader,
                    "List-Unsubscribe is given both as a header and by list_unsubscribe",
                )
                .with_field("headers.List-Unsubscribe"));
            }
            (Some(l), None) if self.one_click_header && !l.one_click() => {
                return Err(Error::new(
                    ErrorKind::InvalidHeader,
                    "List-Unsubscribe-Post is given as a header; use list_unsubscribe's one_click",
                )
                .with_field("headers.List-Unsubscribe-Post"));
            }
            (Some(l), None) => Some(l.clone()),
            (None, Some(v)) => Some(ListUnsubscribe::parse_value(
                v,
                self.one_click_header,
                "headers.List-Unsubscribe",
            )?),
            (None, None) if self.one_click_header => {
                return Err(Error::new(
                    ErrorKind::InvalidHeader,
                    "List-Unsubscribe-Post without List-Unsubscribe (RFC 8058 §3.1)",
                )
                .with_field("headers.List-Unsubscribe-Post"));
            }
            (None, None) => None,
        };
        let smtputf8 = std::iter::once(&from)
            .chain(&self.sender)
            .chain(&self.reply_to)
            .chain(&self.to)
            .chain(&self.cc)
            .chain(&self.bcc)
            .chain(&self.read_receipt_to)
            .any(|m| m.address().needs_smtputf8())
            || matches!(&reverse_path, ReversePath::Address(a) if a.needs_smtputf8())
            || self
                .envelope_to
                .iter()
                .flatten()
                .any(EmailAddress::needs_smtputf8);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let message_id = match &self.message_id {
            Some(id) => id.clone(),
            None => generate_message_id(from.address().domain()),
        };
        let date = match &self.date {
            Some(d) => d.clone(),
            None => format_date(now.as_secs() as i64),
        };
        let envelope = Envelope {
            mail_from: reverse_path.as_envelope(),
            rcpt_to: rcpt,
            smtputf8,
            eightbitmime: false,
        };
        Ok(Message {
            from,
            sender: self.sender.clone(),
            reply_to: self.reply_to.clone(),
            to: self.to.clone(),
            cc: self.cc.clone(),
            bcc: self.bcc.clone(),
            subject: self.subject.clone(),
            text: self.text.clone(),
            html: self.html.clone(),
            attachments: self.attachments.clone(),
            inline: self.inline.clone(),
            headers: self.headers.clone(),
            list_unsubscribe,
            priority: self.priority,
            read_receipt_to: self.read_receipt_to.clone(),
            not_before: self.not_before,
            spool: self.spool.clone(),
            date,
            message_id,
            envelope,
        })
    }
}

fn clone_error(e: &Error) -> Error {
    let mut c = Error::new(e.kind(), e.message());
    if let Some(f) = e.field() {
        c = c.with_field(f.to_owned());
    }
    c
}

fn body_value(field: &'static str, s: &str) -> Result<String> {
    if s.contains('\0') {
        return Err(
            Error::new(ErrorKind::InvalidMessage, "body contains a NUL byte").with_field(field),
        );
    }
    Ok(s.to_owned())
}

fn check_content_type(ct: &str) -> Result<()> {
    let ok = ct.split_once('/').is_some_and(|(t, s)| {
        let tok = |x: &str| {
            !x.is_empty()
                && x.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
        };
        // RFC 6838 §4.2: type and subtype names are at most 127 characters
        tok(t) && tok(s) && t.len() <= 127 && s.len() <= 127
    });
    if !ok {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("content type {ct:?} is not type/subtype (RFC 2045 §5.1, RFC 6838 §4.2)"),
        ));
    }
    let top = ct
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if top == "multipart" || top == "message" {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "an attachment cannot be {ct}: composite types may not be base64-encoded \
                 (RFC 2045 §6.4); attach it as application/octet-stream"
            ),
        ));
    }
    Ok(())
}

/// One envelope recipient: a bare addr-spec, angle brackets and surrounding blanks allowed,
/// checked strictly; errors name `envelope_to`.
fn envelope_rcpt(a: &str) -> Result<EmailAddress> {
    let t = a.trim_matches([' ', '\t']);
    let inner = t
        .strip_prefix('<')
        .and_then(|x| x.strip_suffix('>'))
        .unwrap_or(t);
    EmailAddress::parse(inner).map_err(|e| e.with_field("envelope_to"))
}

/// The file name written into Content-Disposition: the final path component of `name`
/// (RFC 2183 §2.3: "the receiving MUA SHOULD NOT respect any directory path information"; so
/// it is never sent). `../../etc/passwd` becomes `passwd`, `C:\\dir\\report.pdf` `report.pdf`.
///
/// # Errors
/// [`ErrorKind::InvalidArgument`] when nothing is left (`""`, `"dir/"`, `".."`) or the name has
/// control characters.
pub fn attachment_filename(name: &str) -> Result<String> {
    if name.chars().any(|c| c.is_control()) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("file name {name:?} has control characters"),
        ));
    }
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    if last.is_empty() || last == "." || last == ".." {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("file name {name:?} has no final component to use (RFC 2183 §2.3)"),
        ));
    }
    Ok(last.to_owned())
}

fn check_content_id(cid: &str) -> Result<()> {
    let cid = cid.trim_start_matches('<').trim_end_matches('>');
    if cid.is_empty()
        || cid.len() > 250
        || !cid
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>\"()[]\\,;:".contains(&b))
    {
        return Err(Error::new(
            ErrorKind::InvalidHeader,
            format!(
                "Content-ID {cid:?} must be 1..=250 printable ASCII characters without specials (RFC 2392)"
            ),
        ));
    }
    Ok(())
}

fn resolve_type(filename: Option<&str>, content_type: Option<&str>) -> Result<String> {
    match content_type {
        Some(ct) => {
            check_content_type(ct)?;
            Ok(ct.to_ascii_lowercase())
        }
        None => Ok(filename
            .and_then(|f| mime_guess::from_path(f).first_raw())
            .unwrap_or("application/octet-stream")
            .to_owned()),
    }
}

fn file_attachment(
    path: &Path,
    filename: Option<&str>,
    content_type: Option<&str>,
    cid: Option<&str>,
) -> Result<Attachment> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::io(
            ErrorKind::Attachment,
            format_args!("cannot read {}", path.display()),
            e,
        )
    })?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::Attachment,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let default_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let filename = filename
        .map(str::to_owned)
        .or(default_name)
        .map(|f| attachment_filename(&f))
        .transpose()?;
    if let Some(c) = cid {
        check_content_id(c)?;
    }
    Ok(Attachment {
        content_type: resolve_type(filename.as_deref(), content_type)?,
        source: AttachmentSource::Path(path.to_owned()),
        filename,
        content_id: cid.map(|c| c.trim_start_matches('<').trim_end_matches('>').to_owned()),
    })
}

fn bytes_attachment(
    data: Arc<[u8]>,
    filename: Option<&str>,
    content_type: Option<&str>,
    cid: Option<&str>,
) -> Result<Attachment> {
    let filename = filename.map(attachment_filename).transpose()?;
    if let Some(c) = cid {
        check_content_id(c)?;
    }
    Ok(Attachment {
        content_type: resolve_type(filename.as_deref(), content_type)?,
        source: AttachmentSource::Bytes(data),
        filename,
        content_id: cid.map(|c| c.trim_start_matches('<').trim_end_matches('>').to_owned()),
    })
}

/// The Content-IDs referenced as `cid:...` URLs in HTML (RFC 2392; %-escapes decoded).
pub fn cid_references(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut out: Vec<String> = Vec::new();
    let mut from = 0;
    while let Some(pos) = lower[from..].find("cid:") {
        let start = from + pos + 4;
        // only a URL start: preceded by a quote, '(', '=' or whitespace
        let prev = lower[..from + pos].chars().next_back();
        let end = html[start..]
            .find(|c: char| c.is_whitespace() || "\"')>".contains(c))
            .map_or(html.len(), |e| start + e);
        from = end.max(start);
        if !matches!(prev, Some('"' | '\'' | '(' | '=') | None)
            && !prev.is_some_and(char::is_whitespace)
        {
            continue;
        }
        let raw = &html[start..end];
        if raw.is_empty() {
            continue;
        }
        let id = percent_decode(raw);
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn check_message_id(v: &str) -> Result<()> {
    let inner = v.strip_prefix('<').and_then(|x| x.strip_suffix('>'));
    let ok = v.len() <= 250
        && inner.is_some_and(|i| {
            i.split_once('@')
                .is_some_and(|(l, r)| !l.is_empty() && !r.is_empty() && !r.contains('@'))
                && i.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
        });
    if !ok {
        return Err(Error::new(
            ErrorKind::InvalidHeader,
            format!(
                "{v:?} is not a msg-id <left@right> of at most 250 characters (RFC 5322 §3.6.4)"
            ),
        ));
    }
    Ok(())
}

/// In-Reply-To / References (RFC 5322 §3.6.4): one or more msg-ids `<left@right>` separated
/// by whitespace.
fn check_msg_id_list(v: &str) -> Result<()> {
    let ids: Vec<&str> = v.split_whitespace().collect();
    if ids.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidHeader,
            "holds no msg-id <left@right> (RFC 5322 §3.6.4)",
        ));
    }
    ids.iter().try_for_each(|id| check_message_id(id))
}

/// RFC 5322 §3.3 date-time in UTC, e.g. `Tue, 01 Jul 2025 10:00:00 +0000`.
pub fn format_date(unix_secs: i64) -> String {
    chrono::DateTime::from_timestamp(unix_secs, 0)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S +0000")
        .to_string()
}

/// A fresh, globally unique Message-ID `<time.random@domain>` (RFC 5322 §3.6.4).
pub fn generate_message_id(domain: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let domain = if domain.starts_with('[') {
        "qmail.invalid"
    } else {
        domain
    };
    format!("<{}.{}@{}>", now.as_micros(), crate::random_hex(12), domain)
}

/// A valid message, ready to render and submit. Built by [`MessageBuilder::build`].
#[derive(Debug, Clone)]
pub struct Message {
    pub(crate) from: Mailbox,
    pub(crate) sender: Option<Mailbox>,
    pub(crate) reply_to: Vec<Mailbox>,
    pub(crate) to: Vec<Mailbox>,
    pub(crate) cc: Vec<Mailbox>,
    pub(crate) bcc: Vec<Mailbox>,
    pub(crate) subject: Option<String>,
    pub(crate) text: Option<String>,
    pub(crate) html: Option<String>,
    pub(crate) attachments: Vec<Attachment>,
    pub(crate) inline: Vec<Attachment>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) list_unsubscribe: Option<ListUnsubscribe>,
    pub(crate) priority: Option<Priority>,
    pub(crate) read_receipt_to: Option<Mailbox>,
    pub(crate) not_before: Option<i64>,
    pub(crate) spool: Option<PathBuf>,
    pub(crate) date: String,
    pub(crate) message_id: String,
    pub(crate) envelope: Envelope,
}

impl Message {
    /// A new, empty builder.
    pub fn builder() -> MessageBuilder {
        MessageBuilder::default()
    }
    /// The envelope: MAIL FROM, RCPT TO (To, Cc and Bcc, de-duplicated), SMTPUTF8 need.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }
    /// The Message-ID header value, `<left@right>`.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }
    /// The Date header value (RFC 5322 §3.3).
    pub fn date(&self) -> &str {
        &self.date
    }
    /// The spool named for this message, if any.
    pub fn spool(&self) -> Option<&Path> {
        self.spool.as_deref()
    }
    /// The not-before time, in Unix seconds, if any.
    pub fn not_before(&self) -> Option<i64> {
        self.not_before
    }
    /// The priority (Normal when unset).
    pub fn priority(&self) -> Priority {
        self.priority.unwrap_or(Priority::Normal)
    }
    /// The To mailboxes.
    pub fn to(&self) -> &[Mailbox] {
        &self.to
    }
    /// The Cc mailboxes.
    pub fn cc(&self) -> &[Mailbox] {
        &self.cc
    }
    /// The Bcc mailboxes (envelope only).
    pub fn bcc(&self) -> &[Mailbox] {
        &self.bcc
    }
    /// The Subject, unencoded.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
    /// The From mailbox.
    pub fn from_mailbox(&self) -> &Mailbox {
        &self.from
    }
    /// The attachments, in order.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }
    /// The inline parts, in order.
    pub fn inline_parts(&self) -> &[Attachment] {
        &self.inline
    }
    /// The unsubscribe offer (RFC 2369 / RFC 8058), if any.
    pub fn list_unsubscribe(&self) -> Option<&ListUnsubscribe> {
        self.list_unsubscribe.as_ref()
    }
}
