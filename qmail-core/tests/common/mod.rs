//! Helpers shared by qmail-core's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

/// The committed copy of the field cases (tests/cases/cases.json).
pub fn cases() -> Vec<Value> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/cases/cases.json");
    let text = std::fs::read_to_string(&p).expect("tests/cases/cases.json");
    serde_json::from_str::<Vec<Value>>(&text).expect("cases.json parses")
}

pub fn case(id: &str) -> Value {
    cases()
        .into_iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("case {id}"))
}

/// Expands the `"a*1500"` convention of the cases.
pub fn expand(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    // a run is a single char followed by '*' and digits
    while let Some(star) = rest.find('*') {
        let (before, after) = rest.split_at(star);
        let digits: String = after[1..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if digits.is_empty() || before.is_empty() {
            out.push_str(&rest[..star + 1]);
            rest = &rest[star + 1..];
            continue;
        }
        let mut chars: Vec<char> = before.chars().collect();
        let c = chars.pop().unwrap();
        out.extend(chars);
        out.extend(std::iter::repeat_n(c, digits.parse::<usize>().unwrap()));
        rest = &after[1 + digits.len()..];
    }
    out.push_str(rest);
    out
}

/// Builds a qmail message from a case input (the JSON shape of cases.json).
pub fn build(input: &Value) -> qmail_core::Result<qmail_core::Message> {
    let mut b = qmail_core::Message::builder();
    let addr = |v: &Value| -> qmail_core::AddressInput {
        match v {
            Value::String(s) => s.as_str().into(),
            o => qmail_core::AddressInput::Parts(
                o["name"].as_str().map(str::to_owned),
                o["address"].as_str().unwrap_or_default().to_owned(),
            ),
        }
    };
    let list = |v: &Value| -> Vec<Value> {
        match v {
            Value::Array(a) => a.clone(),
            Value::Null => vec![],
            o => vec![o.clone()],
        }
    };
    if !input["from"].is_null() {
        b.set_from(addr(&input["from"]))?;
    }
    for r in list(&input["reply_to"]) {
        b.add_reply_to(addr(&r))?;
    }
    for r in list(&input["to"]) {
        b.add_to(addr(&r))?;
    }
    for r in list(&input["cc"]) {
        b.add_cc(addr(&r))?;
    }
    for r in list(&input["bcc"]) {
        b.add_bcc(addr(&r))?;
    }
    if let Some(s) = input["subject"].as_str() {
        b.set_subject(&expand(s))?;
    }
    if let Some(s) = input["text"].as_str() {
        b.set_text(&expand(s))?;
    }
    if let Some(s) = input["html"].as_str() {
        b.set_html(&expand(s))?;
    }
    if let Some(h) = input["headers"].as_object() {
        for (k, v) in h {
            b.add_header(k, &expand(v.as_str().unwrap_or_default()))?;
        }
    }
    for a in list(&input["attachments"]) {
        let data: Vec<u8> = if let Some(hex) = a["content_hex"].as_str() {
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect()
        } else {
            a["content"]
                .as_str()
                .unwrap_or_default()
                .as_bytes()
                .to_vec()
        };
        b.attach_bytes(data, a["filename"].as_str(), a["content_type"].as_str())?;
    }
    if let Some(p) = input["priority"].as_i64() {
        b.set_priority(qmail_core::Priority::from_number(p)?)?;
    }
    if let Some(list) = input["envelope_to"].as_array() {
        let list: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
        b.set_envelope_to(&list)?;
    }
    if let Some(l) = input["list_unsubscribe"].as_object() {
        b.set_list_unsubscribe(
            l["url"].as_str().unwrap_or_default(),
            l.get("mailto").and_then(Value::as_str),
            l.get("one_click").and_then(Value::as_bool).unwrap_or(true),
        )?;
    }
    b.build()
}

/// The round-trip rules every rendered message obeys: CRLF only, no line over 998 octets.
pub fn assert_wire_clean(bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF at {i}");
        }
        if b == b'\r' {
            assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
    for line in bytes.split(|&b| b == b'\n') {
        assert!(line.len() <= 999, "line of {} octets", line.len() - 1);
    }
    assert!(bytes.ends_with(b"\r\n"), "message does not end in CRLF");
}

/// The header section (up to and including the first empty line).
pub fn header_section(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let end = s.find("\r\n\r\n").expect("header/body separator") + 4;
    s[..end].to_string()
}

/// Every CRLF inside the header section is followed by SP or HTAB, except the final one.
pub fn assert_header_folding(bytes: &[u8]) {
    let h = header_section(bytes);
    let body = &h[..h.len() - 2];
    for (i, _) in body.match_indices("\r\n") {
        let next = body.as_bytes().get(i + 2);
        if let Some(&n) = next {
            // a new field starts with a name; a continuation with WSP
            if n != b' ' && n != b'\t' {
                let line = &body[i + 2..];
                let colon = line.find(':').expect("field has a colon");
                assert!(
                    line[..colon].bytes().all(|b| (33..=126).contains(&b)),
                    "bad field start {line:?}"
                );
            }
        }
    }
}

/// Field names of the header section, in order.
pub fn field_names(bytes: &[u8]) -> Vec<String> {
    let h = header_section(bytes);
    h.split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with([' ', '\t']))
        .map(|l| l.split(':').next().unwrap_or_default().to_string())
        .collect()
}

pub fn parse(bytes: &[u8]) -> mail_parser::Message<'_> {
    mail_parser::MessageParser::default()
        .parse(bytes)
        .expect("mail-parser reads the message")
}
