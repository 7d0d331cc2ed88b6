//! One-click unsubscribe: the `List-Unsubscribe` field (RFC 2369 §3.2) and its one-click
//! companion `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
//!
//! The field is a comma-separated list of URIs, each in angle brackets. RFC 8058 §3.1: a
//! one-click message carries exactly one HTTPS URI (where the mailbox provider POSTs
//! `List-Unsubscribe=One-Click`) and may carry a `mailto:` URI too; a plain HTTP URI is not
//! enough. [`ListUnsubscribe::new`] checks this once for every front end: the builder
//! ([`crate::MessageBuilder::set_list_unsubscribe`]), a `List-Unsubscribe` header given as a
//! custom header, and raw messages ([`crate::RawMessage::parse`]).

use crate::address::EmailAddress;
use crate::error::{Error, ErrorKind, Result};

/// The longest URI accepted, in octets: with `List-Unsubscribe: <` and `>` it stays well inside
/// the 998-octet line limit of RFC 5322 §2.1.1 (a URI is never folded).
pub const MAX_URI: usize = 900;

/// The value of `List-Unsubscribe-Post` (RFC 8058 §3.1).
pub const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

/// A checked `List-Unsubscribe` (and, with `one_click`, `List-Unsubscribe-Post`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListUnsubscribe {
    uris: Vec<String>,
    one_click: bool,
}

fn bad(field: &'static str, msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, msg).with_field(field)
}

/// An `https:` or `http:` URI: scheme, `//`, a host, printable ASCII without space, `<`, `>`,
/// `"` or `,` (RFC 3986 §2; a comma would split the RFC 2369 list).
fn check_web(field: &'static str, url: &str) -> Result<()> {
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or_else(|| {
            bad(
                field,
                format!("{url:?} is not an https:// (or http://) URI"),
            )
        })?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') || host.contains('@') {
        return Err(bad(field, format!("{url:?} has no host (RFC 3986 §3.2)")));
    }
    check_chars(field, url)
}

fn check_chars(field: &'static str, uri: &str) -> Result<()> {
    if uri.len() > MAX_URI {
        return Err(bad(
            field,
            format!("the URI is {} octets; at most {MAX_URI}", uri.len()),
        ));
    }
    if let Some(c) = uri
        .chars()
        .find(|&c| !c.is_ascii_graphic() || matches!(c, '<' | '>' | '"' | ','))
    {
        return Err(bad(
            field,
            format!(
                "the URI has {c:?}; a URI is printable ASCII without space, '<', '>', '\"' or ',' \
                 (percent-encode it, RFC 3986 §2.1)"
            ),
        ));
    }
    Ok(())
}

/// `mailto:addr[?query]` (RFC 6068), or a bare address which gets the `mailto:` scheme.
fn mailto_uri(field: &'static str, m: &str) -> Result<String> {
    let m = m.trim();
    let uri = if m.len() >= 7 && m[..7].eq_ignore_ascii_case("mailto:") {
        m.to_owned()
    } else {
        format!("mailto:{m}")
    };
    check_chars(field, &uri)?;
    let addr = uri[7..].split('?').next().unwrap_or_default();
    let addr = percent_decoded(addr);
    EmailAddress::parse(&addr).map_err(|e| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("{uri:?}: {}", e.message()),
        )
        .with_field(field)
    })?;
    Ok(uri)
}

fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && s.is_char_boundary(i + 3)
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl ListUnsubscribe {
    /// `url`: the https URI (http only without `one_click`); `mailto`: an optional
    /// `mailto:` URI or bare address; `one_click`: also write `List-Unsubscribe-Post`
    /// (RFC 8058), which requires `url` to be `https://`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming `list_unsubscribe.url` or
    /// `list_unsubscribe.mailto`.
    pub fn new(url: &str, mailto: Option<&str>, one_click: bool) -> Result<ListUnsubscribe> {
        let url = url.trim();
        check_web("list_unsubscribe.url", url)?;
        if one_click && !url.to_ascii_lowercase().starts_with("https://") {
            return Err(bad(
                "list_unsubscribe.url",
                format!(
                    "one-click unsubscribe needs an https:// URI (RFC 8058 §3.1), not {url:?}; \
                     pass one_click=false for a plain List-Unsubscribe"
                ),
            ));
        }
        let mut uris = vec![url.to_owned()];
        if let Some(m) = mailto {
            uris.push(mailto_uri("list_unsubscribe.mailto", m)?);
        }
        Ok(ListUnsubscribe { uris, one_click })
    }

    /// Parses a `List-Unsubscribe` value `<uri>, <uri>` (RFC 2369 §2: each URI in angle
    /// brackets, comments allowed between them) given as a custom header or found in a raw
    /// message; `one_click` says whether `List-Unsubscribe-Post` is present.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming `field` for a value that is not a list of
    /// bracketed http(s)/mailto URIs, or a one-click list without an https URI.
    pub fn parse_value(
        value: &str,
        one_click: bool,
        field: &'static str,
    ) -> Result<ListUnsubscribe> {
        let mut uris = Vec::new();
        for member in value.split(',') {
            let member = strip_comments(member);
            let member = member.trim();
            if member.is_empty() {
                continue;
            }
            let uri = member
                .strip_prefix('<')
                .and_then(|m| m.strip_suffix('>'))
                .ok_or_else(|| {
                    bad(
                        field,
                        format!("{member:?} is not a URI in angle brackets (RFC 2369 §2)"),
                    )
                })?;
            if uri.len() >= 7 && uri[..7].eq_ignore_ascii_case("mailto:") {
                uris.push(mailto_uri(field, uri)?);
            } else {
                check_web(field, uri)?;
                uris.push(uri.to_owned());
            }
        }
        if uris.is_empty() {
            return Err(bad(field, "List-Unsubscribe holds no URI"));
        }
        let list = ListUnsubscribe { uris, one_click };
        if one_click && list.https().is_none() {
            return Err(bad(
                field,
                "List-Unsubscribe-Post (one-click) needs an https:// URI in List-Unsubscribe \
                 (RFC 8058 §3.1)",
            ));
        }
        Ok(list)
    }

    /// The URIs, in order (the web one first when built with [`ListUnsubscribe::new`]).
    pub fn uris(&self) -> &[String] {
        &self.uris
    }

    /// Whether `List-Unsubscribe-Post: List-Unsubscribe=One-Click` is written.
    pub fn one_click(&self) -> bool {
        self.one_click
    }

    /// The first https URI, if any.
    pub fn https(&self) -> Option<&str> {
        self.uris
            .iter()
            .find(|u| u.to_ascii_lowercase().starts_with("https://"))
            .map(String::as_str)
    }

    /// Writes the field(s), CRLF-terminated, folded between URIs (never inside one).
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let toks: Vec<String> = self.uris.iter().map(|u| format!("<{u}>")).collect();
        crate::mime::header::fold("List-Unsubscribe", &toks, ", ", out);
        if self.one_click {
            out.extend_from_slice(format!("List-Unsubscribe-Post: {ONE_CLICK}\r\n").as_bytes());
        }
    }
}

fn strip_comments(s: &str) -> String {
    let mut depth = 0u32;
    s.chars()
        .filter(|&c| match c {
            '(' => {
                depth += 1;
                false
            }
            ')' if depth > 0 => {
                depth -= 1;
                false
            }
            _ => depth == 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_click_needs_https() {
        let l =
            ListUnsubscribe::new("https://example.com/u/1", Some("u@example.com"), true).unwrap();
        assert_eq!(
            l.uris(),
            ["https://example.com/u/1", "mailto:u@example.com"]
        );
        let e = ListUnsubscribe::new("http://example.com/u", None, true).unwrap_err();
        assert_eq!(e.field(), Some("list_unsubscribe.url"));
        assert!(ListUnsubscribe::new("http://example.com/u", None, false).is_ok());
        for bad in [
            "ftp://x/",
            "https://",
            "https://x/a b",
            "https://x/<",
            "https://x/,y",
            "javascript:alert(1)",
        ] {
            assert!(ListUnsubscribe::new(bad, None, false).is_err(), "{bad}");
        }
        let e =
            ListUnsubscribe::new("https://x/", Some("mailto:not an address"), true).unwrap_err();
        assert_eq!(e.field(), Some("list_unsubscribe.mailto"));
    }

    #[test]
    fn parses_values() {
        let l = ListUnsubscribe::parse_value(
            "<mailto:u@example.com?subject=unsub> (mail), <https://example.com/u>",
            true,
            "headers.List-Unsubscribe",
        )
        .unwrap();
        assert_eq!(l.https(), Some("https://example.com/u"));
        assert!(ListUnsubscribe::parse_value("https://x/", false, "f").is_err());
        assert!(ListUnsubscribe::parse_value("<mailto:u@example.com>", true, "f").is_err());
    }
}
