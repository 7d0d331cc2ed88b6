//! Property tests of the SMTP reply parser (`qmail_dispatch::smtp::reply::parse`): total on
//! any bytes, exact on well-formed replies, incomplete on every proper prefix.

use proptest::prelude::*;
use qmail_dispatch::smtp::reply::{MAX_LINE, parse};

fn code() -> impl Strategy<Value = u16> {
    (2u16..=5, 0u16..=5, 0u16..=9).prop_map(|(a, b, c)| a * 100 + b * 10 + c)
}

/// Reply text: printable, no CR/LF, not starting like an enhanced code.
fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z <>@:=_-][ -~]{0,60}".prop_map(|s| s)
}

fn encode(code: u16, lines: &[String]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { " " } else { "-" };
        if l.is_empty() && i + 1 == lines.len() {
            v.extend_from_slice(format!("{code}\r\n").as_bytes());
        } else {
            v.extend_from_slice(format!("{code}{sep}{l}\r\n").as_bytes());
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn total_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(Some((r, n))) = parse(&bytes) {
            prop_assert!(n <= bytes.len());
            prop_assert!((200..600).contains(&r.code));
            prop_assert_eq!(bytes[n - 1], b'\n');
        }
    }

    #[test]
    fn well_formed_round_trip(
        c in code(),
        lines in proptest::collection::vec(prop_oneof![text(), Just(String::new())], 1..8),
        tail in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let wire = encode(c, &lines);
        let mut buf = wire.clone();
        buf.extend_from_slice(&tail);
        let (r, n) = parse(&buf).unwrap().unwrap();
        prop_assert_eq!(n, wire.len());
        prop_assert_eq!(r.code, c);
        prop_assert_eq!(r.enhanced, None);
        prop_assert_eq!(&r.lines, &lines);
        // every proper prefix is incomplete, never garbage
        for cut in 0..wire.len() {
            prop_assert_eq!(parse(&wire[..cut]), Ok(None), "cut {}", cut);
        }
    }

    #[test]
    fn enhanced_code_kept_apart(
        c in code(),
        sub in 0u16..1000,
        det in 0u16..1000,
        t in text(),
    ) {
        let class = c / 100;
        prop_assume!(class != 3);
        let wire = format!("{c} {class}.{sub}.{det} {t}\r\n");
        let (r, _) = parse(wire.as_bytes()).unwrap().unwrap();
        let e = r.enhanced.unwrap();
        prop_assert_eq!((u16::from(e.class), e.subject, e.detail), (class, sub, det));
        prop_assert_eq!(r.text(), t);
    }

    #[test]
    fn bounded(n in MAX_LINE..MAX_LINE * 3) {
        let long = format!("250 {}", "x".repeat(n));
        prop_assert!(parse(long.as_bytes()).is_err());
    }
}
