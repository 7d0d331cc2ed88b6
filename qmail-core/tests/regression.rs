//! Regressions found by trying to break qmail as a careless user or an attacker would (review
//! of stop 8). Each test names what went wrong.

mod common;

use common::*;
use qmail_core::{ErrorKind, Message, QueueState, Spool, SpoolFile, SpoolOptions};

/// Values qmail accepted used to render lines over 998 octets, which the dispatcher then
/// refused for good: long display names (atom, quoted, in every address field), long file
/// names. They must fold or encode; every line stays within 998 octets and the fields parse
/// back unchanged.
#[test]
fn long_values_never_make_long_lines() {
    let long_atom = "N".repeat(1500);
    let long_quoted = format!("{}, Inc.", "Q".repeat(1200));
    let long_mixed = format!("{} Ünïcode {}", "x".repeat(900), "y".repeat(300));
    for name in [&long_atom, &long_quoted, &long_mixed] {
        let m = Message::builder()
            .from((name.as_str(), "a@example.com"))
            .to((name.as_str(), "b@example.org"))
            .reply_to((name.as_str(), "r@example.com"))
            .text("x")
            .attach_data(
                b"abc".to_vec(),
                Some(&format!("{}.txt", "f".repeat(1200))),
                None,
            )
            .build()
            .unwrap();
        let bytes = m.to_bytes().unwrap();
        assert_wire_clean(&bytes);
        let p = parse(&bytes);
        assert_eq!(
            p.to().unwrap().first().unwrap().name.as_deref(),
            Some(name.as_str())
        );
        let a = p.attachments().next().unwrap();
        assert_eq!(
            mail_parser::MimeHeaders::attachment_name(a),
            Some(format!("{}.txt", "f".repeat(1200)).as_str())
        );
    }
    // the string form too
    let m = Message::builder()
        .from("a@example.com")
        .to(format!("{} <b@example.org>", "N".repeat(3000)))
        .build()
        .unwrap();
    assert_wire_clean(&m.to_bytes().unwrap());
}

/// Over-long or composite values that cannot be folded are refused at build, naming the field.
#[test]
fn unfoldable_values_are_refused() {
    let b = || Message::builder().from("a@example.com").to("b@example.org");
    let e = b()
        .attach_data(
            b"x".to_vec(),
            Some("a.bin"),
            Some(&format!("application/{}", "x".repeat(1200))),
        )
        .build()
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::InvalidArgument, Some("attachments[0]"))
    );
    for ct in ["multipart/mixed", "message/rfc822", "Multipart/Alternative"] {
        let e = b()
            .attach_data(b"x".to_vec(), None, Some(ct))
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{ct}");
    }
    let e = b()
        .html("<img src=\"cid:x\">")
        .inline_data(b"x".to_vec(), &"c".repeat(1200), None)
        .build()
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::InvalidHeader, Some("inline[0]"))
    );
    let e = b()
        .header("Message-ID", &format!("<{}@example.com>", "m".repeat(1200)))
        .build()
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::InvalidHeader, Some("headers.Message-ID"))
    );
}

/// An envelope too large for the spool header used to be written and then refused by every
/// reader (the message was lost in corrupt/). It must be refused at submit.
#[test]
fn an_envelope_too_large_for_the_header_is_refused_at_submit() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut b = Message::builder();
    b.set_from("a@example.com").unwrap();
    for i in 0..20_000 {
        b.add_bcc(format!("recipient-with-a-rather-long-local-part-{i:06}@example.org").as_str())
            .unwrap();
    }
    let m = b.build().unwrap();
    let e = spool.submit(&m).unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::InvalidMessage, Some("to"))
    );
    assert_eq!(
        std::fs::read_dir(spool.state_dir(QueueState::Ready))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(spool.state_dir(QueueState::Tmp))
            .unwrap()
            .count(),
        0
    );
}

/// A FIFO (or a directory, or a symlink) in a queue directory used to hang every reader in
/// open(2). It is not a spool file: Corrupt, at once.
#[test]
fn special_files_are_corrupt_not_opened() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        SpoolFile::open(&fifo).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    std::fs::create_dir(dir.path().join("d")).unwrap();
    assert_eq!(
        SpoolFile::open(&dir.path().join("d")).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    std::os::unix::fs::symlink("/nonexistent", dir.path().join("l")).unwrap();
    assert_eq!(
        SpoolFile::open(&dir.path().join("l")).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
}

/// World-writable spool files are refused.
#[test]
fn world_writable_file_mode_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o666, 0o602, 0o777] {
        let e = Spool::open_with(
            dir.path(),
            SpoolOptions {
                durable: false,
                file_mode: mode,
            },
        )
        .unwrap_err();
        assert_eq!(
            (e.kind(), e.field()),
            (ErrorKind::InvalidArgument, Some("file_mode"))
        );
    }
}
