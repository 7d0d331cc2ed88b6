//! The header block of a message, split into fields (RFC 5322 §2.2), and the domain of its
//! From address (RFC 5322 §3.6.2), which picks the DKIM key.

/// One header field as it appears in the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    /// The field name (before the colon, trailing whitespace removed).
    pub name: &'a [u8],
    /// The whole field: name, colon, value, folding and the final CRLF.
    pub raw: &'a [u8],
}

impl Field<'_> {
    /// The value (after the colon, final CRLF removed, folding kept).
    pub fn value(&self) -> &[u8] {
        let v = self.raw.strip_suffix(b"\r\n").unwrap_or(self.raw);
        match v.iter().position(|&b| b == b':') {
            Some(p) => &v[p + 1..],
            None => &[],
        }
    }
}

/// Splits a header block (every line ending in CRLF, the empty line excluded) into fields. A
/// line that starts with SP or HTAB continues the field before it (folding, RFC 5322 §2.2.3);
/// a line without a colon that starts a field is not a field and is skipped.
pub fn fields(block: &[u8]) -> Vec<Field<'_>> {
    fn push<'a>(raw: &'a [u8], out: &mut Vec<Field<'a>>) {
        if let Some(c) = raw.iter().position(|&b| b == b':') {
            let name = &raw[..c];
            let end = name
                .iter()
                .rposition(|&b| b != b' ' && b != b'\t')
                .map_or(0, |p| p + 1);
            if end > 0 {
                out.push(Field {
                    name: &name[..end],
                    raw,
                });
            }
        }
    }
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < block.len() {
        let Some(p) = block[i..].windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let next = i + p + 2;
        let continues = matches!(block.get(next), Some(b' ' | b'\t'));
        if !continues {
            push(&block[start..next], &mut out);
            start = next;
        }
        i = next;
    }
    if start < block.len() {
        push(&block[start..], &mut out);
    }
    out
}

/// Why the From field gives no domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromProblem {
    /// No From field.
    Missing,
    /// More than one From field (RFC 5322 §3.6 allows one).
    Several,
    /// No `local@domain` address in it.
    NoAddress,
    /// Mailboxes of different domains in one From.
    MixedDomains,
}

impl std::fmt::Display for FromProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FromProblem::Missing => "the message has no From field",
            FromProblem::Several => "the message has more than one From field",
            FromProblem::NoAddress => "the From field holds no address",
            FromProblem::MixedDomains => "the From field holds addresses of different domains",
        })
    }
}

/// The domain of the From field's address(es), lower-cased, as an A-label (IDNA, RFC 5891) so
/// it compares with the configured `domain`.
///
/// Comments and quoted strings are skipped; an `angle-addr` is preferred to the bare words
/// around it; a group's mailboxes count; several mailboxes must share one domain.
///
/// # Errors
/// [`FromProblem`].
pub fn from_domain(fields: &[Field<'_>]) -> Result<String, FromProblem> {
    let mut froms = fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case(b"from"));
    let from = froms.next().ok_or(FromProblem::Missing)?;
    if froms.next().is_some() {
        return Err(FromProblem::Several);
    }
    let value = String::from_utf8_lossy(from.value());
    // remove comments and quoted strings; keep the structure characters
    let mut plain = String::with_capacity(value.len());
    let mut depth = 0u32;
    let mut quoted = false;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted || depth > 0 => {
                chars.next();
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                plain.push(' ');
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if quoted || depth > 0 => {}
            '\r' | '\n' => plain.push(' '),
            c => plain.push(c),
        }
    }
    // a group "name: a@x, b@y;" lists mailboxes after its colon
    let list = match plain.split_once(':') {
        Some((_, rest)) if !plain.contains('<') || plain.find(':') < plain.find('<') => rest,
        _ => &plain[..],
    };
    let mut domain: Option<String> = None;
    for mailbox in list.split([',', ';']) {
        let addr = match (mailbox.rfind('<'), mailbox.rfind('>')) {
            (Some(a), Some(b)) if a < b => &mailbox[a + 1..b],
            _ => mailbox,
        };
        let addr = addr.trim();
        if addr.is_empty() {
            continue;
        }
        let Some((_, d)) = addr.rsplit_once('@') else {
            continue;
        };
        let d = d.trim().trim_end_matches('.');
        if d.is_empty() || d.contains(char::is_whitespace) {
            continue;
        }
        let d = idna::domain_to_ascii(d).unwrap_or_else(|_| d.to_ascii_lowercase());
        match &domain {
            None => domain = Some(d),
            Some(x) if *x == d => {}
            Some(_) => return Err(FromProblem::MixedDomains),
        }
    }
    domain.ok_or(FromProblem::NoAddress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_fields_with_folding() {
        let block =
            b"From: a@example.com\r\nSubject: one\r\n two\r\n\tthree\r\nX-Bad\r\nTo : b@x\r\n";
        let f = fields(block);
        assert_eq!(f.len(), 3);
        assert_eq!(f[1].name, b"Subject");
        assert_eq!(f[1].raw, b"Subject: one\r\n two\r\n\tthree\r\n");
        assert_eq!(f[1].value(), b" one\r\n two\r\n\tthree");
        assert_eq!(f[2].name, b"To");
    }

    fn dom(v: &str) -> Result<String, FromProblem> {
        let block = format!("Subject: x\r\nFrom:{v}\r\n");
        from_domain(&fields(block.as_bytes()))
    }

    #[test]
    fn from_domains() {
        assert_eq!(dom(" a@Example.COM").unwrap(), "example.com");
        assert_eq!(
            dom(" \"Doe, John\" <j@mail.example.org>").unwrap(),
            "mail.example.org"
        );
        assert_eq!(dom(" \"x@evil.test\" <j@good.test>").unwrap(), "good.test");
        assert_eq!(
            dom(" (c@evil.test) j@good.test (comment)").unwrap(),
            "good.test"
        );
        assert_eq!(
            dom(" =?utf-8?q?J=C3=B6rg?=\r\n <j@b\u{fc}cher.example>").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(dom(" a@x.test, b@x.test").unwrap(), "x.test");
        assert_eq!(dom(" team: a@x.test, b@x.test;").unwrap(), "x.test");
        assert_eq!(dom(" a@x.test, b@y.test"), Err(FromProblem::MixedDomains));
        assert_eq!(dom(" nobody"), Err(FromProblem::NoAddress));
        assert_eq!(
            from_domain(&fields(b"To: a@b\r\n")),
            Err(FromProblem::Missing)
        );
        assert_eq!(
            from_domain(&fields(b"From: a@b\r\nFrom: c@d\r\n")),
            Err(FromProblem::Several)
        );
    }
}
