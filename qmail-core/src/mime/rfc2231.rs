//! MIME parameter values (RFC 2045 §5.1, RFC 2231).
//!
//! A value made of token characters is written bare; other printable ASCII as a quoted-string;
//! anything else with RFC 2231 extended notation `name*=utf-8''%XX...`, cut into continuations
//! `name*0*=`, `name*1*=` ... (§3, §4) so no line grows past 78 characters. The parameter name
//! itself is never encoded.

/// RFC 2045 §5.1 tspecials.
fn is_token(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b)
}

/// RFC 2231 §7 attribute-char.
fn is_attr_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b)
}

/// Renders `name=value` as one or more `; `-separated parameter strings (already split into
/// continuations), ready to be folded one per line.
pub fn encode_param(name: &str, value: &str) -> Vec<String> {
    if !value.is_empty() && value.len() < 60 && value.bytes().all(is_token) {
        return vec![format!("{name}={value}")];
    }
    if value.is_ascii()
        && value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
        && value.len() < 60
    {
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
        return vec![format!("{name}=\"{escaped}\"")];
    }
    let mut pct = String::new();
    let mut pieces = Vec::new();
    for c in value.chars() {
        let mut buf = [0u8; 4];
        let mut enc = String::new();
        for &b in c.encode_utf8(&mut buf).as_bytes() {
            if is_attr_char(b) {
                enc.push(b as char);
            } else {
                enc.push_str(&format!("%{b:02X}"));
            }
        }
        // keep each continuation short enough for one folded line
        if pct.len() + enc.len() > 60 && !pct.is_empty() {
            pieces.push(std::mem::take(&mut pct));
        }
        pct.push_str(&enc);
    }
    pieces.push(pct);
    if pieces.len() == 1 {
        return vec![format!("{name}*=utf-8''{}", pieces[0])];
    }
    pieces
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if i == 0 {
                format!("{name}*0*=utf-8''{p}")
            } else {
                format!("{name}*{i}*={p}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            encode_param("filename", "plain-ascii.txt"),
            vec!["filename=plain-ascii.txt"]
        );
        assert_eq!(
            encode_param("filename", "a b.txt"),
            vec!["filename=\"a b.txt\""]
        );
        assert_eq!(
            encode_param("filename", "Töööst.pdf"),
            vec!["filename*=utf-8''T%C3%B6%C3%B6%C3%B6st.pdf"]
        );
        let long = encode_param("filename", &"ü".repeat(40));
        assert!(long.len() > 1 && long[0].starts_with("filename*0*=utf-8''"));
        assert!(long[1].starts_with("filename*1*="));
    }
}
