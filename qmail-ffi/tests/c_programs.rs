//! Drives the C test programs of `tests/c/` and checks what they spooled.
//!
//! The programs are built by `scripts/test.d/30-c.sh` (through `tests/c/Makefile`, against
//! the library `scripts/build-c` made), each linked dynamically and statically. These tests
//! run them against temporary spools, then read every spool file back through qmail-core
//! (`SpoolFile`) and an independent MIME parser (mail-parser).
//!
//! Environment (set by 30-c.sh):
//! - `QMAIL_C_TESTS`: the directory holding `dynamic/` and `static/` (required);
//! - `QMAIL_C_LINKS`: which of those to run, default `dynamic,static`;
//! - `QMAIL_C_WRAPPER`: a command prefix, e.g. valgrind with its options.
//!
//! Marked `#[ignore]` so that a plain `cargo test` (which has not built the C programs) skips
//! them; 30-c.sh runs them with `--include-ignored`.

#[path = "../../qmail-core/tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mail_parser::{MimeHeaders, PartType};
use qmail_core::{QueueState, SpoolFile};
use serde_json::Value;

/// The built programs of one link kind.
struct Programs {
    link: String,
    dir: PathBuf,
}

fn programs() -> Vec<Programs> {
    let base = PathBuf::from(
        std::env::var_os("QMAIL_C_TESTS").expect("QMAIL_C_TESTS: run scripts/test.d/30-c.sh"),
    );
    let links = std::env::var("QMAIL_C_LINKS").unwrap_or_else(|_| "dynamic,static".into());
    links
        .split(',')
        .filter(|l| !l.is_empty())
        .map(|l| Programs {
            link: l.to_owned(),
            dir: base.join(l),
        })
        .collect()
}

/// Runs a program (through `QMAIL_C_WRAPPER`), without `QMAIL_SPOOL`; it must exit 0. Returns
/// its stdout.
fn run(prog: &Path, args: &[&Path], stdin: Option<&str>) -> String {
    let wrapper = std::env::var("QMAIL_C_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut cmd = match words.next() {
        Some(w) => {
            let mut c = Command::new(w);
            c.args(words).arg(prog);
            c
        }
        None => Command::new(prog),
    };
    cmd.args(args)
        .env_remove("QMAIL_SPOOL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", prog.display()));
    let input = stdin.unwrap_or("").to_owned();
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\n{stderr}\n{stdout}",
        prog.display(),
        out.status
    );
    stdout
}

/// The committed spool file of a queue id (in ready/ or scheduled/) and its state.
fn spooled(spool: &Path, id: &str) -> (SpoolFile, QueueState, Vec<u8>) {
    for state in [QueueState::Ready, QueueState::Scheduled] {
        let p = spool.join(state.dir_name()).join(id);
        if p.exists() {
            let f = SpoolFile::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let body = f.read_body().unwrap();
            common::assert_wire_clean(&body);
            common::assert_header_folding(&body);
            return (f, state, body);
        }
    }
    panic!("{id} is not in {}/ready or scheduled", spool.display());
}

/// Files in each state directory of a spool (missing directories count as empty).
fn census(spool: &Path) -> BTreeMap<&'static str, usize> {
    QueueState::ALL
        .iter()
        .map(|s| {
            let n = std::fs::read_dir(spool.join(s.dir_name()))
                .map(|d| d.count())
                .unwrap_or(0);
            (s.dir_name(), n)
        })
        .collect()
}

/// `PREFIX name id` lines of a program's output.
fn tagged<'a>(stdout: &'a str, prefix: &str) -> Vec<(&'a str, &'a str)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(prefix)?.strip_prefix(' ')?.split_once(' '))
        .collect()
}

fn names(a: Option<&mail_parser::Address<'_>>) -> Vec<(Option<String>, String)> {
    a.map(|a| {
        a.iter()
            .map(|x| {
                (
                    x.name().map(str::to_owned),
                    x.address().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    })
    .unwrap_or_default()
}

fn header_names(body: &[u8]) -> Vec<String> {
    common::field_names(body)
        .into_iter()
        .map(|n| n.to_ascii_lowercase())
        .collect()
}

#[test]
#[ignore = "needs the C programs: run scripts/test.d/30-c.sh"]
fn every_shape_is_spooled_as_built() {
    for p in programs() {
        let tmp = tempfile::tempdir().unwrap();
        let (spool, work) = (tmp.path().join("spool"), tmp.path().join("work"));
        std::fs::create_dir(&work).unwrap();
        let out = run(&p.dir.join("shapes"), &[&spool, &work], None);
        let shapes: BTreeMap<&str, &str> = tagged(&out, "SHAPE").into_iter().collect();
        let expected = [
            "minimal",
            "alternative",
            "html_only",
            "addresses",
            "named",
            "headers_priority",
            "null_sender",
            "scheduled",
            "attachments",
            "inline",
            "unicode",
            "long_text",
            "resubmit_1",
            "resubmit_2",
            "default_spool",
        ];
        assert_eq!(
            shapes.keys().copied().collect::<HashSet<_>>(),
            expected.into_iter().collect(),
            "{}: {out}",
            p.link
        );
        let c = census(&spool);
        // every SHAPE, plus the one submitted without asking for its id
        assert_eq!(
            c["ready"] + c["scheduled"],
            shapes.len() + 1,
            "{}: {c:?}",
            p.link
        );
        assert_eq!(c["tmp"], 0);
        assert!(out.contains(&format!("VERSION {}", qmail_core::VERSION)));

        for (&shape, &id) in &shapes {
            let (file, state, body) = spooled(&spool, id);
            let h = &file.header;
            let m = common::parse(&body);
            let ctx = format!("{} {shape}", p.link);
            assert_eq!(
                state == QueueState::Scheduled,
                shape == "scheduled",
                "{ctx}"
            );
            let fields = header_names(&body);
            assert!(!fields.contains(&"bcc".to_owned()), "{ctx}: a Bcc field");
            for once in ["date", "message-id", "from", "mime-version"] {
                assert_eq!(
                    fields.iter().filter(|f| *f == once).count(),
                    1,
                    "{ctx}: {once}"
                );
            }
            assert_eq!(
                m.message_id().map(|i| format!("<{i}>")),
                Some(h.message_id.clone()),
                "{ctx}"
            );
            match shape {
                "minimal" => {
                    assert_eq!(h.envelope.mail_from, "noreply@example.com");
                    assert_eq!(h.envelope.rcpt_to, ["customer@example.org"]);
                    assert_eq!(
                        names(m.from()),
                        [(Some("Shop".into()), "noreply@example.com".into())]
                    );
                    assert_eq!(
                        names(m.to()),
                        [(Some("Customer".into()), "customer@example.org".into())]
                    );
                    assert_eq!(m.subject(), Some("Your order"));
                    assert_eq!(m.body_text(0).unwrap().trim_end(), "Thanks!\r\nLine two.");
                    assert_eq!(h.priority, 3);
                }
                "alternative" => {
                    let root = m.root_part();
                    assert_eq!(
                        root.content_type().map(|c| c.subtype()),
                        Some(Some("alternative")),
                        "{ctx}"
                    );
                    assert_eq!(m.body_text(0).unwrap().trim_end(), "Job 42 finished.");
                    assert_eq!(
                        m.body_html(0).unwrap().trim_end(),
                        "<p>Job <b>42</b> finished.</p>"
                    );
                }
                "html_only" => {
                    assert!(m.body_html(0).unwrap().contains("<b>42</b>"));
                    assert!(
                        m.body_text(0).unwrap().contains("Job 42 finished."),
                        "{ctx}"
                    );
                }
                "addresses" => {
                    assert_eq!(
                        names(m.from()),
                        [(Some("Dupont, Élodie".into()), "elodie@example.com".into())]
                    );
                    assert_eq!(names(m.sender()), [(None, "robot@example.com".into())]);
                    assert_eq!(
                        names(m.reply_to()),
                        [
                            (Some("Support".into()), "help@example.com".into()),
                            (None, "sales@example.com".into())
                        ]
                    );
                    assert_eq!(
                        names(m.to()),
                        [
                            (None, "a@example.org".into()),
                            (Some("B Person".into()), "b@example.org".into())
                        ]
                    );
                    assert_eq!(names(m.cc()), [(None, "c@example.org".into())]);
                    assert_eq!(
                        h.envelope.mail_from, "robot@example.com",
                        "Sender is the default MAIL FROM"
                    );
                    assert_eq!(
                        h.envelope.rcpt_to,
                        [
                            "a@example.org",
                            "b@example.org",
                            "c@example.org",
                            "hidden@example.net"
                        ]
                    );
                    assert!(
                        !String::from_utf8_lossy(&body).contains("hidden@example.net"),
                        "{ctx}: Bcc leaked"
                    );
                }
                "named" => {
                    assert_eq!(
                        names(m.from()),
                        [(Some("Dupont, Élodie".into()), "elodie@example.com".into())]
                    );
                    assert_eq!(names(m.sender()), [(None, "robot@example.com".into())]);
                    assert_eq!(
                        names(m.reply_to()),
                        [(Some("Support \"24/7\"".into()), "help@example.com".into())]
                    );
                    assert_eq!(
                        names(m.to()),
                        [(Some("Şmith, John".into()), "smith@example.org".into())]
                    );
                    assert_eq!(names(m.cc()), [(None, "plain@example.org".into())]);
                    assert_eq!(
                        h.envelope.rcpt_to,
                        [
                            "smith@example.org",
                            "plain@example.org",
                            "hidden@example.net"
                        ]
                    );
                    let head = common::header_section(&body);
                    assert!(
                        !head.contains("Hidden") && !head.contains("hidden@"),
                        "{ctx}: Bcc leaked"
                    );
                    assert_eq!(
                        m.header_raw("Disposition-Notification-To").map(str::trim),
                        Some("receipts@example.com"),
                        "{ctx}: RFC 8098"
                    );
                }
                "headers_priority" => {
                    assert_eq!(m.header_raw("X-Campaign").map(str::trim), Some("spring"));
                    assert_eq!(h.message_id, "<fixed-1@example.com>");
                    assert_eq!(
                        m.header_raw("Date").map(str::trim),
                        Some("Tue, 01 Jul 2025 10:00:00 +0000")
                    );
                    assert_eq!(
                        m.header_raw("X-Priority")
                            .map(|v| v.trim().starts_with('1')),
                        Some(true),
                        "{ctx}"
                    );
                    assert_eq!(h.priority, 1);
                }
                "null_sender" => {
                    assert_eq!(h.envelope.mail_from, "");
                    // qmail_message_add_envelope_to: the header recipients stay in To only
                    assert_eq!(
                        h.envelope.rcpt_to,
                        ["list@example.net", "other@example.net"],
                        "{ctx}"
                    );
                }
                "scheduled" => {
                    let nb = h.not_before.expect("not_before");
                    assert!(nb > h.created + 3000, "{ctx}: {nb} vs {}", h.created);
                }
                "attachments" => {
                    let atts: Vec<_> = m.attachments().collect();
                    assert_eq!(atts.len(), 4, "{ctx}");
                    let summary: Vec<(Option<&str>, String, &[u8])> = atts
                        .iter()
                        .map(|a| {
                            let ct = a.content_type().unwrap();
                            (
                                a.attachment_name(),
                                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")),
                                a.contents(),
                            )
                        })
                        .collect();
                    assert_eq!(
                        summary[0],
                        (
                            Some("invoice.pdf"),
                            "application/pdf".into(),
                            &b"%PDF-1.4\n"[..]
                        )
                    );
                    assert_eq!(
                        summary[1],
                        (Some("Töööst.txt"), "text/plain".into(), &b"hello notes"[..])
                    );
                    assert_eq!(
                        summary[2],
                        (
                            Some("data.bin"),
                            "application/octet-stream".into(),
                            &[0x00, 0x01, 0xff, 0x00, b'Q', b'\r', b'\n', 0x80][..]
                        )
                    );
                    assert_eq!(summary[3].0, Some("empty.txt"));
                    assert!(summary[3].2.is_empty());
                    assert!(
                        String::from_utf8_lossy(&body)
                            .contains("filename*=utf-8''T%C3%B6%C3%B6%C3%B6st.txt"),
                        "{ctx}: RFC 2231"
                    );
                }
                "inline" => {
                    let root = m.root_part();
                    assert_eq!(
                        root.content_type().and_then(|c| c.subtype()),
                        Some("related"),
                        "{ctx}: RFC 2387"
                    );
                    let parts: Vec<_> = m
                        .parts
                        .iter()
                        .filter(|p| p.content_id().is_some())
                        .collect();
                    let mut cids: Vec<_> = parts
                        .iter()
                        .map(|p| p.content_id().unwrap().to_owned())
                        .collect();
                    cids.sort();
                    assert_eq!(cids, ["logo@example.com", "sig"], "{ctx}");
                    for part in parts {
                        assert_eq!(
                            part.contents(),
                            &[0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'][..]
                        );
                        assert_eq!(part.content_type().and_then(|c| c.subtype()), Some("png"));
                    }
                }
                "unicode" => {
                    assert_eq!(m.subject(), Some("Grüße aus Köln – 東京"));
                    assert_eq!(
                        names(m.cc()),
                        [(Some("Jürgen".into()), "jurgen@xn--bcher-kva.example".into())]
                    );
                    assert!(
                        h.envelope
                            .rcpt_to
                            .contains(&"jurgen@xn--bcher-kva.example".to_owned())
                    );
                    assert_eq!(m.body_text(0).unwrap().trim_end(), "Grüße, €100");
                    assert!(
                        common::header_section(&body).is_ascii(),
                        "{ctx}: 8-bit header"
                    );
                }
                "long_text" => {
                    let text = m.body_text(0).unwrap();
                    let expected = format!("{}\r\n{}", "b".repeat(2000), "c".repeat(2048));
                    assert_eq!(text.trim_end(), expected, "{ctx}");
                    let part = m.text_part(0).unwrap();
                    let cte = part
                        .content_transfer_encoding()
                        .unwrap_or("7bit")
                        .to_ascii_lowercase();
                    assert!(cte == "quoted-printable" || cte == "base64", "{ctx}: {cte}");
                }
                "resubmit_1" | "resubmit_2" => assert_eq!(m.subject(), Some("twice")),
                "default_spool" => {
                    assert_eq!(h.envelope.rcpt_to, ["only-bcc@example.org"]);
                    assert!(
                        names(m.to()).iter().all(|(_, a)| a.is_empty()),
                        "{ctx}: To names an address"
                    );
                    assert!(
                        !String::from_utf8_lossy(&body).contains("only-bcc@"),
                        "{ctx}: Bcc leaked"
                    );
                }
                other => panic!("unexpected shape {other}"),
            }
        }
        let (a, _, _) = spooled(&spool, shapes["resubmit_1"]);
        let (b, _, _) = spooled(&spool, shapes["resubmit_2"]);
        assert_ne!(
            a.header.message_id, b.header.message_id,
            "a resubmit is a new message"
        );
    }
}

#[test]
#[ignore = "needs the C programs: run scripts/test.d/30-c.sh"]
fn every_error_path_leaves_the_spool_empty() {
    for p in programs() {
        let tmp = tempfile::tempdir().unwrap();
        let out = run(&p.dir.join("errors"), &[tmp.path()], None);
        let spool = tmp.path().join("spool");
        let c = census(&spool);
        assert!(
            c.values().all(|&n| n == 0),
            "{}: failed submits left files: {c:?}",
            p.link
        );
        assert!(!tmp.path().join("blocker").is_dir());

        let shapes = tagged(&out, "SHAPE");
        assert_eq!(shapes.len(), 1, "{out}");
        let ok = tmp.path().join("ok");
        assert_eq!(census(&ok)["ready"], 1);
        let (file, _, body) = spooled(&ok, shapes[0].1);
        let m = common::parse(&body);
        assert_eq!(
            names(m.from()),
            [(Some("First".into()), "first@example.com".into())],
            "{}",
            p.link
        );
        assert_eq!(file.header.envelope.rcpt_to, ["customer@example.org"]);
        assert_eq!(m.subject(), Some("kept"));
        assert!(m.header_raw("X-Priority").is_none());
        assert_eq!(file.header.priority, 3);
    }
}

#[test]
#[ignore = "needs the C programs: run scripts/test.d/30-c.sh"]
fn eight_threads_submit_at_once() {
    const PER_THREAD: usize = 25;
    for p in programs() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = tmp.path().join("spool");
        let out = run(
            &p.dir.join("threads"),
            &[&spool, Path::new(&PER_THREAD.to_string())],
            None,
        );
        let ids: Vec<(&str, &str, &str)> = out
            .lines()
            .filter_map(|l| {
                let mut w = l.strip_prefix("ID ")?.split(' ');
                Some((w.next()?, w.next()?, w.next()?))
            })
            .collect();
        assert_eq!(ids.len(), 8 * PER_THREAD, "{}: {out}", p.link);
        let unique: HashSet<&str> = ids.iter().map(|x| x.2).collect();
        assert_eq!(unique.len(), ids.len(), "queue ids repeat");
        assert_eq!(census(&spool)["ready"], ids.len());
        for (t, n, id) in ids {
            let (file, _, body) = spooled(&spool, id);
            let m = common::parse(&body);
            assert_eq!(
                m.subject(),
                Some(format!("thread {t} message {n}").as_str())
            );
            assert_eq!(file.header.envelope.rcpt_to, ["customer@example.org"]);
        }
    }
}

#[test]
#[ignore = "needs the C programs: run scripts/test.d/30-c.sh"]
fn a_cxx_program_uses_the_header() {
    for p in programs().into_iter().filter(|p| p.link == "dynamic") {
        let tmp = tempfile::tempdir().unwrap();
        let out = run(&p.dir.join("cxx_header"), &[tmp.path()], None);
        let shapes = tagged(&out, "SHAPE");
        let (_, _, body) = spooled(tmp.path(), shapes[0].1);
        assert_eq!(common::parse(&body).subject(), Some("from C++"));
    }
}

// ---- the shared cases (tests/cases/cases.json), layer "build", through the C API ----

/// Escapes an argument for script.c.
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

/// The mailbox string a C caller writes for a case address: the name as a quoted-string
/// (RFC 5322 §3.2.4) when there is one.
fn mailbox(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        o => {
            let addr = o["address"].as_str().unwrap_or_default();
            match o["name"].as_str() {
                Some(n) if !n.is_empty() => format!(
                    "\"{}\" <{addr}>",
                    n.replace('\\', "\\\\").replace('"', "\\\"")
                ),
                _ => addr.to_owned(),
            }
        }
    }
}

/// How a case address with a display name reaches the C API.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Form {
    /// One string, the name as a quoted-string: `qmail_message_add_to(msg, "\"N\" <a>")`.
    Quoted,
    /// Name and address apart: `qmail_message_add_to_with_name(msg, "N", "a")`.
    Named,
}

/// script.c commands for one case input, in the order `common::build` applies them.
fn commands(input: &Value, spool: &Path, form: Form) -> Vec<String> {
    let list = |v: &Value| -> Vec<Value> {
        match v {
            Value::Array(a) => a.clone(),
            Value::Null => vec![],
            o => vec![o.clone()],
        }
    };
    let mut c = vec![
        "new".to_owned(),
        format!("spool\t{}", esc(&spool.display().to_string())),
    ];
    let address = |cmd: &str, a: &Value| match (form, a) {
        (Form::Named, Value::Object(o)) => format!(
            "{cmd}_named\t{}\t{}",
            o.get("name")
                .and_then(Value::as_str)
                .map_or("-".to_owned(), esc),
            esc(o.get("address").and_then(Value::as_str).unwrap_or_default())
        ),
        _ => format!("{cmd}\t{}", esc(&mailbox(a))),
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
    if let Some(h) = input["headers"].as_object() {
        for (k, v) in h {
            c.push(format!(
                "header\t{}\t{}",
                esc(k),
                esc(&common::expand(v.as_str().unwrap_or_default()))
            ));
        }
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
    c.push("submit".to_owned());
    c
}

/// What the C layer did with one input: the first error (number, field), or the queue id.
#[derive(Debug)]
enum Outcome {
    Refused {
        code: u32,
        name: String,
        field: String,
        message: String,
    },
    Spooled(String),
}

/// Runs every input of every build case through script.c in one process.
fn through_c(
    p: &Programs,
    spool: &Path,
    form: Form,
) -> BTreeMap<(String, usize), (Value, Outcome)> {
    let mut script = String::new();
    let mut plan = Vec::new();
    for case in common::cases()
        .into_iter()
        .filter(|c| c["layer"] == "build")
    {
        let id = case["id"].as_str().unwrap().to_owned();
        for (i, input) in case["inputs"].as_array().unwrap().iter().enumerate() {
            let cmds = commands(input, spool, form);
            plan.push(((id.clone(), i), input.clone(), cmds.len()));
            for c in cmds {
                script.push_str(&c);
                script.push('\n');
            }
        }
    }
    let out = run(&p.dir.join("script"), &[], Some(&script));
    let mut lines = out.lines();
    let mut results = BTreeMap::new();
    for (key, input, n) in plan {
        let answers: Vec<&str> = lines.by_ref().take(n).collect();
        assert_eq!(answers.len(), n, "script.c answered too few lines");
        let outcome = match answers.iter().find(|a| a.starts_with("ERR ")) {
            Some(err) => {
                let (head, message) = err.split_once('\t').unwrap();
                let w: Vec<&str> = head.splitn(4, ' ').collect();
                Outcome::Refused {
                    code: w[1].parse().unwrap(),
                    name: w[2].into(),
                    field: unesc(w[3]),
                    message: unesc(message),
                }
            }
            None => Outcome::Spooled(
                answers[n - 1]
                    .strip_prefix("OK ")
                    .expect("submit answers OK <id>")
                    .to_owned(),
            ),
        };
        results.insert(key, (input, outcome));
    }
    results
}

#[test]
#[ignore = "needs the C programs: run scripts/test.d/30-c.sh"]
fn shared_build_cases_through_c() {
    for p in programs() {
        for form in [Form::Quoted, Form::Named] {
            let tmp = tempfile::tempdir().unwrap();
            let results = through_c(&p, tmp.path(), form);
            let ctx = format!("{} {form:?}", p.link);
            let get = |id: &str, i: usize| &results[&(id.to_owned(), i)].1;
            let refused = |id: &str, i: usize| match get(id, i) {
                Outcome::Refused { code, field, .. } => (*code, field.clone()),
                o => panic!(
                    "{ctx} {id} input {}: spooled, expected a refusal: {o:?}",
                    i + 1
                ),
            };

            // Q-01: CR/LF in the Reply-To address is an invalid address naming reply_to; in
            // the display name it is an invalid header when the name is given apart, and
            // makes the whole one-string mailbox an invalid address.
            assert_eq!(refused("Q-01", 1), (2002, "reply_to".into()), "{ctx}");
            let expected = if form == Form::Named { 2003 } else { 2002 };
            assert_eq!(refused("Q-01", 0), (expected, "reply_to".into()), "{ctx}");
            // Q-03: a newline in Subject or in a custom header value, and bad header names
            assert_eq!(refused("Q-03", 0), (2003, "subject".into()), "{ctx}");
            let (code, field) = refused("Q-03", 2);
            assert_eq!(
                (code, field.starts_with("headers.X-Bad")),
                (2003, true),
                "{ctx}"
            );
            let (code, field) = refused("Q-03", 3);
            assert_eq!(
                (code, field.starts_with("headers.X-Evil")),
                (2003, true),
                "{ctx}"
            );
            // Q-03 input 2: built; the literal encoded-word text comes back exactly, no Bcc
            let Outcome::Spooled(id) = get("Q-03", 1) else {
                panic!("{ctx}: Q-03 input 2 refused: {:?}", get("Q-03", 1))
            };
            let (_, _, body) = spooled(tmp.path(), id);
            assert_eq!(
                common::parse(&body).subject(),
                Some("Invoice =?UTF-8?Q?=0A?=Bcc: leak@example.org")
            );
            assert!(!header_names(&body).contains(&"bcc".to_owned()));

            // Every input: the C layer agrees with the Rust API on the same payload.
            for ((id, i), (input, outcome)) in &results {
                let ctx = format!("{ctx} {id} input {}", i + 1);
                match (common::build(input), outcome) {
                    (
                        Err(e),
                        Outcome::Refused {
                            code,
                            name,
                            field,
                            message,
                        },
                    ) => {
                        assert_eq!(Some(field.as_str()), e.field(), "{ctx}: {message}");
                        assert!(
                            message.starts_with(&format!("{field}: ")),
                            "{ctx}: {message}"
                        );
                        let rust_kind = e.kind().as_str();
                        // only the one-string form may turn a bad display name (InvalidHeader
                        // in Rust, where the name is given apart) into an InvalidAddress
                        let same = name == rust_kind
                            || (form == Form::Quoted
                                && rust_kind == "InvalidHeader"
                                && name == "InvalidAddress");
                        assert!(same, "{ctx}: C {name} ({code}), Rust {rust_kind}");
                    }
                    (Ok(rust), Outcome::Spooled(qid)) => {
                        let (file, _, body) = spooled(tmp.path(), qid);
                        assert_eq!(&file.header.envelope, rust.envelope(), "{ctx}");
                        let rust_bytes = rust.to_bytes().unwrap();
                        same_message(&ctx, &common::parse(&body), &common::parse(&rust_bytes));
                        assert_eq!(header_names(&body), header_names(&rust_bytes), "{ctx}");
                    }
                    (rust, c) => panic!(
                        "{ctx}: Rust {:?}, C {c:?}",
                        rust.map(|m| m.envelope().clone())
                    ),
                }
            }
        }
    }
}

/// The same message as a reader sees it: addresses, subject, bodies, attachments.
fn same_message(ctx: &str, c: &mail_parser::Message<'_>, rust: &mail_parser::Message<'_>) {
    assert_eq!(names(c.from()), names(rust.from()), "{ctx}: from");
    assert_eq!(names(c.to()), names(rust.to()), "{ctx}: to");
    assert_eq!(names(c.cc()), names(rust.cc()), "{ctx}: cc");
    assert_eq!(
        names(c.reply_to()),
        names(rust.reply_to()),
        "{ctx}: reply_to"
    );
    assert_eq!(c.subject(), rust.subject(), "{ctx}: subject");
    assert_eq!(c.body_text(0), rust.body_text(0), "{ctx}: text");
    assert_eq!(c.body_html(0), rust.body_html(0), "{ctx}: html");
    let atts = |m: &mail_parser::Message<'_>| -> Vec<(Option<String>, Vec<u8>)> {
        m.attachments()
            .map(|a| {
                (
                    a.attachment_name().map(str::to_owned),
                    a.contents().to_vec(),
                )
            })
            .collect()
    };
    assert_eq!(atts(c), atts(rust), "{ctx}: attachments");
    let kinds = |m: &mail_parser::Message<'_>| -> Vec<String> {
        m.parts
            .iter()
            .map(|p| match &p.body {
                PartType::Multipart(_) => format!(
                    "multipart/{}",
                    p.content_type().and_then(|c| c.subtype()).unwrap_or("")
                ),
                _ => p
                    .content_type()
                    .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")))
                    .unwrap_or_default(),
            })
            .collect()
    };
    assert_eq!(kinds(c), kinds(rust), "{ctx}: MIME structure");
}
