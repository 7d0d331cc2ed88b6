//! One case list, four front ends, the C one (see qmail-core/tests/cases_bytes.rs): every input
//! of the `build` and `model` cases of tests/cases/cases.json goes through the C API (the
//! `script` program of tests/c/, one call per line) and gives exactly the expected file of
//! tests/cases/expected/: the spooled bytes (boundaries numbered) or `Kind field`.
//!
//! The C API has no envelope-recipient override: `envelope_to` of a case (which changes no
//! byte of the message) is not sent; everything else is.
//!
//! Needs the C programs (`QMAIL_C_TESTS`, set by scripts/test.d/30-c.sh): `#[ignore]`d
//! otherwise, as c_programs.rs.

#[path = "../../qmail-core/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use qmail_core::SpoolFile;
use serde_json::Value;

fn esc(s: &str) -> String {
    let mut o = String::new();
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '\r' => o.push_str("\\r"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '-' if s == "-" => o.push_str("\\x2d"),
            c if (c as u32) < 0x20 || c == '\x7f' => o.push_str(&format!("\\x{:02x}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

fn unesc(s: &str) -> String {
    let mut o = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            o.push(c);
            continue;
        }
        match it.next() {
            Some('r') => o.push('\r'),
            Some('n') => o.push('\n'),
            Some('t') => o.push('\t'),
            Some('x') => {
                let h: String = it.by_ref().take(2).collect();
                o.push(u8::from_str_radix(&h, 16).unwrap() as char);
            }
            Some(c) => o.push(c),
            None => {}
        }
    }
    o
}

fn list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Null => vec![],
        o => vec![o.clone()],
    }
}

/// script.c commands for one input (display names apart: the `_named` setters).
fn commands(id: &str, n: usize, input: &Value, spool: &Path) -> Vec<String> {
    let mut c = vec![
        "new".to_owned(),
        format!("spool\t{}", esc(&spool.display().to_string())),
    ];
    let address = |cmd: &str, a: &Value| match a {
        Value::Object(o) => format!(
            "{cmd}_named\t{}\t{}",
            o.get("name")
                .and_then(Value::as_str)
                .map_or("-".to_owned(), esc),
            esc(o.get("address").and_then(Value::as_str).unwrap_or_default())
        ),
        v => format!("{cmd}\t{}", esc(v.as_str().unwrap_or_default())),
    };
    if !input["from"].is_null() {
        c.push(address("from", &input["from"]));
    }
    for field in ["reply_to", "to", "cc", "bcc"] {
        for a in list(&input[field]) {
            c.push(address(field, &a));
        }
    }
    for field in ["subject", "text", "html"] {
        if let Some(s) = input[field].as_str() {
            c.push(format!("{field}\t{}", esc(&common::expand(s))));
        }
    }
    let headers = input["headers"].as_object().cloned().unwrap_or_default();
    for (k, v) in &headers {
        c.push(format!(
            "header\t{}\t{}",
            esc(k),
            esc(&common::expand(v.as_str().unwrap_or_default()))
        ));
    }
    let has = |name: &str| headers.keys().any(|k| k.eq_ignore_ascii_case(name));
    if !has("date") {
        c.push("header\tDate\tTue, 01 Dec 2026 10:00:00 +0000".into());
    }
    if !has("message-id") {
        c.push(format!("header\tMessage-ID\t<{id}-{n}@cases.example>"));
    }
    for a in list(&input["attachments"]) {
        let hex = match a["content_hex"].as_str() {
            Some(h) => h.to_owned(),
            None => a["content"]
                .as_str()
                .unwrap_or_default()
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect(),
        };
        let opt = |v: &Value| v.as_str().map_or("-".to_owned(), esc);
        c.push(format!(
            "attach_bytes\t{hex}\t{}\t{}",
            opt(&a["filename"]),
            opt(&a["content_type"])
        ));
    }
    if let Some(p) = input["priority"].as_i64() {
        c.push(format!("priority\t{p}"));
    }
    if let Some(l) = input["list_unsubscribe"].as_object() {
        c.push(format!(
            "list_unsubscribe\t{}\t{}\t{}",
            esc(l["url"].as_str().unwrap_or_default()),
            l.get("mailto")
                .and_then(Value::as_str)
                .map_or("-".to_owned(), esc),
            i32::from(l.get("one_click").and_then(Value::as_bool).unwrap_or(true))
        ));
    }
    c.push("submit".to_owned());
    c
}

fn normalise(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let mut seen: Vec<String> = Vec::new();
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("=_qm_") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 5..];
        let hex: String = tail.chars().take_while(char::is_ascii_hexdigit).collect();
        if hex.len() == 24 {
            if !seen.contains(&hex) {
                seen.push(hex.clone());
            }
            let k = seen.iter().position(|s| *s == hex).unwrap() + 1;
            out.push_str(&format!("=_qm_{k}"));
            rest = &tail[24..];
        } else {
            out.push_str("=_qm_");
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

#[test]
#[ignore = "needs the C programs: run scripts/test.d/30-c.sh"]
fn every_case_input_through_c_matches_its_expected_file() {
    let base = PathBuf::from(
        std::env::var_os("QMAIL_C_TESTS").expect("QMAIL_C_TESTS: run scripts/test.d/30-c.sh"),
    );
    let expected = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/cases/expected");
    let tmp = tempfile::tempdir().unwrap();
    let mut script = String::new();
    let mut plan = Vec::new();
    for case in common::cases()
        .into_iter()
        .filter(|c| c["layer"] == "build" || c["layer"] == "model")
    {
        let id = case["id"].as_str().unwrap().to_owned();
        for (i, input) in case["inputs"].as_array().unwrap().iter().enumerate() {
            let cmds = commands(&id, i + 1, input, tmp.path());
            plan.push((id.clone(), i + 1, cmds.len()));
            for c in cmds {
                script.push_str(&c);
                script.push('\n');
            }
        }
    }
    let mut child = Command::new(base.join("dynamic/script"))
        .env_remove("QMAIL_SPOOL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let mut checked = 0;
    for (id, n, len) in plan {
        let answers: Vec<&str> = lines.by_ref().take(len).collect();
        assert_eq!(answers.len(), len, "script.c answered too few lines");
        let (name, got) = match answers.iter().find(|a| a.starts_with("ERR ")) {
            Some(err) => {
                let head = err.split_once('\t').unwrap().0;
                let w: Vec<&str> = head.splitn(4, ' ').collect();
                (
                    format!("{id}-{n}.err"),
                    format!("{} {}\n", w[2], unesc(w[3])),
                )
            }
            None => {
                let qid = answers[len - 1].strip_prefix("OK ").unwrap();
                let f = SpoolFile::open(&tmp.path().join("ready").join(qid)).unwrap();
                (format!("{id}-{n}.eml"), normalise(&f.read_body().unwrap()))
            }
        };
        let path = expected.join(&name);
        let want = std::fs::read(&path)
            .unwrap_or_else(|_| panic!("{name} missing: the Rust run has the other outcome"));
        assert_eq!(got, String::from_utf8_lossy(&want), "{name}");
        checked += 1;
    }
    assert!(checked >= 20);
}
