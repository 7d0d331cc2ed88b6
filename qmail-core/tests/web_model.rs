//! The message-model rules the web front ends rely on (issues 15, 10 item 9, 16 item 4): the
//! envelope override, spool routing, address lists in one string, RFC 2183 file names,
//! one-click unsubscribe, streamed raw submits, and attachments swapped after `attach()`.
//! Every spooled file is read back with mail-parser, an independent parser.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use mail_parser::{HeaderValue, MessageParser, MimeHeaders};
use qmail_core::{
    ErrorKind, Message, Priority, RawMessage, RawStream, Spool, SpoolFile, Target, route,
};

fn spooled(spool: &Spool, id: &qmail_core::QueueId) -> SpoolFile {
    let p = spool.path().join("ready").join(id.as_str());
    SpoolFile::open(&p).unwrap()
}

#[test]
fn error_kind_transience_is_one_rule() {
    for k in ErrorKind::ALL {
        assert_eq!(
            k.is_transient(),
            qmail_core::Error::new(*k, "").is_transient()
        );
    }
    assert!(ErrorKind::SpoolUnavailable.is_transient());
    assert!(!ErrorKind::InvalidAddress.is_transient());
}

#[test]
fn envelope_override_keeps_headers_and_priority() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let m = Message::builder()
        .from("Shop <shop@example.com>")
        .to("a@example.org")
        .cc("c@example.org")
        .envelope_from("bounce@example.com")
        .envelope_to(&["<x@example.net>", "y@example.net", "X@example.net"])
        .priority(Priority::Highest)
        .subject("s")
        .text("t")
        .build()
        .unwrap();
    assert_eq!(m.envelope().rcpt_to, ["x@example.net", "y@example.net"]);
    let id = spool.submit(&m).unwrap();
    let f = spooled(&spool, &id);
    assert_eq!(f.header.priority, 1);
    assert_eq!(f.header.envelope.mail_from, "bounce@example.com");
    assert_eq!(
        f.header.envelope.rcpt_to,
        ["x@example.net", "y@example.net"]
    );
    let body = f.read_body().unwrap();
    let p = MessageParser::default().parse(&body).unwrap();
    assert_eq!(
        p.to().unwrap().first().unwrap().address(),
        Some("a@example.org")
    );
    assert!(!String::from_utf8_lossy(&body).contains("x@example.net"));
    // bad and empty overrides name the field
    let e = Message::builder()
        .from("a@example.com")
        .envelope_to(&["not an address"])
        .build()
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::InvalidAddress, Some("envelope_to"))
    );
    let none: [&str; 0] = [];
    let e = Message::builder()
        .from("a@example.com")
        .to("b@example.com")
        .envelope_to(&none)
        .build()
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::InvalidMessage, Some("envelope_to"))
    );
}

#[test]
fn address_list_in_one_string_is_split_and_strict() {
    let m = Message::builder()
        .from("a@example.com")
        .to("b@example.org, \"Last, First\" <c@example.org>; team: d@example.org, e@example.org;")
        .bcc("f@example.net,g@example.net")
        .build()
        .unwrap();
    assert_eq!(
        m.envelope().rcpt_to,
        [
            "b@example.org",
            "c@example.org",
            "d@example.org",
            "e@example.org",
            "f@example.net",
            "g@example.net"
        ]
    );
    assert_eq!(m.to().len(), 4);
    assert_eq!(m.to()[1].name(), Some("Last, First"));
    // one bad member fails the whole list, naming the field and the member
    let e = Message::builder()
        .from("a@example.com")
        .to("b@example.org, nope")
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidAddress);
    assert_eq!(e.field(), Some("to"));
    assert!(e.message().contains("'nope'"), "{}", e.message());
    // From takes one mailbox: a list is a clear error, not "local part has '@'"
    let e = Message::builder()
        .from("a@example.com, b@example.com")
        .to("c@example.org")
        .build()
        .unwrap_err();
    assert_eq!(e.field(), Some("from"));
    assert!(e.message().contains("one mailbox"), "{}", e.message());
    // address literals keep their colons
    let m = Message::builder()
        .from("a@example.com")
        .to("u@[IPv6:2001:db8::1], v@[192.0.2.1]")
        .build()
        .unwrap();
    assert_eq!(m.envelope().rcpt_to.len(), 2);
}

#[test]
fn attachment_names_are_reduced_to_their_final_component() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.pdf");
    std::fs::write(&file, b"%PDF-1.4").unwrap();
    let m = Message::builder()
        .from("a@example.com")
        .to("b@example.org")
        .text("see attached")
        .attach_data(
            &b"root:x:0:0"[..],
            Some("../../etc/passwd"),
            Some("text/plain"),
        )
        .attach_data(&b"x"[..], Some("C:\\Users\\me\\dir\\notes.txt"), None)
        .attach(&file, Some("dir/report.pdf"), None)
        .build()
        .unwrap();
    let names: Vec<_> = m.attachments().iter().map(|a| a.filename()).collect();
    assert_eq!(
        names,
        [Some("passwd"), Some("notes.txt"), Some("report.pdf")]
    );
    let bytes = m.to_bytes().unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("etc/passwd") && !text.contains("dir/") && !text.contains("Users"));
    let p = MessageParser::default().parse(&bytes).unwrap();
    let parsed: Vec<_> = p.attachments().map(|a| a.attachment_name()).collect();
    assert_eq!(
        parsed,
        [Some("passwd"), Some("notes.txt"), Some("report.pdf")]
    );
    for bad in ["", "dir/", "..", "a/.."] {
        let e = Message::builder()
            .from("a@example.com")
            .to("b@example.org")
            .attach_data(&b"x"[..], Some(bad), None)
            .build()
            .unwrap_err();
        assert_eq!(e.field(), Some("attachments[0]"), "{bad:?}");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
}

#[test]
fn list_unsubscribe_one_click() {
    let m = Message::builder()
        .from("news@example.com")
        .to("b@example.org")
        .list_unsubscribe(
            "https://example.com/unsub?u=1&t=abc",
            Some("unsub@example.com"),
            true,
        )
        .text("x")
        .build()
        .unwrap();
    let bytes = m.to_bytes().unwrap();
    let p = MessageParser::default().parse(&bytes).unwrap();
    let lu = p.header_raw("List-Unsubscribe").unwrap();
    assert_eq!(
        lu.replace("\r\n", "").trim(),
        "<https://example.com/unsub?u=1&t=abc>, <mailto:unsub@example.com>"
    );
    assert_eq!(
        p.header_raw("List-Unsubscribe-Post").unwrap().trim(),
        "List-Unsubscribe=One-Click"
    );
    // without one_click: no Post field; http allowed then
    let m = Message::builder()
        .from("news@example.com")
        .to("b@example.org")
        .list_unsubscribe("http://example.com/u", None, false)
        .build()
        .unwrap();
    let bytes = m.to_bytes().unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains("List-Unsubscribe-Post"));
    // bad URIs name the field
    for (url, mailto, one, field) in [
        ("http://example.com/u", None, true, "list_unsubscribe.url"),
        (
            "https://example.com/a b",
            None,
            true,
            "list_unsubscribe.url",
        ),
        ("mailto:x@example.com", None, false, "list_unsubscribe.url"),
        (
            "https://example.com/u",
            Some("mailto:bad@"),
            true,
            "list_unsubscribe.mailto",
        ),
    ] {
        let e = Message::builder()
            .from("news@example.com")
            .to("b@example.org")
            .list_unsubscribe(url, mailto, one)
            .build()
            .unwrap_err();
        assert_eq!(e.field(), Some(field), "{url} {mailto:?}");
    }
    // given as headers (Django's headers=, nodemailer's headers): the same rule
    let m = Message::builder()
        .from("news@example.com")
        .to("b@example.org")
        .header("List-Unsubscribe", "<https://example.com/u>")
        .header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
        .build()
        .unwrap();
    assert!(m.list_unsubscribe().unwrap().one_click());
    let e = Message::builder()
        .from("news@example.com")
        .to("b@example.org")
        .header("List-Unsubscribe", "<http://example.com/u>")
        .header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
        .build()
        .unwrap_err();
    assert_eq!(e.field(), Some("headers.List-Unsubscribe"));
    // and in raw messages
    let raw = b"From: a@example.com\r\nTo: b@example.org\r\nList-Unsubscribe: <http://x.example/u>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nx\r\n";
    let e = RawMessage::parse(raw, None, None).unwrap_err();
    assert_eq!(e.field(), Some("headers.List-Unsubscribe"));
}

#[test]
fn raw_needs_the_empty_line_and_takes_priority_from_headers() {
    let e =
        RawMessage::parse(b"From: a@example.com\r\nTo: b@example.org\r\n", None, None).unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::InvalidMessage, Some("message"))
    );
    let m = RawMessage::parse(b"From: a@example.com\nTo: b@example.org\n\n", None, None).unwrap();
    assert!(m.bytes().ends_with(b"\r\n\r\n"));
    for (field, prio) in [
        ("X-Priority: 1 (Highest)", Priority::Highest),
        ("X-Priority: 5", Priority::Lowest),
        ("Importance: high", Priority::High),
        ("Importance: Low", Priority::Low),
        ("Priority: urgent", Priority::High),
        ("X-Priority: garbage", Priority::Normal),
    ] {
        let raw = format!("From: a@example.com\r\nTo: b@example.org\r\n{field}\r\n\r\nx\r\n");
        let m = RawMessage::parse(raw.as_bytes(), None, None).unwrap();
        assert_eq!(m.priority(), prio, "{field}");
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let m = RawMessage::parse(
        b"From: a@example.com\r\nTo: b@example.org\r\nX-Priority: 2\r\n\r\nx\r\n",
        None,
        None,
    )
    .unwrap();
    let id = spool.submit_raw(&m).unwrap();
    assert_eq!(spooled(&spool, &id).header.priority, 2);
}

#[test]
fn spool_routing_and_path_checks() {
    let dir = tempfile::tempdir().unwrap();
    let t = route(Some(dir.path()), None).unwrap();
    assert!(matches!(t, Target::Spool(_)));
    for bad in ["relative/spool", " /tmp/x", "/tmp/x "] {
        let e = route(Some(Path::new(bad)), None).unwrap_err();
        assert_eq!(
            (e.kind(), e.field()),
            (ErrorKind::InvalidArgument, Some("spool")),
            "{bad:?}"
        );
        let e = Message::builder()
            .from("a@example.com")
            .spool(bad)
            .build()
            .unwrap_err();
        assert_eq!(e.field(), Some("spool"));
        let e = qmail_core::Initiator::new([bad], Default::default()).unwrap_err();
        assert_eq!(e.field(), Some("spool"));
    }
}

/// The streamed raw submit spools the same bytes as the whole-message parse, in pieces of
/// every size (a CR at the end of one piece and an LF at the start of the next included).
#[test]
fn raw_stream_matches_raw_parse() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut raw = Vec::new();
    raw.extend_from_slice(b"From: A <a@example.com>\r\nTo: b@example.org\nBcc: hidden@example.net\r\nMessage-ID: <1@example.com>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nX-Priority: 4\r\nSubject: stream\r\n\r\n");
    for i in 0..2000 {
        raw.extend_from_slice(format!("line {i} caf\u{e9}\r").as_bytes());
        raw.extend_from_slice(b"\n");
    }
    let whole = RawMessage::parse(&raw, None, None).unwrap();
    for piece in [1usize, 2, 3, 7, 64, 4096, raw.len()] {
        let mut s = RawStream::new(Target::Spool(spool.clone()), None, None);
        for c in raw.chunks(piece) {
            s.write(c).unwrap();
        }
        let id = s.finish().unwrap();
        let f = spooled(&spool, &id);
        assert_eq!(f.read_body().unwrap(), whole.bytes(), "piece {piece}");
        assert_eq!(f.header.envelope, *whole.envelope());
        assert!(f.header.envelope.eightbitmime);
        assert_eq!(f.header.priority, 4);
    }
    // a header section that never ends is refused and leaves nothing behind
    let mut s = RawStream::new(Target::Spool(spool.clone()), None, None);
    s.write(b"From: a@example.com\r\nTo: b@example.org\r\n")
        .unwrap();
    assert_eq!(s.finish().unwrap_err().kind(), ErrorKind::InvalidMessage);
    let mut s = RawStream::new(Target::Spool(spool.clone()), None, None);
    s.write(b"From: a@example.com\r\nTo: b@example.org\r\n\r\nbody")
        .unwrap();
    s.write(b"\0").unwrap_err();
    drop(s);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

fn attach_then_swap(swap: impl FnOnce(&Path)) -> qmail_core::Error {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    let file = dir.path().join("a.bin");
    std::fs::write(&file, vec![7u8; 10_000]).unwrap();
    let m = Message::builder()
        .from("a@example.com")
        .to("b@example.org")
        .text("x")
        .attach_data(&b"first"[..], Some("first.txt"), None)
        .attach(&file, None, None)
        .build()
        .unwrap();
    swap(&file);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(spool.submit(&m).map(|_| ()));
    });
    let started = Instant::now();
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the submit returns within 10 s (a FIFO or device must not hang it)");
    assert!(started.elapsed() < Duration::from_secs(10));
    let e = r.unwrap_err();
    assert_eq!(
        std::fs::read_dir(dir.path().join("spool/tmp"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("spool/ready"))
            .unwrap()
            .count(),
        0
    );
    e
}

#[test]
fn attachment_swapped_for_fifo_or_device_fails_at_once() {
    let e = attach_then_swap(|p| {
        std::fs::remove_file(p).unwrap();
        let st = std::process::Command::new("mkfifo")
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    });
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::Attachment, Some("attachments[1]"))
    );
    let e = attach_then_swap(|p| {
        std::fs::remove_file(p).unwrap();
        std::os::unix::fs::symlink("/dev/zero", p).unwrap();
    });
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::Attachment, Some("attachments[1]"))
    );
    assert!(e.message().contains("regular file"), "{}", e.message());
}

#[test]
fn attachment_removed_before_submit_fails_naming_it() {
    let e = attach_then_swap(|p| std::fs::remove_file(p).unwrap());
    assert_eq!(e.kind(), ErrorKind::Attachment);
    assert_eq!(e.field(), Some("attachments[1]"));
}

/// A writer appending while the submit reads: the file is read to its length at open and
/// the growth noticed (nothing is spooled torn).
#[test]
fn attachment_growing_while_read_fails_the_submit() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    let file = dir.path().join("big.bin");
    std::fs::write(&file, vec![1u8; 32 << 20]).unwrap();
    let m = Message::builder()
        .from("a@example.com")
        .to("b@example.org")
        .attach(&file, None, None)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (stop, file) = (stop.clone(), file.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                f.write_all(&[2u8; 4096]).unwrap();
            }
        })
    };
    let r = spool.submit(&m);
    stop.store(true, Ordering::Relaxed);
    appender.join().unwrap();
    let e = r.unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::Attachment, Some("attachments[0]"))
    );
    assert!(e.message().contains("changed size"), "{}", e.message());
    assert_eq!(
        std::fs::read_dir(dir.path().join("spool/ready"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn date_and_references() {
    let m = Message::builder()
        .from("a@example.com")
        .to("b@example.org")
        .date_unix(1_764_583_200)
        .header("In-Reply-To", "<p@example.com>")
        .header("References", "<o@example.com> <p@example.com>")
        .build()
        .unwrap();
    assert_eq!(m.date(), "Mon, 01 Dec 2025 10:00:00 +0000");
    let bytes = m.to_bytes().unwrap();
    let p = MessageParser::default().parse(&bytes).unwrap();
    match p.header("References") {
        Some(HeaderValue::TextList(l)) => assert_eq!(l.len(), 2),
        other => panic!("{other:?}"),
    }
    let e = Message::builder()
        .from("a@example.com")
        .header("In-Reply-To", "not-a-msg-id")
        .build()
        .unwrap_err();
    assert_eq!(e.field(), Some("headers.In-Reply-To"));
}

/// Deterministic growth and shrinking: procfs files report a size of 0 and yield more; sysfs
/// files report 4096 and yield less. Both are regular files (attach() takes them), and both
/// fail the submit, naming the attachment, instead of being spooled cut or torn.
#[test]
fn attachment_whose_content_differs_from_its_stat_size_fails() {
    for (path, what) in [
        ("/proc/self/status", "grows past its size"),
        ("/sys/devices/system/cpu/online", "is shorter than its size"),
    ] {
        let p = Path::new(path);
        if !p.is_file() {
            println!("SKIP {path}: not here ({what})");
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let m = Message::builder()
            .from("a@example.com")
            .to("b@example.org")
            .attach(p, Some("f.txt"), Some("text/plain"))
            .build()
            .unwrap();
        let e = spool.submit(&m).unwrap_err();
        assert_eq!(
            (e.kind(), e.field()),
            (ErrorKind::Attachment, Some("attachments[0]")),
            "{path}"
        );
        assert!(
            e.message().contains("changed size"),
            "{path}: {}",
            e.message()
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("ready")).unwrap().count(),
            0
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}

#[test]
fn envelope_recipients_added_one_at_a_time_replace_the_header_recipients() {
    let mut b = Message::builder();
    b.set_from("a@example.com").unwrap();
    b.add_to("header@example.org").unwrap();
    b.set_subject("s").unwrap();
    b.set_text("t").unwrap();
    b.add_envelope_to("<x@example.net>").unwrap();
    b.add_envelope_to(" y@example.net ").unwrap();
    b.add_envelope_to("X@example.net").unwrap();
    let e = b.add_envelope_to("not an address").unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::InvalidAddress, Some("envelope_to"))
    );
    let m = b.build().unwrap();
    // the bad one left the list as it was; the duplicate (case of the domain) is dropped
    assert_eq!(m.envelope().rcpt_to, ["x@example.net", "y@example.net"]);
}
