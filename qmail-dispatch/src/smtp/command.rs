//! SMTP commands as written on the wire (RFC 5321 §4.1, with the ESMTP parameters of
//! RFC 1870 SIZE, RFC 6152 BODY=8BITMIME and RFC 6531 SMTPUTF8).
//!
//! Every argument is re-checked here, whatever checked it before: a CR, LF or NUL (or, in an
//! address, `<`, `>` or a space) never reaches the wire, so no input can inject a command.

use std::fmt::Write as _;

/// One command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `EHLO name` (RFC 5321 §4.1.1.1).
    Ehlo(&'a str),
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954 §4); the response is base64 already.
    Auth {
        /// `PLAIN`, `LOGIN`, `XOAUTH2`.
        mechanism: &'a str,
        /// The initial response, base64.
        initial: Option<&'a str>,
    },
    /// A line answering a 334 challenge (base64, or empty).
    AuthLine(&'a str),
    /// `MAIL FROM:<addr> [SIZE=n] [BODY=8BITMIME] [SMTPUTF8]`.
    MailFrom {
        /// The reverse path (empty = `<>`).
        from: &'a str,
        /// RFC 1870 `SIZE=`, when the relay offered SIZE.
        size: Option<u64>,
        /// RFC 6152 `BODY=8BITMIME`.
        eight_bit: bool,
        /// RFC 6531 `SMTPUTF8`.
        smtputf8: bool,
    },
    /// `RCPT TO:<addr>`.
    RcptTo(&'a str),
    /// `DATA`.
    Data,
    /// `RSET`.
    Rset,
    /// `QUIT`.
    Quit,
}

/// An argument that cannot be sent: it would end the line or change the command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing to send {field} {value:?}: it contains a byte not allowed in an SMTP command")]
pub struct CommandError {
    /// Which argument.
    pub field: &'static str,
    /// The value, as given.
    pub value: String,
}

fn check(field: &'static str, v: &str, address: bool) -> Result<(), CommandError> {
    let bad = v.bytes().any(|b| {
        b == b'\r' || b == b'\n' || b == 0 || (address && (b == b'<' || b == b'>' || b == b' '))
    });
    if bad {
        Err(CommandError {
            field,
            value: v.to_owned(),
        })
    } else {
        Ok(())
    }
}

impl Command<'_> {
    /// The verb, for diagnoses (`MAIL`, `RCPT`, …).
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Ehlo(_) => "EHLO",
            Command::StartTls => "STARTTLS",
            Command::Auth { .. } | Command::AuthLine(_) => "AUTH",
            Command::MailFrom { .. } => "MAIL",
            Command::RcptTo(_) => "RCPT",
            Command::Data => "DATA",
            Command::Rset => "RSET",
            Command::Quit => "QUIT",
        }
    }

    /// Appends the command and its CRLF to `out`.
    ///
    /// # Errors
    /// [`CommandError`] when an argument holds CR, LF, NUL (or `<`, `>`, space in an
    /// address); nothing is appended then.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CommandError> {
        let mut s = String::new();
        match *self {
            Command::Ehlo(name) => {
                check("EHLO name", name, true)?;
                let _ = write!(s, "EHLO {name}");
            }
            Command::StartTls => s.push_str("STARTTLS"),
            Command::Auth { mechanism, initial } => {
                check("AUTH mechanism", mechanism, true)?;
                let _ = write!(s, "AUTH {mechanism}");
                if let Some(i) = initial {
                    check("AUTH response", i, true)?;
                    let _ = write!(s, " {i}");
                }
            }
            Command::AuthLine(l) => {
                check("AUTH response", l, true)?;
                s.push_str(l);
            }
            Command::MailFrom {
                from,
                size,
                eight_bit,
                smtputf8,
            } => {
                check("MAIL FROM address", from, true)?;
                let _ = write!(s, "MAIL FROM:<{from}>");
                if let Some(n) = size {
                    let _ = write!(s, " SIZE={n}");
                }
                if eight_bit {
                    s.push_str(" BODY=8BITMIME");
                }
                if smtputf8 {
                    s.push_str(" SMTPUTF8");
                }
            }
            Command::RcptTo(to) => {
                check("RCPT TO address", to, true)?;
                let _ = write!(s, "RCPT TO:<{to}>");
            }
            Command::Data => s.push_str("DATA"),
            Command::Rset => s.push_str("RSET"),
            Command::Quit => s.push_str("QUIT"),
        }
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(b"\r\n");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(c: Command<'_>) -> String {
        let mut v = Vec::new();
        c.encode(&mut v).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn wire_forms() {
        assert_eq!(
            enc(Command::MailFrom {
                from: "a@example.com",
                size: Some(62179),
                eight_bit: true,
                smtputf8: true
            }),
            "MAIL FROM:<a@example.com> SIZE=62179 BODY=8BITMIME SMTPUTF8\r\n"
        );
        assert_eq!(
            enc(Command::MailFrom {
                from: "",
                size: None,
                eight_bit: false,
                smtputf8: false
            }),
            "MAIL FROM:<>\r\n"
        );
        assert_eq!(
            enc(Command::RcptTo("-X/tmp/x@example.com")),
            "RCPT TO:<-X/tmp/x@example.com>\r\n"
        );
    }

    #[test]
    fn no_injection() {
        let mut v = Vec::new();
        for bad in ["a@b\r\nRSET", "a@b\n", "a>b", "a b", "a\0b"] {
            assert!(Command::RcptTo(bad).encode(&mut v).is_err(), "{bad:?}");
        }
        assert!(Command::Ehlo("x\r\nQUIT").encode(&mut v).is_err());
        assert!(v.is_empty());
    }
}
