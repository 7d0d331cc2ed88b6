//! The SMTP envelope (RFC 5321 §2.3.1): what MAIL FROM and RCPT TO carry, apart from the
//! message's headers. Bcc recipients live only here.

use serde::{Deserialize, Serialize};

/// MAIL FROM, RCPT TO and the extensions the message needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The reverse-path without angle brackets; `""` is the null path `<>`.
    pub mail_from: String,
    /// The forward-paths without angle brackets, in order, without duplicates.
    pub rcpt_to: Vec<String>,
    /// RFC 6531: an address or header needs SMTPUTF8.
    pub smtputf8: bool,
    /// RFC 6152: the content has 8-bit bytes (messages we render never do).
    pub eightbitmime: bool,
}

/// Forward-paths in order, without duplicates (compared ASCII-case-insensitively, as mail
/// systems treat domains; a local part differing only in case is taken as the same mailbox).
/// Linear in the number of recipients.
pub(crate) fn unique_recipients(addrs: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    addrs
        .into_iter()
        .filter(|a| seen.insert(a.to_ascii_lowercase()))
        .collect()
}

impl Envelope {
    /// Checks every address for what must never reach an SMTP command: CR, LF, NUL, '<', '>',
    /// and unquoted spaces (RFC 5321 §4.1.2). The dispatcher runs this on every spool file it
    /// reads, whoever wrote it.
    ///
    /// # Errors
    /// A description of the first bad address.
    pub fn check_wire_safe(&self) -> Result<(), String> {
        fn bad(a: &str) -> Option<String> {
            if let Some(c) = a
                .chars()
                .find(|c| matches!(c, '\r' | '\n' | '\0' | '<' | '>'))
            {
                return Some(format!("{c:?}"));
            }
            let mut quoted = false;
            let mut prev = '\0';
            for c in a.chars() {
                if c == '"' && prev != '\\' {
                    quoted = !quoted;
                }
                if (c == ' ' || c == '\t' || c.is_control()) && !quoted {
                    return Some(format!("unquoted {c:?}"));
                }
                prev = c;
            }
            None
        }
        if let Some(c) = bad(&self.mail_from) {
            return Err(format!("envelope sender {:?} contains {c}", self.mail_from));
        }
        if self.rcpt_to.is_empty() {
            return Err("the envelope has no recipient".into());
        }
        for r in &self.rcpt_to {
            if r.is_empty() || !r.contains('@') {
                return Err(format!("envelope recipient {r:?} is not an address"));
            }
            if let Some(c) = bad(r) {
                return Err(format!("envelope recipient {r:?} contains {c}"));
            }
        }
        Ok(())
    }
}
