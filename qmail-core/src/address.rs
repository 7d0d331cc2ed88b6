//! Addresses: `Mailbox` (optional display name + address) and `EmailAddress` (the addr-spec).
//!
//! Parsing is strict. An addr-spec is `local-part "@" domain` where the local part is a
//! dot-atom or a quoted-string (RFC 5322 §3.4.1, RFC 5321 §4.1.2) of at most 64 octets and the
//! domain a host name of LDH labels (at most 255 octets, RFC 5321 §4.5.3.1) or an address
//! literal `[...]`. A non-ASCII domain is converted to IDNA A-labels (UTS #46); a non-ASCII local
//! part is accepted and flags the address (and so the message) as needing SMTPUTF8 (RFC 6531).
//! Anything else (CR, LF, NUL, unbalanced quotes or brackets, a stray `<`) is refused with an
//! [`ErrorKind::InvalidAddress`] error; nothing is ever partly accepted.

use crate::error::{Error, ErrorKind, Result};
use std::fmt;

/// RFC 5321 §4.5.3.1.1: maximum local-part length, in octets.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 §4.5.3.1.2: maximum domain length, in octets.
pub const MAX_DOMAIN: usize = 255;

/// A validated addr-spec: `local@domain`, with the domain in A-label (ASCII) form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress {
    local: String,
    domain: String,
}

impl EmailAddress {
    /// Parses an addr-spec such as `user@example.com`, `"john doe"@example.com` or
    /// `josé@bücher.example` (domain converted to `xn--bcher-kva.example`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidAddress`] naming what is wrong.
    pub fn parse(s: &str) -> Result<Self> {
        reject_controls(s)?;
        let s = s.trim_matches([' ', '\t']);
        if s.is_empty() {
            return Err(invalid("address is empty"));
        }
        let at = s
            .rfind('@')
            .ok_or_else(|| invalid(format!("'{s}' has no '@'")))?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        check_local_part(local)?;
        let domain = normalise_domain(domain)?;
        Ok(EmailAddress {
            local: local.to_owned(),
            domain,
        })
    }

    /// The local part, as given (may be a quoted-string, may be UTF-8).
    pub fn local_part(&self) -> &str {
        &self.local
    }

    /// The domain in ASCII (A-label) form, or an address literal `[...]`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// True when the local part is not ASCII: RFC 6531 SMTPUTF8 is needed to send it.
    pub fn needs_smtputf8(&self) -> bool {
        !self.local.is_ascii()
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// An address with an optional display name: `Name <user@example.com>` or `user@example.com`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    name: Option<String>,
    address: EmailAddress,
}

impl Mailbox {
    /// A mailbox from a display name (raw text, any Unicode; quoting and RFC 2047 encoding are
    /// done when rendering) and an addr-spec.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidHeader`] when the name holds CR, LF, NUL or another control character
    /// (it would end the header); [`ErrorKind::InvalidAddress`] for the address.
    pub fn new(name: Option<&str>, address: &str) -> Result<Self> {
        let name = match name {
            Some(n) => {
                check_display_name(n)?;
                let n = n.trim();
                if n.is_empty() {
                    None
                } else {
                    Some(n.to_owned())
                }
            }
            None => None,
        };
        Ok(Mailbox {
            name,
            address: EmailAddress::parse(address)?,
        })
    }

    /// Parses `Name <user@example.com>`, `"Last, First" <user@example.com>`, `<user@example.com>`
    /// or a bare `user@example.com`. An unquoted name may hold only atext, spaces and '.'
    /// (RFC 5322 §3.2.5); a name with ',' or other specials must be quoted.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidAddress`] for a malformed mailbox; [`ErrorKind::InvalidHeader`] for
    /// control characters in the name.
    pub fn parse(s: &str) -> Result<Self> {
        reject_controls(s)?;
        let t = s.trim_matches([' ', '\t']);
        if !t.ends_with('>') {
            if t.contains(['<', '>']) {
                return Err(invalid(format!("'{t}' has unbalanced '<' or '>'")));
            }
            return Mailbox::new(None, t);
        }
        let open = t
            .rfind('<')
            .ok_or_else(|| invalid(format!("'{t}' has '>' without '<'")))?;
        let addr = &t[open + 1..t.len() - 1];
        if addr.contains(['<', '>']) {
            return Err(invalid(format!("'{t}' has nested '<' or '>'")));
        }
        let phrase = t[..open].trim_matches([' ', '\t']);
        let name = parse_phrase(phrase)?;
        Mailbox::new(name.as_deref(), addr)
    }

    /// The display name, unencoded, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The address.
    pub fn address(&self) -> &EmailAddress {
        &self.address
    }
}

impl Mailbox {
    /// Parses an address list given as one string (`"a@example.com, B <b@example.org>"`, an
    /// RFC 5322 §3.4 address-list; groups are flattened): split at the top-level commas, then
    /// every member parsed as strictly as [`Mailbox::parse`].
    ///
    /// # Errors
    /// As [`Mailbox::parse`] for the first bad member (the message names it);
    /// [`ErrorKind::InvalidAddress`] when the list holds no mailbox.
    pub fn parse_list(s: &str) -> Result<Vec<Mailbox>> {
        reject_controls(s)?;
        let members = split_list(s);
        if members.is_empty() {
            return Err(invalid(format!("'{}' holds no address", s.trim())));
        }
        let many = members.len() > 1;
        members
            .iter()
            .map(|m| {
                Mailbox::parse(m).map_err(|e| {
                    if !many {
                        return e;
                    }
                    // `Dupont, Elodie <e@example.com>`: one mailbox whose display name needs
                    // quoting, not a list; say that rather than "'Dupont' has no '@'"
                    match Mailbox::parse(s) {
                        Err(whole) if whole.message().starts_with("display name") => whole,
                        _ => Error::new(e.kind(), format!("list member '{m}': {}", e.message())),
                    }
                })
            })
            .collect()
    }
}

impl Mailbox {
    /// Parses text that must hold exactly one mailbox (From, an SMTP envelope address): as
    /// [`Mailbox::parse_list`], then a list of several is refused with a clear message (not
    /// "local part has '@'").
    ///
    /// # Errors
    /// As [`Mailbox::parse_list`]; [`ErrorKind::InvalidAddress`] for more than one mailbox.
    pub fn parse_one(s: &str) -> Result<Mailbox> {
        if let Ok(m) = Mailbox::parse(s) {
            return Ok(m);
        }
        let mut list = Mailbox::parse_list(s)?;
        if list.len() != 1 {
            return Err(invalid(format!(
                "takes one mailbox; {:?} holds {} (give each address separately)",
                s.trim(),
                list.len()
            )));
        }
        Ok(list.remove(0))
    }
}

impl std::str::FromStr for Mailbox {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Mailbox::parse(s)
    }
}

impl fmt::Display for Mailbox {
    /// Human form, unencoded (not for headers: rendering does the encoding).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n} <{}>", self.address),
            None => write!(f, "{}", self.address),
        }
    }
}

/// The MAIL FROM reverse-path (RFC 5321 §4.1.1.2): an address, or the null path `<>` used for
/// bounces and DSNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`: no bounce goes back.
    Null,
    /// A return address.
    Address(EmailAddress),
}

impl ReversePath {
    /// Parses `<>` (or an empty string) as the null path, anything else as an addr-spec
    /// (with or without angle brackets).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidAddress`].
    pub fn parse(s: &str) -> Result<Self> {
        reject_controls(s)?;
        let t = s.trim_matches([' ', '\t']);
        if t.is_empty() || t == "<>" {
            return Ok(ReversePath::Null);
        }
        let inner = t
            .strip_prefix('<')
            .and_then(|x| x.strip_suffix('>'))
            .unwrap_or(t);
        Ok(ReversePath::Address(EmailAddress::parse(inner)?))
    }

    /// The path as stored in the envelope: `""` for `<>`, else `local@domain`.
    pub fn as_envelope(&self) -> String {
        match self {
            ReversePath::Null => String::new(),
            ReversePath::Address(a) => a.to_string(),
        }
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidAddress, msg)
}

/// Splits an address-list value (RFC 5322 §3.4) at top-level commas and semicolons (outside
/// quotes, comments, angle brackets and address literals); comments and group display names are
/// dropped, empty members skipped.
pub(crate) fn split_list(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut depth, mut angle, mut esc) = (false, 0i32, false, false);
    let mut literal = false;
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
            '[' if !quoted => {
                literal = true;
                cur.push(c);
            }
            ']' if !quoted => {
                literal = false;
                cur.push(c);
            }
            ',' | ';' if !quoted && !angle && !literal => out.push(std::mem::take(&mut cur)),
            ':' if !quoted && !angle && !literal => cur.clear(), // group display name
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn reject_controls(s: &str) -> Result<()> {
    if let Some(c) = s.chars().find(|c| matches!(c, '\r' | '\n' | '\0')) {
        return Err(invalid(format!("contains a forbidden character {:?}", c)));
    }
    Ok(())
}

fn check_display_name(n: &str) -> Result<()> {
    if let Some(c) = n.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(Error::new(
            ErrorKind::InvalidHeader,
            format!("display name contains the control character {c:?}"),
        ));
    }
    Ok(())
}

/// RFC 5322 §3.2.3 atext.
pub(crate) fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn parse_phrase(p: &str) -> Result<Option<String>> {
    if p.is_empty() {
        return Ok(None);
    }
    if let Some(inner) = p.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .ok_or_else(|| invalid(format!("display name {p} has an unterminated quote")))?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(
                    chars
                        .next()
                        .ok_or_else(|| invalid("display name ends in a lone backslash"))?,
                ),
                '"' => return Err(invalid(format!("display name {p} has an unescaped quote"))),
                c => out.push(c),
            }
        }
        return Ok(Some(out));
    }
    if let Some(c) = p
        .chars()
        .find(|&c| !(is_atext(c) || c == ' ' || c == '\t' || c == '.'))
    {
        return Err(invalid(format!(
            "display name '{p}' has '{c}': quote it or pass the name separately"
        )));
    }
    Ok(Some(p.to_owned()))
}

fn check_local_part(local: &str) -> Result<()> {
    if local.is_empty() {
        return Err(invalid("local part is empty"));
    }
    if local.len() > MAX_LOCAL_PART {
        return Err(invalid(format!(
            "local part is {} octets; at most {MAX_LOCAL_PART} (RFC 5321 §4.5.3.1.1)",
            local.len()
        )));
    }
    if let Some(q) = local.strip_prefix('"') {
        // quoted-string: qtext or quoted-pair, printable ASCII (or UTF-8 with SMTPUTF8).
        let body = q
            .strip_suffix('"')
            .ok_or_else(|| invalid("unterminated quoted local part"))?;
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(n) if (' '..='~').contains(&n) => {}
                    _ => return Err(invalid("bad quoted-pair in local part")),
                },
                '"' => return Err(invalid("unescaped '\"' in quoted local part")),
                c if c.is_control() => return Err(invalid("control character in local part")),
                _ => {}
            }
        }
        return Ok(());
    }
    for atom in local.split('.') {
        if atom.is_empty() {
            return Err(invalid(format!(
                "local part '{local}' has an empty dot-atom part"
            )));
        }
        if let Some(c) = atom.chars().find(|&c| !is_atext(c)) {
            return Err(invalid(format!("local part '{local}' has '{c}'; quote it")));
        }
    }
    Ok(())
}

fn normalise_domain(domain: &str) -> Result<String> {
    if domain.is_empty() {
        return Err(invalid("domain is empty"));
    }
    if domain.starts_with('[') {
        let inner = domain
            .strip_prefix('[')
            .and_then(|d| d.strip_suffix(']'))
            .ok_or_else(|| invalid(format!("address literal '{domain}' is unterminated")))?;
        let ok = if let Some(v6) = inner.strip_prefix("IPv6:") {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            inner.parse::<std::net::Ipv4Addr>().is_ok()
        };
        if !ok {
            return Err(invalid(format!(
                "address literal '{domain}' is not an IP address"
            )));
        }
        return Ok(domain.to_owned());
    }
    let ascii = if domain.is_ascii() {
        domain.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(domain)
            .map_err(|_| invalid(format!("domain '{domain}' cannot be converted to IDNA")))?
    };
    if ascii.len() > MAX_DOMAIN {
        return Err(invalid(format!(
            "domain is longer than {MAX_DOMAIN} octets"
        )));
    }
    for label in ascii.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(invalid(format!(
                "domain '{domain}' has an invalid label '{label}'"
            )));
        }
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        let m = Mailbox::parse("Shop <noreply@example.com>").unwrap();
        assert_eq!(m.name(), Some("Shop"));
        assert_eq!(m.address().to_string(), "noreply@example.com");
        let m = Mailbox::parse("\"Dupont, Élodie\" <e@example.com>").unwrap();
        assert_eq!(m.name(), Some("Dupont, Élodie"));
        let m = Mailbox::parse("<e@example.com>").unwrap();
        assert_eq!(m.name(), None);
        let m = Mailbox::parse("-X/tmp/q04.log@example.com").unwrap();
        assert_eq!(m.address().local_part(), "-X/tmp/q04.log");
    }

    #[test]
    fn idna_and_smtputf8() {
        let a = EmailAddress::parse("user@bücher.example").unwrap();
        assert_eq!(a.domain(), "xn--bcher-kva.example");
        assert!(!a.needs_smtputf8());
        let a = EmailAddress::parse("josé@example.com").unwrap();
        assert!(a.needs_smtputf8());
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "a",
            "a@",
            "@b.com",
            "a..b@c.com",
            ".a@c.com",
            "a b@c.com",
            "a@b..com",
            "a@-b.com",
            "a@b.com>",
            "<a@b.com",
            "Name <a@b.com> x",
            "help@example.com\r\nBcc: leak@example.org",
            "a@b.com\n",
            "Shop, Inc <a@b.com>",
            "a@[1.2.3]",
            "\"unterminated@b.com",
        ] {
            assert!(Mailbox::parse(bad).is_err(), "accepted {bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(65));
        assert!(EmailAddress::parse(&long).is_err());
    }

    #[test]
    fn null_reverse_path() {
        assert_eq!(ReversePath::parse("<>").unwrap(), ReversePath::Null);
        assert_eq!(ReversePath::parse("").unwrap(), ReversePath::Null);
        assert!(matches!(
            ReversePath::parse("<b@example.com>").unwrap(),
            ReversePath::Address(_)
        ));
    }
}
