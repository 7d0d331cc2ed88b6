//! DKIM in the `qmail-dispatcher` binary: `[[dkim]]` in the TOML file, `check-config` refusing a
//! bad key (naming the file) and printing the DNS records, SIGHUP reloading the keys, and a bad
//! key at SIGHUP keeping the old ones. Signatures are checked by dkimpy (`tests/dkim/verify.py`).

#[path = "../../qmail-dispatch/tests/dispatch_common/mod.rs"]
mod dispatch_common;
#[path = "../../qmail-dispatch/tests/dkim_common/mod.rs"]
mod dkim_common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dispatch_common::*;
use dkim_common::*;
use qmail_core::{Message, Spool, SpoolOptions};

const BIN: &str = env!("CARGO_BIN_EXE_qmail-dispatcher");
const T: Duration = Duration::from_secs(30);

fn write_config(path: &Path, spool: &Path, relay: &str, key: &Path) {
    std::fs::write(
        path,
        format!(
            r#"spools = ["{}"]
workers = 1
rescan_ms = 200

[[relay]]
url = "{relay}"
cooldown_secs = 0

[[dkim]]
domain = "hup.test"
selector = "s1"
key_file = "{}"
algorithm = "ed25519-sha256"
canonicalization = "relaxed/relaxed"
headers = ["From", "To", "Subject", "Date", "Message-ID"]
expire_secs = 604800
"#,
            spool.display(),
            key.display()
        ),
    )
    .unwrap();
}

fn submit(spool: &Spool, subject: &str) {
    let m = Message::builder()
        .from("noreply@hup.test")
        .to("a@example.org")
        .subject(subject)
        .text("hello")
        .build()
        .unwrap();
    spool.submit(&m).unwrap();
}

/// Replaces the key file atomically (a new file renamed over it), mode `mode`.
fn replace_key(dir: &Path, key: &Path, kind: KeyKind, mode: u32) -> String {
    let tmp = dir.join("new-key.pem");
    make_key(&tmp, kind);
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    let txt = txt_record(&tmp, kind);
    std::fs::rename(&tmp, key).unwrap();
    txt
}

fn hup(child: &Child) {
    let st = Command::new("kill")
        .arg("-HUP")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

fn wait_log(log: &Path, needle: &str, times: usize) {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(needle).count() >= times {
            return;
        }
        assert!(t0.elapsed() < T, "no {needle:?} in the log:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn check_config_refuses_a_readable_key_and_prints_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    Spool::open(&spool).unwrap();
    let key = dir.path().join("dkim.pem");
    make_key(&key, KeyKind::Ed25519);
    let txt = txt_record(&key, KeyKind::Ed25519);
    let cfg = dir.path().join("c.toml");
    write_config(&cfg, &spool, "smtp://127.0.0.1:25?tls=none", &key);
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("check-config")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("s1._domainkey.hup.test TXT \"{txt}\"")),
        "{stdout}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("check-config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&key.display().to_string()), "{stderr}");
    assert!(stderr.contains("dkim[0].key_file"), "{stderr}");
    // never the key itself
    let pem = std::fs::read_to_string(&key).unwrap();
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!stderr.contains(line));
    }
    // and `run` refuses to start with it
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("drain")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&key.display().to_string()));
}

#[test]
fn sighup_reloads_the_keys_and_a_bad_key_keeps_the_old_one() {
    let srv = SmtpServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_with(
        dir.path().join("spool"),
        SpoolOptions {
            durable: false,
            ..Default::default()
        },
    )
    .unwrap();
    let key = dir.path().join("dkim.pem");
    make_key(&key, KeyKind::Ed25519);
    let first = txt_record(&key, KeyKind::Ed25519);
    let cfg = dir.path().join("c.toml");
    write_config(&cfg, spool.path(), &srv.url("tls=none"), &key);
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env("QMAIL_LOG", "info")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_log(&log, "qmail-dispatcher started", 1);
    submit(&spool, "one");
    assert_eq!(srv.wait_delivered(1, T).len(), 1);
    // a new key under the same name, then SIGHUP
    let second = replace_key(dir.path(), &key, KeyKind::Ed25519, 0o600);
    hup(&child);
    wait_log(&log, "SIGHUP: configuration reloaded", 1);
    wait_log(&log, "qmail-dispatcher started", 2);
    submit(&spool, "two");
    assert_eq!(srv.wait_delivered(2, T).len(), 2);
    // a key others can read: the reload is refused, the dispatcher goes on with the old key
    let _third = replace_key(dir.path(), &key, KeyKind::Ed25519, 0o644);
    hup(&child);
    wait_log(&log, "the new configuration is invalid", 1);
    wait_log(&log, "qmail-dispatcher started", 3);
    submit(&spool, "three");
    assert_eq!(srv.wait_delivered(3, T).len(), 3);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < T, "the dispatcher did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("dkim[0].key_file"), "{text}");
    let files = tx_files(&srv.record);
    let name = "s1._domainkey.hup.test".to_owned();
    let Some(with_first) = verify(&[(name.clone(), first)], &files) else {
        return;
    };
    let with_second = verify(&[(name, second)], &files).unwrap();
    let valid = |v: &Verified| v.signatures.len() == 1 && v.signatures[0].valid;
    assert!(valid(&with_first[0]), "{:?}", with_first[0]);
    assert!(!valid(&with_second[0]));
    // after the reload: the second key
    assert!(valid(&with_second[1]), "{:?}", with_second[1]);
    assert!(!valid(&with_first[1]));
    // after the refused reload: still the second key
    assert!(valid(&with_second[2]), "{:?}", with_second[2]);
}
