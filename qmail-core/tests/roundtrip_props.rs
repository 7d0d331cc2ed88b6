//! Property: any valid message renders to bytes that an independent parser (mail-parser) reads
//! back to the same fields and byte-identical attachments, with no bare CR or LF and no line
//! over 998 octets.

mod common;

use common::*;
use mail_parser::MimeHeaders;
use proptest::prelude::*;
use qmail_core::Message;

fn words() -> impl Strategy<Value = String> {
    // words of printable Unicode (no controls, no whitespace), single spaces between
    proptest::collection::vec("[\\PC&&[^\\s]]{1,12}", 1..8).prop_map(|w| w.join(" "))
}

fn name() -> impl Strategy<Value = String> {
    proptest::collection::vec("[\\PC&&[^\\s\\\\]]{1,10}", 1..4).prop_map(|w| w.join(" "))
}

fn lf(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn renders_and_parses_back(
        subject in words(),
        from_name in name(),
        to_name in name(),
        text in "[\\PC\\n\\r\\t ]{0,400}",
        attachments in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..3000), "[\\PC&&[^\\s/\\\\]]{1,20}\\.bin"), 0..3),
    ) {
        let mut b = Message::builder();
        b.set_from((from_name.as_str(), "sender@example.com")).unwrap();
        b.add_to((to_name.as_str(), "rcpt@example.org")).unwrap();
        b.set_subject(&subject).unwrap();
        b.set_text(&text).unwrap();
        for (data, fname) in &attachments {
            b.attach_bytes(data.clone(), Some(fname), Some("application/octet-stream")).unwrap();
        }
        let m = b.build().unwrap();
        let bytes = m.to_bytes().unwrap();
        assert_wire_clean(&bytes);
        assert_header_folding(&bytes);
        let p = parse(&bytes);
        prop_assert_eq!(p.subject(), Some(subject.as_str()));
        let f = p.from().unwrap().first().unwrap();
        prop_assert_eq!(f.name.as_deref(), Some(from_name.as_str()));
        prop_assert_eq!(f.address.as_deref(), Some("sender@example.com"));
        let t = p.to().unwrap().first().unwrap();
        prop_assert_eq!(t.name.as_deref(), Some(to_name.as_str()));
        let body = p.body_text(0).map(|b| lf(&b)).unwrap_or_default();
        let want = lf(&text);
        prop_assert!(body == want || body == format!("{want}\n"), "body {:?} != {:?}", body, want);
        let got: Vec<(Vec<u8>, String)> = p
            .attachments()
            .map(|a| (a.contents().to_vec(), a.attachment_name().unwrap_or_default().to_owned()))
            .collect();
        prop_assert_eq!(got.len(), attachments.len());
        for ((gd, gn), (wd, wn)) in got.iter().zip(&attachments) {
            prop_assert_eq!(gd, wd);
            prop_assert_eq!(gn, wn);
        }
    }
}
