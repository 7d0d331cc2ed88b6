//! Messages composed elsewhere: Python's `email` package, nodemailer, any RFC 5322 bytes.
//!
//! [`RawMessage::parse`] prepares such bytes for the spool, with the same rules as a built
//! message: line breaks (LF, CRLF, lone CR) become CRLF; a line over 998 octets, a NUL, a bad
//! field name or a header section without From is refused; Bcc fields are removed (their
//! addresses stay in the envelope); Date and Message-ID are added when missing. Recipients
//! default to To, Cc and Bcc; the envelope sender to Sender, else From.

use crate::address::{EmailAddress, ReversePath};
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Priority, format_date, generate_message_id};
use crate::mime::MAX_LINE;
use crate::unsubscribe::{ListUnsubscribe, ONE_CLICK};

/// A prepared raw message: CRLF bytes, envelope and Message-ID.
#[derive(Debug, Clone)]
pub struct RawMessage {
    bytes: Vec<u8>,
    envelope: Envelope,
    message_id: String,
    not_before: Option<i64>,
    priority: Priority,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidMessage, msg).with_field("message")
}

/// The addresses of an address-list header value (RFC 5322 §3.4), groups flattened.
///
/// # Errors
/// [`ErrorKind::InvalidAddress`] for a member that is not an address.
pub fn parse_address_list(value: &str) -> Result<Vec<EmailAddress>> {
    crate::address::split_list(value)
        .iter()
        .map(|m| {
            let spec = match (m.rfind('<'), m.ends_with('>')) {
                (Some(i), true) => &m[i + 1..m.len() - 1],
                _ => m.as_str(),
            };
            EmailAddress::parse(spec)
        })
        .collect()
}

/// Line-break normalisation of a byte stream given in pieces: LF, CRLF and lone CR become
/// CRLF (a CR at the end of one piece and an LF at the start of the next are one break); a NUL
/// or a line over 998 octets (RFC 5322 §2.1.1) is refused. [`RawMessage::parse`] and
/// [`RawStream`] both use it, so a message streamed is spooled byte for byte as the same
/// message given whole.
#[derive(Debug, Default, Clone)]
pub struct LineNormaliser {
    pending_cr: bool,
    line: usize,
}

impl LineNormaliser {
    /// Appends the normalised form of `chunk` to `out`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidMessage`] naming `message` for a NUL or an overlong line.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<()> {
        out.reserve(chunk.len() + chunk.len() / 32);
        for &b in chunk {
            if self.pending_cr {
                self.pending_cr = false;
                self.line = 0;
                out.extend_from_slice(b"\r\n");
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' => {
                    self.line = 0;
                    out.extend_from_slice(b"\r\n");
                }
                0 => return Err(invalid("the message contains a NUL byte")),
                _ => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(invalid(format!(
                            "a line is over {MAX_LINE} octets (RFC 5322 §2.1.1)"
                        )));
                    }
                    out.push(b);
                }
            }
        }
        Ok(())
    }

    /// Ends the stream: a CR left pending becomes CRLF.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.extend_from_slice(b"\r\n");
        }
        self.line = 0;
    }
}

/// The prepared header section of a raw message.
struct Head {
    /// Generated Message-ID / Date, the fields without Bcc, and the empty line.
    bytes: Vec<u8>,
    envelope: Envelope,
    message_id: String,
    priority: Priority,
}

/// The spool priority a composer wrote: `X-Priority: N` (1..5, the digit first), else
/// `Importance: high | normal | low` (RFC 2156 §5.3), else `Priority: urgent | normal |
/// non-urgent` (RFC 2156), else normal.
fn header_priority(value: &dyn Fn(&str) -> Option<String>) -> Priority {
    if let Some(p) = value("x-priority")
        .and_then(|v| v.trim().chars().next())
        .and_then(|c| c.to_digit(10))
        .and_then(|n| Priority::from_number(i64::from(n)).ok())
    {
        return p;
    }
    let word = |name| value(name).map(|v| v.trim().to_ascii_lowercase());
    match word("importance").as_deref() {
        Some("high") => return Priority::High,
        Some("low") => return Priority::Low,
        Some("normal") => return Priority::Normal,
        _ => {}
    }
    match word("priority").as_deref() {
        Some("urgent") => Priority::High,
        Some("non-urgent") => Priority::Low,
        _ => Priority::Normal,
    }
}

/// Parses and prepares the header section `head` (CRLF lines, ending with the last field's
/// CRLF, without the empty line).
fn prepare_head(
    head: &[u8],
    envelope_from: Option<&str>,
    recipients: Option<&[String]>,
) -> Result<Head> {
    // fields: (name, raw bytes including continuation lines)
    let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
    for line in head.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            match fields.last_mut() {
                Some((_, raw)) => raw.extend_from_slice(line),
                None => {
                    return Err(invalid(
                        "the header section starts with a continuation line",
                    ));
                }
            }
            continue;
        }
        let colon = line.iter().position(|&b| b == b':').ok_or_else(|| {
            invalid(
                "a header line has no ':' (or the empty line after the header section is missing)",
            )
        })?;
        let name = std::str::from_utf8(&line[..colon])
            .map_err(|_| invalid("a field name is not ASCII"))?;
        crate::mime::header::check_name(name)
            .map_err(|e| e.with_field(format!("headers.{}", name.escape_debug())))?;
        fields.push((name.to_owned(), line.to_vec()));
    }
    let value = |name: &str| -> Option<String> {
        fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, raw)| unfold(raw))
    };
    let values = |name: &str| -> Vec<String> {
        fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, raw)| unfold(raw))
            .collect()
    };
    let from = value("from").ok_or_else(|| invalid("the message has no From field"))?;
    let from_addr = parse_address_list(&from)
        .map_err(|e| e.with_field("from"))?
        .into_iter()
        .next()
        .ok_or_else(|| invalid("From holds no address"))?;
    let reverse = match envelope_from {
        Some(s) => ReversePath::parse(s).map_err(|e| e.with_field("envelope_from"))?,
        None => {
            let sender = match value("sender") {
                Some(s) => parse_address_list(&s)
                    .map_err(|e| e.with_field("sender"))?
                    .into_iter()
                    .next(),
                None => None,
            };
            ReversePath::Address(sender.unwrap_or_else(|| from_addr.clone()))
        }
    };
    let mut rcpt: Vec<EmailAddress> = Vec::new();
    match recipients {
        Some(list) => {
            for r in list {
                let t = r.trim_matches([' ', '\t']);
                let inner = t
                    .strip_prefix('<')
                    .and_then(|x| x.strip_suffix('>'))
                    .unwrap_or(t);
                rcpt.push(EmailAddress::parse(inner).map_err(|e| e.with_field("recipients"))?);
            }
        }
        None => {
            for (name, field) in [("to", "to"), ("cc", "cc"), ("bcc", "bcc")] {
                for v in values(name) {
                    rcpt.extend(parse_address_list(&v).map_err(|e| e.with_field(field))?);
                }
            }
        }
    }
    let rcpt_to = crate::envelope::unique_recipients(rcpt.iter().map(|a| a.to_string()));
    if rcpt_to.is_empty() {
        return Err(invalid("the message has no recipient").with_field("recipients"));
    }
    // the one-click rule of the builder holds for composed messages too (RFC 8058 §3.1)
    let post = values("list-unsubscribe-post");
    if let Some(p) = post.iter().find(|p| p.trim() != ONE_CLICK) {
        return Err(Error::new(
            ErrorKind::InvalidHeader,
            format!("List-Unsubscribe-Post is {p:?}; the only value is {ONE_CLICK:?} (RFC 8058)"),
        )
        .with_field("headers.List-Unsubscribe-Post"));
    }
    match value("list-unsubscribe") {
        Some(v) => {
            ListUnsubscribe::parse_value(&v, !post.is_empty(), "headers.List-Unsubscribe")?;
        }
        None if !post.is_empty() => {
            return Err(Error::new(
                ErrorKind::InvalidHeader,
                "List-Unsubscribe-Post without List-Unsubscribe (RFC 8058 §3.1)",
            )
            .with_field("headers.List-Unsubscribe-Post"));
        }
        None => {}
    }
    let priority = header_priority(&value);
    let mut out = Vec::with_capacity(head.len() + 128);
    let message_id = match value("message-id") {
        Some(id) => id.trim().to_owned(),
        None => {
            let id = generate_message_id(from_addr.domain());
            out.extend_from_slice(format!("Message-ID: {id}\r\n").as_bytes());
            id
        }
    };
    if value("date").is_none() {
        out.extend_from_slice(
            format!("Date: {}\r\n", format_date(crate::spool::now_secs())).as_bytes(),
        );
    }
    for (name, raw) in &fields {
        if !name.eq_ignore_ascii_case("bcc") {
            out.extend_from_slice(raw);
        }
    }
    out.extend_from_slice(b"\r\n");
    let smtputf8 = !head.is_ascii()
        || rcpt.iter().any(EmailAddress::needs_smtputf8)
        || matches!(&reverse, ReversePath::Address(a) if a.needs_smtputf8());
    Ok(Head {
        bytes: out,
        envelope: Envelope {
            mail_from: reverse.as_envelope(),
            rcpt_to,
            smtputf8,
            eightbitmime: false,
        },
        message_id,
        priority,
    })
}

impl RawMessage {
    /// Prepares `bytes` (an RFC 5322 message, any line-break style) for spooling.
    /// `envelope_from`: `None` = Sender or From; `Some("<>")` = null path.
    /// `recipients`: `None` = To + Cc + Bcc (bare addr-specs, angle brackets allowed). The
    /// spool priority comes from X-Priority / Importance / Priority ([`RawMessage::set_priority`]
    /// overrides it).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidMessage`] naming `message` (no empty line after the header section,
    /// even for a message without body: RFC 5322 §2.1; a NUL, a line over 998 octets, no From,
    /// no recipient); [`ErrorKind::InvalidHeader`] for a bad field name;
    /// [`ErrorKind::InvalidAddress`] naming `envelope_from` / `recipients` / the field;
    /// [`ErrorKind::InvalidArgument`] naming `headers.List-Unsubscribe` for a bad URI.
    pub fn parse(
        bytes: &[u8],
        envelope_from: Option<&str>,
        recipients: Option<&[String]>,
    ) -> Result<RawMessage> {
        let mut crlf = Vec::new();
        let mut norm = LineNormaliser::default();
        norm.push(bytes, &mut crlf)?;
        norm.finish(&mut crlf);
        let Some(sep) = head_end(&crlf, 0) else {
            return Err(invalid(
                "no empty line ends the header section (RFC 5322 §2.1: it is required even \
                 without a body)",
            ));
        };
        let head = prepare_head(&crlf[..sep + 2], envelope_from, recipients)?;
        let body = &crlf[sep + 4..];
        let mut out = head.bytes;
        out.extend_from_slice(body);
        let mut envelope = head.envelope;
        envelope.eightbitmime = !body.is_ascii();
        Ok(RawMessage {
            bytes: out,
            envelope,
            message_id: head.message_id,
            not_before: None,
            priority: head.priority,
        })
    }

    /// Holds the message until this Unix time (seconds).
    pub fn set_not_before(&mut self, unix_secs: Option<i64>) {
        self.not_before = unix_secs;
    }

    /// Sets the spool priority (the dispatcher's order), instead of the one read from the
    /// headers.
    pub fn set_priority(&mut self, priority: Priority) {
        self.priority = priority;
    }

    /// The prepared bytes (CRLF, Bcc removed, Date and Message-ID present).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }
    /// The Message-ID value.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }
    /// The not-before time, Unix seconds.
    pub fn not_before(&self) -> Option<i64> {
        self.not_before
    }
    /// The spool priority.
    pub fn priority(&self) -> Priority {
        self.priority
    }
}

/// The position of the first `CRLF CRLF` at or after `from`.
fn head_end(crlf: &[u8], from: usize) -> Option<usize> {
    find(&crlf[from..], b"\r\n\r\n").map(|i| i + from)
}

/// The longest header section a [`RawStream`] buffers, in octets, before refusing the message.
pub const MAX_STREAM_HEAD: usize = 1 << 20;

/// A raw message spooled as it is streamed (nodemailer's `createReadStream()`, a pipe), in
/// bounded memory: the header section is buffered (at most [`MAX_STREAM_HEAD`]) and checked as
/// [`RawMessage::parse`] does, then the spool file is begun and every further piece is
/// normalised and written straight into it. The spooled bytes are the same as
/// [`RawMessage::parse`] gives for the whole message. Dropped before [`RawStream::finish`],
/// nothing is spooled.
#[derive(Debug)]
pub struct RawStream {
    target: crate::initiator::Target,
    envelope_from: Option<String>,
    recipients: Option<Vec<String>>,
    not_before: Option<i64>,
    priority: Option<Priority>,
    norm: LineNormaliser,
    head: Vec<u8>,
    body: Option<crate::spool::PendingSubmit>,
    eight_bit: bool,
    message_id: Option<String>,
    failed: bool,
}

impl RawStream {
    /// A stream into `target`, with the envelope overrides of [`RawMessage::parse`].
    pub fn new(
        target: crate::initiator::Target,
        envelope_from: Option<String>,
        recipients: Option<Vec<String>>,
    ) -> RawStream {
        RawStream {
            target,
            envelope_from,
            recipients,
            not_before: None,
            priority: None,
            norm: LineNormaliser::default(),
            head: Vec::new(),
            body: None,
            eight_bit: false,
            message_id: None,
            failed: false,
        }
    }

    /// Holds the message until this Unix time (seconds). Call before the first write.
    pub fn set_not_before(&mut self, unix_secs: Option<i64>) {
        self.not_before = unix_secs;
    }

    /// Sets the spool priority instead of the headers'. Call before the first write.
    pub fn set_priority(&mut self, priority: Option<Priority>) {
        self.priority = priority;
    }

    /// The Message-ID, once the header section has been read.
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }

    /// The envelope, once the header section has been read.
    pub fn envelope(&self) -> Option<&Envelope> {
        self.body.as_ref().map(|p| &p.header().envelope)
    }

    /// Takes the next piece of the message.
    ///
    /// # Errors
    /// As [`RawMessage::parse`] (the first error ends the stream: later calls fail too, and
    /// nothing is spooled); [`ErrorKind::InvalidMessage`] for a header section over
    /// [`MAX_STREAM_HEAD`]; [`ErrorKind::SpoolUnavailable`] when the spool cannot be written.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        if self.failed {
            return Err(invalid("the stream already failed"));
        }
        let r = self.write_inner(chunk);
        if r.is_err() {
            self.failed = true;
            self.body = None;
        }
        r
    }

    fn write_inner(&mut self, chunk: &[u8]) -> Result<()> {
        if let Some(p) = &mut self.body {
            let mut out = Vec::new();
            self.norm.push(chunk, &mut out)?;
            self.eight_bit |= !out.is_ascii();
            return p.write(&out);
        }
        let from = self.head.len().saturating_sub(3);
        self.norm.push(chunk, &mut self.head)?;
        self.start_body(from)
    }

    /// Begins the spool file once the header section is complete.
    fn start_body(&mut self, search_from: usize) -> Result<()> {
        let Some(sep) = head_end(&self.head, search_from) else {
            if self.head.len() > MAX_STREAM_HEAD {
                return Err(invalid(format!(
                    "the header section is over {MAX_STREAM_HEAD} octets"
                )));
            }
            return Ok(());
        };
        let head = prepare_head(
            &self.head[..sep + 2],
            self.envelope_from.as_deref(),
            self.recipients.as_deref(),
        )?;
        let header = crate::spool::SpoolHeader {
            envelope: head.envelope,
            created: crate::spool::now_secs(),
            not_before: self.not_before,
            priority: self.priority.unwrap_or(head.priority).number(),
            message_id: head.message_id.clone(),
        };
        let mut pending = self.target.begin(&header)?;
        pending.write(&head.bytes)?;
        let rest = &self.head[sep + 4..];
        self.eight_bit |= !rest.is_ascii();
        pending.write(rest)?;
        self.head = Vec::new();
        self.message_id = Some(head.message_id);
        self.body = Some(pending);
        Ok(())
    }

    /// Ends the message and commits the spool file; returns the queue id.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidMessage`] when the header section never ended; as
    /// [`RawStream::write`].
    pub fn finish(mut self) -> Result<crate::spool::QueueId> {
        if self.failed {
            return Err(invalid("the stream already failed"));
        }
        let mut tail = Vec::new();
        self.norm.finish(&mut tail);
        if self.body.is_none() {
            let from = self.head.len().saturating_sub(3);
            self.head.extend_from_slice(&tail);
            self.start_body(from)?;
            tail.clear();
        }
        let Some(mut pending) = self.body.take() else {
            return Err(invalid(
                "no empty line ends the header section (RFC 5322 §2.1: it is required even \
                 without a body)",
            ));
        };
        pending.write(&tail)?;
        if self.eight_bit {
            pending.set_eightbitmime();
        }
        pending.commit()
    }
}

fn unfold(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let v = s.split_once(':').map_or("", |(_, v)| v);
    v.replace("\r\n", "").trim().to_owned()
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_bcc_and_fills_in() {
        let raw = b"From: A <a@example.com>\nTo: b@example.org, \"C, D\" <c@example.org>\nBcc: x@example.net,\n y@example.net\nSubject: hi\n\nbody\n";
        let m = RawMessage::parse(raw, None, None).unwrap();
        assert_eq!(
            m.envelope().rcpt_to,
            [
                "b@example.org",
                "c@example.org",
                "x@example.net",
                "y@example.net"
            ]
        );
        assert_eq!(m.envelope().mail_from, "a@example.com");
        let s = String::from_utf8(m.bytes().to_vec()).unwrap();
        assert!(!s.to_ascii_lowercase().contains("bcc") && !s.contains("y@example.net"));
        assert!(s.contains("Message-ID: <") && s.contains("Date: "));
        assert!(s.ends_with("\r\n\r\nbody\r\n"));
        assert!(
            !s.contains("\r\n\r\n\r\n"),
            "exactly one empty line separates header and body"
        );
    }

    #[test]
    fn groups_and_null_sender() {
        let raw = b"From: a@example.com\r\nTo: undisclosed-recipients:;\r\nCc: team: x@example.org, y@example.org;\r\n\r\n";
        let m = RawMessage::parse(raw, Some("<>"), None).unwrap();
        assert_eq!(m.envelope().rcpt_to, ["x@example.org", "y@example.org"]);
        assert_eq!(m.envelope().mail_from, "");
    }
}
