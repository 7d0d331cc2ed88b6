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
use crate::message::{format_date, generate_message_id};
use crate::mime::MAX_LINE;
use crate::mime::transfer::normalise_line_breaks;

/// A prepared raw message: CRLF bytes, envelope and Message-ID.
#[derive(Debug, Clone)]
pub struct RawMessage {
    bytes: Vec<u8>,
    envelope: Envelope,
    message_id: String,
    not_before: Option<i64>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidMessage, msg).with_field("message")
}

/// Splits a header value at top-level commas (outside quotes, comments and angle brackets).
fn split_list(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut depth, mut angle, mut esc) = (false, 0i32, false, false);
    for c in v.chars() {
        if esc {
            cur.push(c);
            esc = false;
            continue;
        }
        match c {
            '\\' if quoted || depth > 0 => {
                esc = true;
                cur.push(c);
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                cur.push(c);
            }
            '(' if !quoted => {
                depth += 1;
            }
            ')' if !quoted && depth > 0 => {
                depth -= 1;
            }
            _ if depth > 0 => {}
            '<' if !quoted => {
                angle = true;
                cur.push(c);
            }
            '>' if !quoted => {
                angle = false;
                cur.push(c);
            }
            ',' | ';' if !quoted && !angle => out.push(std::mem::take(&mut cur)),
            ':' if !quoted && !angle => cur.clear(), // group display name
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The addresses of an address-list header value (RFC 5322 §3.4), groups flattened.
///
/// # Errors
/// [`ErrorKind::InvalidAddress`] for a member that is not an address.
pub fn parse_address_list(value: &str) -> Result<Vec<EmailAddress>> {
    split_list(value)
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

impl RawMessage {
    /// Prepares `bytes` (an RFC 5322 message, any line-break style) for spooling.
    /// `envelope_from`: `None` = Sender or From; `Some("<>")` = null path.
    /// `recipients`: `None` = To + Cc + Bcc.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidMessage`] naming `message` (no header/body separator, a NUL, a line
    /// over 998 octets, no From, no recipient); [`ErrorKind::InvalidHeader`] for a bad field
    /// name; [`ErrorKind::InvalidAddress`] naming `envelope_from` / `recipients` / the field.
    pub fn parse(
        bytes: &[u8],
        envelope_from: Option<&str>,
        recipients: Option<&[String]>,
    ) -> Result<RawMessage> {
        if bytes.contains(&0) {
            return Err(invalid("the message contains a NUL byte"));
        }
        let crlf = normalise_line_breaks(bytes);
        let split = find(&crlf, b"\r\n\r\n")
            .map(|i| i + 2)
            .or_else(|| crlf.ends_with(b"\r\n").then_some(crlf.len()));
        let Some(head_end) = split else {
            return Err(invalid("no empty line ends the header section"));
        };
        let (head, rest) = crlf.split_at(head_end);
        // `head` ends with the last field's CRLF; the empty line is the separator, written below
        let body = rest.strip_prefix(b"\r\n").unwrap_or(rest);
        for line in crlf.split(|&b| b == b'\n') {
            if line.len() > MAX_LINE + 1 {
                return Err(invalid(format!(
                    "a line is {} octets; at most {MAX_LINE} (RFC 5322 §2.1.1)",
                    line.len() - 1
                )));
            }
        }
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
            let colon = line
                .iter()
                .position(|&b| b == b':')
                .ok_or_else(|| invalid("a header line has no ':'"))?;
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
                    rcpt.push(EmailAddress::parse(r).map_err(|e| e.with_field("recipients"))?);
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
        let mut out = Vec::with_capacity(crlf.len() + 128);
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
        out.extend_from_slice(body);
        let smtputf8 = !head.is_ascii()
            || rcpt.iter().any(EmailAddress::needs_smtputf8)
            || matches!(&reverse, ReversePath::Address(a) if a.needs_smtputf8());
        let envelope = Envelope {
            mail_from: reverse.as_envelope(),
            rcpt_to,
            smtputf8,
            eightbitmime: !body.is_ascii(),
        };
        Ok(RawMessage {
            bytes: out,
            envelope,
            message_id,
            not_before: None,
        })
    }

    /// Holds the message until this Unix time (seconds).
    pub fn set_not_before(&mut self, unix_secs: Option<i64>) {
        self.not_before = unix_secs;
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
