//! The spool: durable, atomic submits; the file format; concurrent writers; a full disk.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use qmail_core::spool::record::{self, SpoolHeader};
use qmail_core::{Envelope, ErrorKind, Message, QueueState, Spool, SpoolFile, SpoolOptions};

fn msg(i: usize) -> Message {
    Message::builder()
        .from("Shop <noreply@example.com>")
        .to(format!("customer{i}@example.org"))
        .bcc("audit@example.com")
        .subject(&format!("order {i}"))
        .text(&"Thanks for your order.\n".repeat(80))
        .build()
        .unwrap()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn submit_writes_a_verified_file_into_ready() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    for st in QueueState::ALL {
        assert!(spool.state_dir(st).is_dir(), "{st:?}");
    }
    let m = msg(1);
    let id = spool.submit(&m).unwrap();
    let path = spool.state_dir(QueueState::Ready).join(id.as_str());
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640,
        "group-readable by default: the dispatcher reads it through the submit group"
    );
    assert!(files(&spool.state_dir(QueueState::Tmp)).is_empty());
    let f = SpoolFile::open(&path).unwrap();
    assert_eq!(f.header.envelope.mail_from, "noreply@example.com");
    assert_eq!(
        f.header.envelope.rcpt_to,
        ["customer1@example.org", "audit@example.com"]
    );
    assert_eq!(f.header.message_id, m.message_id());
    assert_eq!(f.header.priority, 3);
    let body = f.read_body().unwrap();
    assert_eq!(body, m.to_bytes().unwrap());
    assert_wire_clean(&body);
    assert!(!header_section(&body).contains("audit@example.com"));
}

#[test]
fn options_mode_non_durable_and_scheduled() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_with(
        dir.path(),
        SpoolOptions {
            durable: false,
            file_mode: 0o640,
        },
    )
    .unwrap();
    let id = spool.submit(&msg(2)).unwrap();
    let p = spool.state_dir(QueueState::Ready).join(id.as_str());
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let later = chrono::Utc::now().timestamp() + 3600;
    let m = Message::builder()
        .from("a@example.com")
        .to("b@example.org")
        .not_before(later)
        .build()
        .unwrap();
    let id = spool.submit(&m).unwrap();
    let p = spool.state_dir(QueueState::Scheduled).join(id.as_str());
    assert_eq!(SpoolFile::open(&p).unwrap().header.not_before, Some(later));
    assert!(
        Spool::open_with(
            dir.path(),
            SpoolOptions {
                durable: true,
                file_mode: 0o1777
            }
        )
        .is_err()
    );
}

fn golden_header() -> SpoolHeader {
    SpoolHeader {
        envelope: Envelope {
            mail_from: "bounce@example.com".into(),
            rcpt_to: vec!["a@example.org".into(), "b@example.org".into()],
            smtputf8: false,
            eightbitmime: false,
        },
        created: 1_751_364_000,
        not_before: Some(1_751_367_600),
        priority: 2,
        message_id: "<golden-1@example.com>".into(),
    }
}

const GOLDEN_BODY: &[u8] =
    b"From: a@example.com\r\nTo: a@example.org\r\nSubject: golden\r\n\r\nhello\r\n";

#[test]
fn format_v1_golden_file_is_stable() {
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/spool-v1.qmail");
    let mut bytes = Vec::new();
    record::write_header(&mut bytes, &golden_header()).unwrap();
    bytes.extend_from_slice(GOLDEN_BODY);
    record::write_trailer(&mut bytes, GOLDEN_BODY.len() as u64).unwrap();
    if std::env::var_os("QMAIL_BLESS").is_some() {
        fs::create_dir_all(golden.parent().unwrap()).unwrap();
        fs::write(&golden, &bytes).unwrap();
    }
    let committed = fs::read(&golden).expect("tests/data/spool-v1.qmail (QMAIL_BLESS=1 writes it)");
    assert_eq!(
        bytes, committed,
        "the writer no longer produces format v1 byte for byte"
    );
    let f = SpoolFile::open(&golden).unwrap();
    assert_eq!(f.version, 1);
    assert_eq!(f.header, golden_header());
    assert_eq!(f.read_body().unwrap(), GOLDEN_BODY);
    assert_eq!(&committed[..8], b"QMAILSPL");
    assert_eq!(
        &committed[committed.len() - 16..committed.len() - 8],
        b"QMAILEND"
    );
}

#[test]
fn damaged_files_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = spool.submit(&msg(3)).unwrap();
    let good = fs::read(spool.state_dir(QueueState::Ready).join(id.as_str())).unwrap();
    let p = dir.path().join("x");
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated", good[..good.len() - 1].to_vec()),
        ("no trailer", good[..good.len() - 16].to_vec()),
        ("extra byte", [good.clone(), vec![b'x']].concat()),
    ];
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    cases.push(("bad magic", bad_magic));
    let mut bad_version = good.clone();
    bad_version[8] = 9;
    cases.push(("future version", bad_version));
    let mut bad_hlen = good.clone();
    bad_hlen[13] = 0x7f;
    cases.push(("header length", bad_hlen));
    let mut bad_header = good.clone();
    bad_header[14] = 0xff;
    bad_header[15] = 0xff;
    cases.push(("header bytes", bad_header));
    for (what, bytes) in cases {
        fs::write(&p, &bytes).unwrap();
        let e = SpoolFile::open(&p).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{what}: {e}");
    }
}

#[test]
fn file_attachments_stream_and_a_vanished_file_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let att = dir.path().join("report.bin");
    fs::write(&att, &data).unwrap();
    let m = Message::builder()
        .from("a@example.com")
        .to("b@example.org")
        .text("see attached")
        .attach(&att, None, None)
        .build()
        .unwrap();
    let id = spool.submit(&m).unwrap();
    let body = SpoolFile::open(&spool.state_dir(QueueState::Ready).join(id.as_str()))
        .unwrap()
        .read_body()
        .unwrap();
    assert_wire_clean(&body);
    let p = parse(&body);
    let a = p.attachments().next().unwrap();
    assert_eq!(
        mail_parser::MimeHeaders::attachment_name(a),
        Some("report.bin")
    );
    assert_eq!(a.contents(), &data[..]);
    // the file disappears between build and submit: Attachment error, nothing committed
    fs::remove_file(&att).unwrap();
    let e = spool.submit(&m).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attachment);
    assert_eq!(e.field(), Some("attachments[0]"));
    assert_eq!(files(&spool.state_dir(QueueState::Ready)).len(), 1);
    assert!(files(&spool.state_dir(QueueState::Tmp)).is_empty());
    // missing at build time
    let e = Message::builder()
        .from("a@example.com")
        .to("b@example.org")
        .attach(&att, None, None)
        .build()
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::Attachment, Some("attachments[0]"))
    );
}

/// Checks every file in ready/ while submitters run: each one must be complete.
fn watch_ready(dir: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut checked = 0;
        while !stop.load(Ordering::Relaxed) {
            for p in files(&dir) {
                let f = SpoolFile::open(&p)
                    .unwrap_or_else(|e| panic!("half-written file visible: {}: {e}", p.display()));
                assert!(f.body_len > 0);
                checked += 1;
            }
        }
        checked
    })
}

#[test]
fn concurrent_threads_never_expose_a_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_with(
        dir.path(),
        SpoolOptions {
            durable: false,
            file_mode: 0o600,
        },
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_ready(spool.state_dir(QueueState::Ready), stop.clone());
    let ids: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|t| {
                let spool = spool.clone();
                s.spawn(move || {
                    (0..150)
                        .map(|i| spool.submit(&msg(t * 1000 + i)).unwrap().to_string())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    stop.store(true, Ordering::Relaxed);
    assert!(
        watcher.join().unwrap() > 0,
        "the watcher saw files while submitting"
    );
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 8 * 150);
    let on_disk: std::collections::HashSet<String> = files(&spool.state_dir(QueueState::Ready))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_disk.len(), ids.len());
    assert!(ids.iter().all(|i| on_disk.contains(i)));
}

/// Child side of the multi-process test: submits N messages to QMAIL_TEST_CHILD_SPOOL.
#[test]
fn child_submitter() {
    let Some(dir) = std::env::var_os("QMAIL_TEST_CHILD_SPOOL") else {
        return;
    };
    let spool = Spool::open(dir).unwrap();
    for i in 0..100 {
        let id = spool.submit(&msg(i)).unwrap();
        println!("ID {id}");
    }
}

#[test]
fn concurrent_processes_share_one_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_ready(spool.state_dir(QueueState::Ready), stop.clone());
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "child_submitter",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("QMAIL_TEST_CHILD_SPOOL", dir.path())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ids = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        ids.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once("ID ").map(|(_, id)| id.to_owned())),
        );
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    assert_eq!(ids.len(), 400);
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 400);
    assert_eq!(files(&spool.state_dir(QueueState::Ready)).len(), 400);
}

#[test]
fn full_disk_gives_a_clear_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    fs::create_dir(&mnt).unwrap();
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if !is_root {
        eprintln!("SKIP full_disk: needs root to mount a small tmpfs");
        return;
    }
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIP full_disk: mount -t tmpfs failed (no CAP_SYS_ADMIN here)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let spool = Spool::open(&mnt).unwrap();
    let big = Message::builder()
        .from("a@example.com")
        .to("b@example.org")
        .attach_data(vec![7u8; 1 << 20], Some("big.bin"), None)
        .build()
        .unwrap();
    let e = spool.submit(&big).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SpoolUnavailable, "{e}");
    assert_eq!(e.field(), Some("spool"));
    assert!(e.to_string().contains("No space left"), "{e}");
    assert!(files(&spool.state_dir(QueueState::Ready)).is_empty());
    assert!(files(&spool.state_dir(QueueState::Tmp)).is_empty());
    // a small message still fits afterwards
    spool.submit(&msg(1)).unwrap();
}
