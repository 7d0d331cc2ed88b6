//! SMTP replies (RFC 5321 §4.2): framing, codes, enhanced status codes (RFC 3463, RFC 2034)
//! and bounds.
//!
//! A reply is one or more lines `CODE-text` … `CODE text` (or a line that is only `CODE`,
//! allowed by RFC 5321 §4.2: "the text may be empty"). Every line of one reply carries the
//! same code; the last line has a space (or nothing) after the code. Each line ends with
//! CRLF; a bare LF is accepted too (RFC 5321 §4.5.3.1.5 asks clients to be liberal here) but
//! a CR anywhere else is not. The text may begin with an enhanced status code
//! (`5.1.1 `, RFC 3463 class.subject.detail, announced by ENHANCEDSTATUSCODES, RFC 2034);
//! it is kept apart from the text, so the diagnosis shows both without mixing them.
//!
//! Everything here is untrusted input: a reply is bounded ([`MAX_LINE`] bytes per line,
//! [`MAX_LINES`] lines, [`MAX_REPLY`] bytes), and anything that is not a reply is a
//! [`ReplyError::Garbage`] quoting the bytes received.

use std::fmt;

/// Longest reply line accepted, CRLF included (RFC 5321 §4.5.3.1.5 sets 512; real servers
/// send longer EHLO and error lines, so this is lenient but bounded).
pub const MAX_LINE: usize = 4096;
/// Most lines in one reply (an EHLO reply has one per extension).
pub const MAX_LINES: usize = 128;
/// Most bytes in one reply.
pub const MAX_REPLY: usize = 64 * 1024;
/// Most bytes of a bad reply quoted in a diagnosis.
const QUOTE: usize = 120;

/// An enhanced status code `class.subject.detail` (RFC 3463 §2, carried in replies per
/// RFC 2034 §3). `class` is 2, 4 or 5 and equals the first digit of the reply code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 success, 4 persistent transient failure, 5 permanent failure.
    pub class: u8,
    /// The subject (0–999), e.g. 1 = addressing.
    pub subject: u16,
    /// The detail (0–999).
    pub detail: u16,
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The three-digit reply code (200–559, RFC 5321 §4.2.1).
    pub code: u16,
    /// The enhanced status code of the first line, when it has one.
    pub enhanced: Option<EnhancedCode>,
    /// The text of each line, code and enhanced code removed (possibly empty strings);
    /// invalid UTF-8 is replaced (U+FFFD).
    pub lines: Vec<String>,
}

impl Response {
    /// 2xx: the command succeeded.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 3xx: go on (354 to DATA, 334 to AUTH).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }
    /// 4xx: transient negative, try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    /// 5xx: permanent negative.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }
    /// The lines joined with a space.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
    /// As a [`Reply`](crate::state::Reply) for the state file and DSNs: the code, and the text
    /// prefixed with the enhanced code when there is one (`5.1.1 user unknown`).
    pub fn to_reply(&self) -> crate::state::Reply {
        let text = match self.enhanced {
            Some(e) => {
                let t = self.text();
                if t.is_empty() {
                    e.to_string()
                } else {
                    format!("{e} {t}")
                }
            }
            None => self.text(),
        };
        crate::state::Reply::smtp(self.code, text)
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        let t = self.text();
        if !t.is_empty() {
            write!(f, " {t}")?;
        }
        Ok(())
    }
}

/// Why bytes from the relay are not a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Not an SMTP reply line: `why`, and the line as received (escaped, cut at 120 bytes).
    #[error("protocol error: {why}: received \"{quoted}\"")]
    Garbage {
        /// What is wrong.
        why: &'static str,
        /// The offending bytes, escaped.
        quoted: String,
    },
    /// A line longer than [`MAX_LINE`], more lines than [`MAX_LINES`] or more bytes than
    /// [`MAX_REPLY`].
    #[error("protocol error: reply too long ({what}); starts \"{quoted}\"")]
    TooLong {
        /// Which bound.
        what: &'static str,
        /// The start of the reply, escaped.
        quoted: String,
    },
}

/// The bytes escaped for a diagnosis (`\r`, `\n`, `\xNN`), cut at 120 bytes.
pub fn quote(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(QUOTE)];
    let mut s: String = cut.escape_ascii().to_string();
    if bytes.len() > QUOTE {
        s.push('…');
    }
    s
}

fn garbage(why: &'static str, line: &[u8]) -> ReplyError {
    ReplyError::Garbage {
        why,
        quoted: quote(line),
    }
}

/// Parses an enhanced status code at the start of `text` (RFC 3463 §2: class "." subject
/// "." detail, subject and detail 1–3 digits), followed by a space or the end. Returns it and
/// the rest of the text.
fn enhanced(text: &str, code_class: u8) -> Option<(EnhancedCode, &str)> {
    let end = text.find(' ').unwrap_or(text.len());
    let (tok, rest) = text.split_at(end);
    let mut parts = tok.split('.');
    let (c, s, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let num = |p: &str, max: usize| -> Option<u16> {
        if p.is_empty() || p.len() > max || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let class = num(c, 1)? as u8;
    if !matches!(class, 2 | 4 | 5) || class != code_class {
        return None;
    }
    let e = EnhancedCode {
        class,
        subject: num(s, 3)?,
        detail: num(d, 3)?,
    };
    Some((e, rest.strip_prefix(' ').unwrap_or(rest)))
}

/// Tries to parse one complete reply at the start of `buf`.
///
/// `Ok(Some((response, n)))`: a reply taking the first `n` bytes. `Ok(None)`: not complete
/// yet (read more; the bounds are checked on what is there so far). `Err`: not a reply.
/// Pure and total: any input gives one of the three, never a panic (fuzzed:
/// `qmail-dispatch/fuzz`).
///
/// # Errors
/// [`ReplyError`] for a line that is not `DDD`, `DDD text` or `DDD-text` (first digit 2–5,
/// second 0–5, RFC 5321 §4.2), a code that changes within a reply, a bare CR, or a bound
/// exceeded.
pub fn parse(buf: &[u8]) -> Result<Option<(Response, usize)>, ReplyError> {
    let mut pos = 0;
    let mut code: Option<u16> = None;
    let mut enhanced_code = None;
    let mut lines: Vec<String> = Vec::new();
    loop {
        let rest = &buf[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_LINE {
                return Err(ReplyError::TooLong {
                    what: "line",
                    quoted: quote(rest),
                });
            }
            if pos + rest.len() > MAX_REPLY {
                return Err(ReplyError::TooLong {
                    what: "bytes",
                    quoted: quote(buf),
                });
            }
            // what is there must still be able to become a line
            check_prefix(rest)?;
            return Ok(None);
        };
        let raw = &rest[..nl + 1];
        if raw.len() > MAX_LINE {
            return Err(ReplyError::TooLong {
                what: "line",
                quoted: quote(raw),
            });
        }
        let line = &rest[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.contains(&b'\r') {
            return Err(garbage("bare CR in a reply line", raw));
        }
        if line.len() < 3 {
            return Err(garbage("a reply line shorter than its code", raw));
        }
        let c = reply_code(&line[..3]).ok_or_else(|| garbage("not a reply code", raw))?;
        if code.is_some_and(|prev| prev != c) {
            return Err(garbage(
                "the reply code changes within a multi-line reply",
                raw,
            ));
        }
        code = Some(c);
        let (last, text) = match line.get(3) {
            None => (true, &[][..]),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(garbage("no space or hyphen after the reply code", raw)),
        };
        let text = String::from_utf8_lossy(text);
        let class = (c / 100) as u8;
        let text = match enhanced(&text, class) {
            Some((e, t)) => {
                if lines.is_empty() {
                    enhanced_code = Some(e);
                }
                t.to_owned()
            }
            None => text.into_owned(),
        };
        lines.push(text);
        pos += nl + 1;
        if pos > MAX_REPLY {
            return Err(ReplyError::TooLong {
                what: "bytes",
                quoted: quote(buf),
            });
        }
        if last {
            return Ok(Some((
                Response {
                    code: c,
                    enhanced: enhanced_code,
                    lines,
                },
                pos,
            )));
        }
        if lines.len() >= MAX_LINES {
            return Err(ReplyError::TooLong {
                what: "lines",
                quoted: quote(buf),
            });
        }
    }
}

/// The code of `d` (3 bytes): first digit 2–5, second 0–5, third 0–9 (RFC 5321 §4.2).
fn reply_code(d: &[u8]) -> Option<u16> {
    match d {
        [a @ b'2'..=b'5', b @ b'0'..=b'5', c @ b'0'..=b'9'] => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

/// An incomplete line must start like a reply line (so garbage is reported at once, not
/// after a timeout).
fn check_prefix(rest: &[u8]) -> Result<(), ReplyError> {
    let ok = match rest.len() {
        0 => true,
        1 => matches!(rest[0], b'2'..=b'5'),
        2 => reply_code(&[rest[0], rest[1], b'0']).is_some(),
        _ => {
            reply_code(&rest[..3]).is_some()
                && rest.get(3).is_none_or(|b| matches!(b, b' ' | b'-' | b'\r'))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(garbage("not a reply line", rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Response {
        let (r, n) = parse(s.as_bytes()).unwrap().unwrap();
        assert_eq!(n, s.len());
        r
    }

    #[test]
    fn single_and_multi_line() {
        let r = one("250 ok\r\n");
        assert_eq!((r.code, r.text().as_str(), r.enhanced), (250, "ok", None));
        let r = one("250-mx.example\r\n250-PIPELINING\r\n250 SIZE 20000\r\n");
        assert_eq!(r.lines, ["mx.example", "PIPELINING", "SIZE 20000"]);
    }

    #[test]
    fn code_only_lines() {
        // RFC 5321 §4.2: the text is optional
        assert_eq!(one("250\r\n").lines, [""]);
        assert_eq!(one("354\r\n").code, 354);
        assert_eq!(one("250-\r\n250\r\n").lines, ["", ""]);
        assert_eq!(one("250 \r\n").lines, [""]);
        // a bare LF is tolerated
        assert_eq!(one("250 ok\n").code, 250);
    }

    #[test]
    fn enhanced_codes_apart() {
        let r = one("550 5.1.1 <x@example.com>: user unknown\r\n");
        assert_eq!(
            r.enhanced,
            Some(EnhancedCode {
                class: 5,
                subject: 1,
                detail: 1
            })
        );
        assert_eq!(r.text(), "<x@example.com>: user unknown");
        assert_eq!(r.to_reply().text, "5.1.1 <x@example.com>: user unknown");
        // the class must match the code
        assert_eq!(one("250 5.1.1 x\r\n").enhanced, None);
        assert_eq!(
            one("250 2.0.0\r\n").enhanced.map(|e| e.to_string()),
            Some("2.0.0".into())
        );
        assert_eq!(one("250 1.2.3.4 x\r\n").enhanced, None);
    }

    #[test]
    fn incomplete_and_pipelined() {
        assert_eq!(parse(b"250-a\r\n250 b").unwrap(), None);
        assert_eq!(parse(b"").unwrap(), None);
        assert_eq!(parse(b"2").unwrap(), None);
        let (r, n) = parse(b"250 a\r\n354 go\r\n").unwrap().unwrap();
        assert_eq!((r.code, n), (250, 7));
    }

    #[test]
    fn garbage_is_quoted() {
        for bad in [
            &b"hello\r\n"[..],
            b"25\r\n",
            b"250x\r\n",
            b"199 no\r\n",
            b"260 no\r\n",
            b"250-a\r\n251 b\r\n",
            b"250 a\rb\r\n",
            b"HTTP/1.1 400",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.to_string().contains("protocol error"), "{e}");
        }
        let e = parse(b"550-x\r\n\x01\xffjunk\r\n").unwrap_err();
        assert!(e.to_string().contains("\\x01\\xffjunk"), "{e}");
    }

    #[test]
    fn bounds() {
        let long = format!("250 {}\r\n", "x".repeat(MAX_LINE));
        assert!(matches!(
            parse(long.as_bytes()),
            Err(ReplyError::TooLong { .. })
        ));
        let partial = format!("250 {}", "x".repeat(MAX_LINE));
        assert!(matches!(
            parse(partial.as_bytes()),
            Err(ReplyError::TooLong { .. })
        ));
        let many = "250-x\r\n".repeat(MAX_LINES + 1);
        assert!(matches!(
            parse(many.as_bytes()),
            Err(ReplyError::TooLong { .. })
        ));
    }
}
