//! Q-07 against a real Postfix: a private instance (scripts/postfix-instance) with
//! `smtpd_forbid_bare_newline = reject` and no exclusions accepts the message the dispatcher
//! sends with 250, and delivers exactly its bytes.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use qmail_core::{Message, Spool, SpoolFile};
use qmail_dispatch::{DispatchConfig, Dispatcher, RelayConfig};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

struct Postfix(PathBuf);

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/postfix-instance"))
            .arg("stop")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn q07_postfix_forbidding_bare_newlines_accepts_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let pf_dir = dir.path().join("postfix");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let st = Command::new(repo().join("scripts/postfix-instance"))
        .arg("start")
        .arg(&pf_dir)
        .arg(port.to_string())
        .status()
        .expect("scripts/postfix-instance");
    assert!(
        st.success(),
        "the Postfix instance did not start (needs root and scripts/setup-postfix)"
    );
    let _guard = Postfix(pf_dir.clone());

    let spool = Spool::open(dir.path().join("spool")).unwrap();
    let text = "line one\nline two\n.\nsmuggle A\n.\r\nsmuggle B\r\n.\rline with lone CR\r\nend\n";
    let mut m = Message::builder()
        .from(("Ops", "noreply@example.com"))
        .subject("A deliberately long ASCII subject line that is well over seventy-eight characters so that it must be folded")
        .text(text);
    for i in 1..=6 {
        m = m.to(format!("r{i}@example.org").as_str());
    }
    let id = spool.submit(&m.build().unwrap()).unwrap();
    let body = SpoolFile::open(&spool.path().join("ready").join(id.as_str()))
        .unwrap()
        .read_body()
        .unwrap();

    let mut cfg = DispatchConfig {
        spools: vec![spool.path().to_owned()],
        workers: 1,
        ..Default::default()
    };
    cfg.relays = vec![RelayConfig {
        url: Some(format!("smtp://127.0.0.1:{port}?tls=none")),
        ..Default::default()
    }];
    cfg.delivery_log = Some(dir.path().join("delivery.log"));
    let s = Dispatcher::drain(cfg).unwrap();
    let log = std::fs::read_to_string(dir.path().join("delivery.log")).unwrap();
    assert_eq!(s.delivered, 1, "Postfix refused it: {log}");
    let line: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(line["code"], 250, "{log}");
    assert_eq!(line["results"].as_array().unwrap().len(), 6);

    // Postfix delivers each recipient to the Maildir: the message, after its own headers
    let new = pf_dir.join("Maildir/new");
    let t0 = Instant::now();
    let files = loop {
        let f: Vec<PathBuf> = std::fs::read_dir(&new)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if !f.is_empty() || t0.elapsed() > Duration::from_secs(30) {
            break f;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!files.is_empty(), "nothing delivered to {}", new.display());
    let got = std::fs::read(&files[0]).unwrap();
    // Maildir files have LF line ends; compare with the spool message converted the same way
    let lf: Vec<u8> = String::from_utf8_lossy(&body)
        .replace("\r\n", "\n")
        .into_bytes();
    assert!(
        got.ends_with(&lf),
        "Postfix delivered the spool message unchanged (after its Received/Return-Path headers)"
    );
}
