//! One case list, four front ends: every input of the `build` and `model` cases of
//! tests/cases/cases.json is built here (Rust), and by the Python, Node and C suites
//! (bindings/python/tests/test_cases_bytes.py, bindings/node/__test__/cases-bytes.spec.js,
//! qmail-ffi/tests/cases_bytes_c.rs), and each compares with the same expected file in
//! tests/cases/expected/: `ID-N.eml` (the message bytes as spooled) or `ID-N.err`
//! (`Kind field`). So the front ends cannot drift apart.
//!
//! The same normalisation everywhere: a fixed Date and Message-ID are given as headers when the
//! input has none (`Date: Tue, 01 Dec 2026 10:00:00 +0000`, `Message-ID: <ID-N@cases.example>`),
//! and MIME boundaries `=_qm_<24 hex>` become `=_qm_1`, `=_qm_2`, ... in order of appearance.
//! `QMAIL_BLESS=1 cargo test -p qmail-core --test cases_bytes` rewrites the expected files.

mod common;

use std::path::PathBuf;

use serde_json::Value;

fn expected_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/cases/expected")
}

/// The input with the fixed Date and Message-ID of the case runners.
fn fixed(id: &str, n: usize, input: &Value) -> Value {
    let mut i = input.clone();
    let headers = i
        .as_object_mut()
        .unwrap()
        .entry("headers")
        .or_insert_with(|| Value::Object(Default::default()));
    let h = headers.as_object_mut().unwrap();
    let has = |h: &serde_json::Map<String, Value>, name: &str| {
        h.keys().any(|k| k.eq_ignore_ascii_case(name))
    };
    if !has(h, "date") {
        h.insert(
            "Date".into(),
            Value::String("Tue, 01 Dec 2026 10:00:00 +0000".into()),
        );
    }
    if !has(h, "message-id") {
        h.insert(
            "Message-ID".into(),
            Value::String(format!("<{id}-{n}@cases.example>")),
        );
    }
    i
}

/// MIME boundaries numbered in order of appearance.
fn normalise(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let mut seen: Vec<String> = Vec::new();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("=_qm_") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 5..];
        let hex: String = tail.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        if hex.len() == 24 {
            let n = match seen.iter().position(|s| *s == hex) {
                Some(p) => p + 1,
                None => {
                    seen.push(hex.clone());
                    seen.len()
                }
            };
            out.push_str(&format!("=_qm_{n}"));
            rest = &tail[24..];
        } else {
            out.push_str("=_qm_");
            rest = tail;
        }
    }
    out.push_str(rest);
    out.into_bytes()
}

#[test]
fn every_case_input_matches_its_expected_file() {
    let bless = std::env::var_os("QMAIL_BLESS").is_some();
    let dir = expected_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mut checked = 0;
    for case in common::cases()
        .into_iter()
        .filter(|c| c["layer"] == "build" || c["layer"] == "model")
    {
        let id = case["id"].as_str().unwrap();
        for (n, input) in case["inputs"].as_array().unwrap().iter().enumerate() {
            let n = n + 1;
            let (name, got) = match common::build(&fixed(id, n, input)) {
                Ok(m) => (format!("{id}-{n}.eml"), normalise(&m.to_bytes().unwrap())),
                Err(e) => (
                    format!("{id}-{n}.err"),
                    format!("{} {}\n", e.kind(), e.field().unwrap_or("-")).into_bytes(),
                ),
            };
            let path = dir.join(&name);
            let other = dir.join(if name.ends_with(".eml") {
                format!("{id}-{n}.err")
            } else {
                format!("{id}-{n}.eml")
            });
            if bless {
                let _ = std::fs::remove_file(&other);
                std::fs::write(&path, &got).unwrap();
            } else {
                let want = std::fs::read(&path).unwrap_or_else(|_| {
                    panic!("{} missing: run with QMAIL_BLESS=1", path.display())
                });
                assert!(
                    !other.exists(),
                    "{} and {} both exist",
                    name,
                    other.display()
                );
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&want),
                    "{name}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} inputs");
}
