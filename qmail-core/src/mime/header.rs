//! Header fields: validation of names and values and folding into lines of at most 78
//! characters (RFC 5322 §2.2, §2.2.3).

use super::encoded_word::{self, Context};
use super::{FOLD_AT, MAX_LINE};
use crate::error::{Error, ErrorKind, Result};

/// Checks a field name: printable US-ASCII 33..126 without ':' (RFC 5322 §2.2), not empty.
///
/// # Errors
/// [`ErrorKind::InvalidHeader`].
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::new(ErrorKind::InvalidHeader, "header name is empty"));
    }
    if let Some(b) = name
        .bytes()
        .find(|&b| !(33..=126).contains(&b) || b == b':')
    {
        return Err(Error::new(
            ErrorKind::InvalidHeader,
            format!(
                "header name {name:?} has byte 0x{b:02x}; a field name is printable US-ASCII \
                 33..126 without ':' (RFC 5322 §2.2)"
            ),
        ));
    }
    if name.len() > 76 {
        return Err(Error::new(
            ErrorKind::InvalidHeader,
            "header name is over 76 characters",
        ));
    }
    Ok(())
}

/// Checks an unstructured value given by a caller: no CR, LF, NUL or other control character
/// except HTAB (RFC 5322 §3.2.5 VCHAR / WSP).
///
/// # Errors
/// [`ErrorKind::InvalidHeader`].
pub fn check_value(value: &str) -> Result<()> {
    if let Some(c) = value.chars().find(|&c| c.is_control() && c != '\t') {
        let what = match c {
            '\r' => "CR".to_owned(),
            '\n' => "LF".to_owned(),
            '\0' => "NUL".to_owned(),
            c => format!("{c:?}"),
        };
        return Err(Error::new(
            ErrorKind::InvalidHeader,
            format!("header value contains {what}; header values are one line"),
        ));
    }
    Ok(())
}

/// Folds `name: tokens...` into CRLF-terminated lines. Tokens are joined by `sep` (", " for
/// address lists, " " otherwise); a fold replaces the space of the separator with CRLF SP.
pub fn fold(name: &str, tokens: &[String], sep: &str, out: &mut Vec<u8>) {
    let mut line_len = name.len() + 1;
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    for (i, tok) in tokens.iter().enumerate() {
        let lead = if i == 0 { " " } else { sep };
        // sep is "X " or " ": the part before its last space stays on the current line.
        let keep = &lead[..lead.len() - 1];
        if i > 0 && line_len + lead.len() + tok.len() > FOLD_AT && !tok.is_empty() {
            out.extend_from_slice(keep.as_bytes());
            out.extend_from_slice(b"\r\n ");
            line_len = 1;
        } else {
            out.extend_from_slice(lead.as_bytes());
            line_len += lead.len();
        }
        out.extend_from_slice(tok.as_bytes());
        line_len += tok.len();
    }
    out.extend_from_slice(b"\r\n");
}

/// True when an unstructured value can be written as it is: ASCII, no `=?` (it would be read
/// as an encoded-word), and no word too long to fit a line.
fn plain_ok(name: &str, value: &str) -> bool {
    value.is_ascii()
        && !value.contains("=?")
        && value
            .split(' ')
            .all(|w| w.len() + name.len() + 2 <= MAX_LINE)
        && !value.starts_with([' ', '\t'])
}

/// Writes an unstructured field (Subject, a custom header): folded at spaces when plain, else
/// as RFC 2047 encoded-words folded between words. The value must have passed
/// [`check_value`].
pub fn write_unstructured(name: &str, value: &str, out: &mut Vec<u8>) {
    let tokens: Vec<String> = if plain_ok(name, value) {
        value.split(' ').map(str::to_owned).collect()
    } else {
        encoded_word::encode(value, Context::Text)
    };
    fold(name, &tokens, " ", out);
}

/// Renders a display name as a phrase: as is when it is atoms, as a quoted-string when it is
/// other printable ASCII, as encoded-words (RFC 2047 §5(3)) when it is not ASCII. An
/// encoded-word is never put inside quotes.
pub fn phrase(name: &str) -> Vec<String> {
    // a plain atom: atext only, no "=?", and short enough that no header line outgrows 78
    // characters where avoidable and 998 octets ever (RFC 5322 §2.1.1); longer words and
    // quoted strings are encoded (encoded-words are cut at 75 characters)
    const LONGEST_PLAIN: usize = 60;
    let plain = |w: &str| {
        !w.is_empty()
            && w.len() <= LONGEST_PLAIN
            && w.chars()
                .all(|c| c.is_ascii() && crate::address::is_atext(c))
            && !w.contains("=?")
    };
    if name.split(' ').all(plain) {
        return name.split(' ').map(str::to_owned).collect();
    }
    if name.is_ascii() && name.len() <= LONGEST_PLAIN && !name.contains("=?") {
        let mut q = String::with_capacity(name.len() + 2);
        q.push('"');
        for c in name.chars() {
            if c == '"' || c == '\\' {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        return vec![q];
    }
    // Otherwise: words that are plain atoms stay as they are; each run of words that need
    // encoding becomes encoded-words (the spaces inside a run encoded as '_'). Two encoded-words
    // are then never separated by a real space, which decoders disagree on (RFC 2047 §6.2 says
    // drop it; CPython's policy.default keeps it).
    let mut out = Vec::new();
    let mut run: Vec<&str> = Vec::new();
    for w in name.split(' ') {
        if plain(w) {
            if !run.is_empty() {
                out.extend(encoded_word::encode(&run.join(" "), Context::Phrase));
                run.clear();
            }
            out.push(w.to_owned());
        } else {
            run.push(w);
        }
    }
    if !run.is_empty() {
        out.extend(encoded_word::encode(&run.join(" "), Context::Phrase));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_long_subject() {
        let mut out = Vec::new();
        write_unstructured("Subject", &"word ".repeat(40), &mut out);
        let s = String::from_utf8(out).unwrap();
        for line in s.split("\r\n") {
            assert!(line.len() <= FOLD_AT, "{line}");
        }
        assert_eq!(
            s.replace("\r\n ", " "),
            format!("Subject: {}\r\n", "word ".repeat(40))
        );
    }

    #[test]
    fn names() {
        assert!(check_name("X-Bad Name").is_err());
        assert!(check_name("X-Evil:\r\nBcc").is_err());
        assert!(check_name("X-Good").is_ok());
    }
}
