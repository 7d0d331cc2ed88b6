//! The `layer: build` cases of tests/cases/cases.json, with their neighbours. The independent
//! parser is mail-parser (not our code, not lettre).

mod common;

use common::*;
use mail_parser::MimeHeaders;
use qmail_core::{ErrorKind, Message};
use serde_json::{Value, json};

fn inputs(id: &str) -> Vec<Value> {
    case(id)["inputs"].as_array().cloned().unwrap()
}

#[test]
fn q01_crlf_in_reply_to_name_or_address() {
    let ins = inputs("Q-01");
    // input 2: address with CRLF → invalid address naming reply_to
    let e = build(&ins[1]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidAddress);
    assert_eq!(e.field(), Some("reply_to"));
    // input 1: the name with CRLF is refused with an invalid-header error naming reply_to
    let e = build(&ins[0]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidHeader);
    assert_eq!(e.field(), Some("reply_to"));
    // neighbours: every address field, CR alone, LF alone, NUL, in name and address
    let mut clean = ins[0].clone();
    clean["reply_to"] = json!({"name": "Support", "address": "help@example.com"});
    for field in ["from", "to", "cc", "bcc", "reply_to"] {
        for bad in ["\r\n", "\r", "\n", "\0"] {
            let mut inp = clean.clone();
            inp[field] = json!({"name": format!("Sup{bad}port"), "address": "help@example.com"});
            let e = build(&inp).unwrap_err();
            assert_eq!(e.field(), Some(field), "{field} {bad:?}");
            inp[field] = json!({"name": "Support", "address": format!("help@exa{bad}mple.com")});
            let e = build(&inp).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidAddress, "{field} {bad:?}");
            assert_eq!(e.field(), Some(field));
            inp[field] = json!(format!(
                "Support <help@example.com>{bad}Bcc: leak@example.org"
            ));
            assert!(build(&inp).is_err(), "{field} {bad:?} as one string");
        }
    }
    // a clean variant builds: folding is right, no Bcc line, envelope exact
    let mut ok = ins[0].clone();
    ok["reply_to"] = json!({"name": "Support", "address": "help@example.com"});
    ok["bcc"] = json!(["hidden@example.net"]);
    let m = build(&ok).unwrap();
    let bytes = m.to_bytes().unwrap();
    assert_wire_clean(&bytes);
    assert_header_folding(&bytes);
    assert!(
        !field_names(&bytes)
            .iter()
            .any(|n| n.eq_ignore_ascii_case("bcc"))
    );
    assert!(!header_section(&bytes).contains("hidden@example.net"));
    assert_eq!(
        m.envelope().rcpt_to,
        ["customer@example.org", "hidden@example.net"]
    );
    let m = build(&{
        let mut x = ok.clone();
        x["bcc"] = Value::Null;
        x
    })
    .unwrap();
    assert_eq!(m.envelope().rcpt_to, ["customer@example.org"]);
}

#[test]
fn q03_header_newlines_and_bad_names() {
    let ins = inputs("Q-03");
    // input 1: trailing LF in Subject / CRLF in a custom header → refused, naming the field
    let e = build(&ins[0]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidHeader);
    assert_eq!(e.field(), Some("subject"));
    let mut only_header = ins[0].clone();
    only_header["subject"] = json!("Invoice 42");
    let e = build(&only_header).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidHeader);
    assert_eq!(e.field(), Some("headers.X-Campaign"));
    // neighbours: the bad byte at start, middle, end
    for v in ["\nx", "x\ry", "x\0", "\r\n"] {
        let mut i = only_header.clone();
        i["headers"] = json!({ "X-Campaign": v });
        assert_eq!(
            build(&i).unwrap_err().kind(),
            ErrorKind::InvalidHeader,
            "{v:?}"
        );
        let mut i = only_header.clone();
        i["headers"] = json!({});
        i["subject"] = json!(v);
        assert_eq!(build(&i).unwrap_err().field(), Some("subject"), "{v:?}");
    }
    // input 2: a literal encoded-word in the subject is itself encoded; decodes to the input
    let m = build(&ins[1]).unwrap();
    let bytes = m.to_bytes().unwrap();
    assert_wire_clean(&bytes);
    let p = parse(&bytes);
    assert_eq!(p.subject(), Some(ins[1]["subject"].as_str().unwrap()));
    assert!(
        !field_names(&bytes)
            .iter()
            .any(|n| n.eq_ignore_ascii_case("bcc"))
    );
    assert!(!header_section(&bytes).contains("=?UTF-8?Q?=0A?="));
    // inputs 3 and 4: bad field names refused
    for i in [2, 3] {
        let e = build(&ins[i]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidHeader);
        assert!(e.field().unwrap().starts_with("headers."));
    }
    for name in ["", "X:Y", "Ä-Header", "X Y", "X\tY", "X\u{7f}"] {
        let mut i = only_header.clone();
        i["headers"] = json!({ name: "v" });
        assert_eq!(
            build(&i).unwrap_err().kind(),
            ErrorKind::InvalidHeader,
            "{name:?}"
        );
    }
    // fields with their own setter are refused as custom headers
    for name in [
        "Bcc",
        "To",
        "From",
        "Subject",
        "Content-Type",
        "MIME-Version",
    ] {
        let mut i = only_header.clone();
        i["headers"] = json!({ name: "x@example.com" });
        assert_eq!(
            build(&i).unwrap_err().kind(),
            ErrorKind::InvalidHeader,
            "{name}"
        );
    }
}

#[test]
fn q08_long_lines() {
    let ins = inputs("Q-08");
    let m = build(&ins[0]).unwrap();
    let bytes = m.to_bytes().unwrap();
    assert_wire_clean(&bytes);
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.contains("Content-Transfer-Encoding: 7bit"),
        "long lines must not be 7bit"
    );
    // every body line at most 76 characters
    let body = &text[header_section(&bytes).len()..];
    for l in body.split("\r\n") {
        assert!(
            l.len() <= 76 || l.starts_with("Content-") || l.starts_with(' '),
            "{} chars",
            l.len()
        );
    }
    let p = parse(&bytes);
    assert_eq!(p.body_text(0).unwrap().trim_end(), expand("b*2000"));
    let html = p.body_html(0).unwrap();
    assert!(html.contains(&format!("https://example.com/t?u={}\"", "a".repeat(1500))));
    // X-Trace written as encoded-word chunks that decode to the input
    // (mail-parser leaves unknown fields raw: decode the Q encoded-words by hand)
    let raw = p.header_raw("X-Trace").unwrap();
    let decoded: String = raw
        .split_whitespace()
        .map(|w| {
            w.strip_prefix("=?utf-8?q?")
                .and_then(|w| w.strip_suffix("?="))
                .expect("encoded-word")
        })
        .collect();
    assert_eq!(decoded, "c".repeat(1200));
}

#[test]
fn q09_non_ascii_display_names() {
    let ins = inputs("Q-09");
    let m = build(&ins[0]).unwrap();
    let bytes = m.to_bytes().unwrap();
    assert_wire_clean(&bytes);
    assert_header_folding(&bytes);
    let head = header_section(&bytes);
    assert!(head.is_ascii(), "header not 7-bit");
    // never an encoded-word inside quotes
    for part in head.split('"').skip(1).step_by(2) {
        assert!(!part.contains("=?"), "encoded-word inside quotes: {part}");
    }
    let p = parse(&bytes);
    let from = p.from().unwrap().first().unwrap();
    assert_eq!(from.name.as_deref(), Some("Dupont, Élodie"));
    assert_eq!(from.address.as_deref(), Some("elodie@example.com"));
    let to: Vec<_> = p.to().unwrap().iter().collect();
    assert_eq!(to.len(), 1);
    assert_eq!(to[0].name.as_deref(), Some("Şmith, John"));
    let cc: Vec<_> = p.cc().unwrap().iter().collect();
    assert_eq!(cc.len(), 2);
    assert_eq!(cc[0].name.as_deref(), Some("José \"Pepe\" Núñez"));
    assert_eq!(cc[0].address.as_deref(), Some("pepe@example.org"));
    assert_eq!(
        cc[1].name.as_deref(),
        Some("Département Formation, Recherche et Support très long nom d’équipe")
    );
    assert_eq!(cc[1].address.as_deref(), Some("team@example.org"));
    // ASCII names with specials are quoted, not encoded
    let m = Message::builder()
        .from(("Shop, Inc. \"Best\"", "a@example.com"))
        .to("b@example.org")
        .build()
        .unwrap();
    let bytes = m.to_bytes().unwrap();
    assert!(header_section(&bytes).contains("From: \"Shop, Inc. \\\"Best\\\"\" <a@example.com>"));
    let p = parse(&bytes);
    assert_eq!(
        p.from().unwrap().first().unwrap().name.as_deref(),
        Some("Shop, Inc. \"Best\"")
    );
}

#[test]
fn q10_non_ascii_file_names() {
    let ins = inputs("Q-10");
    let m = build(&ins[0]).unwrap();
    let bytes = m.to_bytes().unwrap();
    assert_wire_clean(&bytes);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("filename*=utf-8''T%C3%B6%C3%B6%C3%B6st.pdf"));
    assert!(
        text.contains("filename=plain-ascii.txt") || text.contains("filename=\"plain-ascii.txt\"")
    );
    for l in text
        .split("\r\n")
        .filter(|l| l.starts_with("Content-Disposition"))
    {
        assert!(l.starts_with("Content-Disposition: attachment;"), "{l}");
    }
    assert!(
        !text.contains("filename*=utf-8''filename"),
        "parameter name encoded"
    );
    let p = parse(&bytes);
    let names: Vec<String> = p
        .attachments()
        .map(|a| a.attachment_name().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "Töööst.pdf",
            "отчёт 2024.pdf",
            "résumé; \"final\".pdf",
            "plain-ascii.txt"
        ]
    );
    let contents: Vec<Vec<u8>> = p.attachments().map(|a| a.contents().to_vec()).collect();
    assert_eq!(contents[0], b"%PDF-1.4");
    assert_eq!(contents[3], b"abc");
}

#[test]
fn q14_date_and_message_id_once() {
    let ins = inputs("Q-14");
    let m = build(&ins[0]).unwrap();
    let bytes = m.to_bytes().unwrap();
    let names = field_names(&bytes);
    for f in ["Date", "From", "Message-ID"] {
        assert_eq!(
            names.iter().filter(|n| n.eq_ignore_ascii_case(f)).count(),
            1,
            "{f}"
        );
    }
    let id = m.message_id();
    assert!(
        id.starts_with('<')
            && id.ends_with('>')
            && id.contains('@')
            && !id.contains(char::is_whitespace)
    );
    assert!(chrono::DateTime::parse_from_rfc2822(m.date()).is_ok());
    // unique over 10,000 builds; rendering twice gives the same Date and Message-ID
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10_000 {
        assert!(seen.insert(build(&ins[0]).unwrap().message_id().to_owned()));
    }
    assert_eq!(
        header_section(&m.to_bytes().unwrap())[..60],
        header_section(&bytes)[..60]
    );
    // input 2: the caller's values are used, once
    let m = build(&ins[1]).unwrap();
    let bytes = m.to_bytes().unwrap();
    let head = header_section(&bytes);
    assert_eq!(
        head.matches("Message-ID: <fixed-1@example.com>\r\n")
            .count(),
        1
    );
    assert_eq!(
        head.matches("Date: Tue, 01 Jul 2025 10:00:00 +0000\r\n")
            .count(),
        1
    );
    assert_eq!(
        field_names(&bytes)
            .iter()
            .filter(|n| n.eq_ignore_ascii_case("date"))
            .count(),
        1
    );
    // malformed caller values refused
    for (k, v) in [
        ("Message-ID", "fixed-1@example.com"),
        ("Message-ID", "<a b@c>"),
        ("Date", "yesterday"),
    ] {
        let mut i = ins[0].clone();
        i["headers"] = json!({ k: v });
        assert_eq!(
            build(&i).unwrap_err().kind(),
            ErrorKind::InvalidHeader,
            "{k}: {v}"
        );
    }
}

#[test]
fn q15_html_with_and_without_text() {
    let ins = inputs("Q-15");
    // input 1: documented choice: a single text/html part
    let bytes = build(&ins[0]).unwrap().to_bytes().unwrap();
    let head = header_section(&bytes);
    assert!(head.contains("Content-Type: text/html; charset=utf-8"));
    assert!(!head.contains("multipart"));
    // input 2: multipart/alternative, text first, html last, both with charset
    let bytes = build(&ins[1]).unwrap().to_bytes().unwrap();
    assert_wire_clean(&bytes);
    let text = String::from_utf8_lossy(&bytes);
    assert!(header_section(&bytes).contains("multipart/alternative"));
    let tp = text
        .find("Content-Type: text/plain; charset=utf-8")
        .unwrap();
    let hp = text.find("Content-Type: text/html; charset=utf-8").unwrap();
    assert!(tp < hp);
    let p = parse(&bytes);
    assert_eq!(p.body_text(0).unwrap().trim_end(), "Job 42 finished.");
    assert!(p.body_html(0).unwrap().contains("<b>42</b>"));
}

#[test]
fn structure_related_and_mixed() {
    let m = Message::builder()
        .from("a@example.com")
        .to("b@example.org")
        .text("plain")
        .html("<img src=\"cid:logo@x\">")
        .inline_data(b"PNGDATA".to_vec(), "logo@x", Some("image/png"))
        .attach_data(b"abc".to_vec(), Some("a.txt"), None)
        .build()
        .unwrap();
    let bytes = m.to_bytes().unwrap();
    assert_wire_clean(&bytes);
    let t = String::from_utf8_lossy(&bytes);
    let mixed = t.find("multipart/mixed").unwrap();
    let related = t.find("multipart/related").unwrap();
    let alt = t.find("multipart/alternative").unwrap();
    assert!(mixed < related && related < alt);
    assert!(t.contains("type=\"multipart/alternative\""));
    assert!(t.contains("Content-ID: <logo@x>"));
    let p = parse(&bytes);
    assert_eq!(p.attachments().count(), 2);
    // a cid: reference without its inline part is an error naming html
    let e = Message::builder()
        .from("a@example.com")
        .to("b@example.org")
        .html("<img src=\"cid:nope\">")
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidMessage);
    assert_eq!(e.field(), Some("html"));
    // no From, no recipient
    assert_eq!(
        Message::builder()
            .to("b@example.org")
            .build()
            .unwrap_err()
            .field(),
        Some("from")
    );
    assert_eq!(
        Message::builder()
            .from("a@example.com")
            .build()
            .unwrap_err()
            .field(),
        Some("to")
    );
}

#[test]
fn bcc_only_gets_undisclosed_recipients() {
    let m = Message::builder()
        .from("a@example.com")
        .bcc("c@example.com")
        .bcc("d@example.com")
        .text("x")
        .build()
        .unwrap();
    let bytes = m.to_bytes().unwrap();
    let head = header_section(&bytes);
    assert!(head.contains("To: undisclosed-recipients:;\r\n"));
    // (the Message-ID's random part may end in hex 'c' or 'd' before "@example.com")
    let without_id: String = head
        .split("\r\n")
        .filter(|l| !l.starts_with("Message-ID:"))
        .collect();
    assert!(!without_id.contains("c@example.com") && !without_id.contains("d@example.com"));
    assert_eq!(m.envelope().rcpt_to, ["c@example.com", "d@example.com"]);
}

#[test]
fn priority_receipt_envelope_from_idna() {
    let m = Message::builder()
        .from("Ünïcode <a@bücher.example>")
        .to("josé@example.org")
        .priority(qmail_core::Priority::Highest)
        .read_receipt_to("a@example.com")
        .envelope_from("<>")
        .text("x")
        .build()
        .unwrap();
    let bytes = m.to_bytes().unwrap();
    let head = header_section(&bytes);
    assert!(head.contains("X-Priority: 1 (Highest)\r\nImportance: high\r\n"));
    assert!(head.contains("Disposition-Notification-To: a@example.com\r\n"));
    assert!(head.contains("@xn--bcher-kva.example>"));
    assert_eq!(m.envelope().mail_from, "");
    assert!(m.envelope().smtputf8, "non-ASCII local part flags SMTPUTF8");
}
