//! RFC 2047 encoded-words.
//!
//! Text is cut into encoded-words of at most 75 characters (§2) without ever splitting a UTF-8
//! character (§5 rule 3: "each encoded-word MUST represent an integral number of characters").
//! Adjacent encoded-words are separated by folding whitespace, which a decoder drops (§6.2).
//! The Q form (§4.2) is used; in a phrase (display names) only the characters of §5(3) stay
//! literal, so ',' '"' '(' ')' '<' '>' '@' ';' ':' are always encoded.

/// Where the encoded-words will stand; decides which characters may stay literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// An unstructured field such as Subject (RFC 2047 §5(1)).
    Text,
    /// A display name inside an address (RFC 2047 §5(3)).
    Phrase,
}

const PREFIX: &str = "=?utf-8?q?";
const SUFFIX: &str = "?=";
/// RFC 2047 §2: an encoded-word is at most 75 characters.
pub const MAX_WORD: usize = 75;

fn literal(b: u8, ctx: Context) -> bool {
    match ctx {
        Context::Phrase => b.is_ascii_alphanumeric() || b"!*+-/".contains(&b),
        Context::Text => b.is_ascii_graphic() && !b"=?_\"(),.:;<>@[\\]".contains(&b),
    }
}

fn encode_char(c: char, ctx: Context, out: &mut String) {
    let mut buf = [0u8; 4];
    for &b in c.encode_utf8(&mut buf).as_bytes() {
        if b == b' ' {
            out.push('_');
        } else if literal(b, ctx) {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
}

/// Encodes `text` as a list of encoded-words, each at most [`MAX_WORD`] characters, to be
/// joined by a space or by folding whitespace.
pub fn encode(text: &str, ctx: Context) -> Vec<String> {
    let budget = MAX_WORD - PREFIX.len() - SUFFIX.len();
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut piece = String::new();
    for c in text.chars() {
        piece.clear();
        encode_char(c, ctx, &mut piece);
        if cur.len() + piece.len() > budget && !cur.is_empty() {
            words.push(format!("{PREFIX}{cur}{SUFFIX}"));
            cur.clear();
        }
        cur.push_str(&piece);
    }
    if !cur.is_empty() || words.is_empty() {
        words.push(format!("{PREFIX}{cur}{SUFFIX}"));
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_splits_a_character_and_stays_short() {
        let words = encode(&"é".repeat(100), Context::Phrase);
        for w in &words {
            assert!(w.len() <= MAX_WORD);
            // each word holds whole two-byte characters: an even number of =XX groups
            assert_eq!(w.matches('=').count() % 2, 0, "{w}");
        }
    }

    #[test]
    fn phrase_encodes_specials() {
        let w = encode("Dupont, \"É\"", Context::Phrase).join(" ");
        assert!(!w.contains(',') && !w[1..w.len() - 1].contains('"'), "{w}");
    }
}
