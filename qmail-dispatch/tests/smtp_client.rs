//! The SMTP client against misbehaving relays: a scripted raw server
//! (`tests/smtp/raw_server.py`, exact bytes, no SMTP library) for stalls, trickled replies,
//! code-only replies, STARTTLS response injection, SIZE, 8BITMIME, disconnects at every step
//! and garbage; each case beside a well-behaved control. Plus the library API directly for a
//! spool read error mid-body and the fence (contract C1).

mod dispatch_common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dispatch_common::*;
use qmail_core::spool::Spool;
use qmail_dispatch::smtp::{
    BodyError, Phase, RelayEndpoint, Session, SmtpError, Transaction, TxError,
};
use qmail_dispatch::{DispatchConfig, Dispatcher, MessageState, RelayConfig, Summary};
use serde_json::{Value, json};

/// A running raw server; killed on drop.
struct Raw {
    child: Child,
    port: u16,
    record: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Raw {
    fn start(connections: Vec<Vec<Value>>, tls: Option<(&Path, &Path)>) -> Raw {
        let dir = tempfile::tempdir().unwrap();
        let scenario = dir.path().join("scenario.json");
        std::fs::write(&scenario, json!({ "connections": connections }).to_string()).unwrap();
        let ready = dir.path().join("ready.json");
        let record = dir.path().join("record.json");
        let mut cmd = Command::new(python());
        cmd.arg(repo_root().join("tests/smtp/raw_server.py"))
            .arg("--scenario")
            .arg(&scenario)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--record")
            .arg(&record)
            .stdin(Stdio::null());
        if let Some((c, k)) = tls {
            cmd.arg("--tls-cert").arg(c).arg("--tls-key").arg(k);
        }
        let child = cmd.spawn().expect("start raw_server.py");
        let t0 = Instant::now();
        while !ready.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "raw_server.py did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let v: Value = serde_json::from_slice(&std::fs::read(&ready).unwrap()).unwrap();
        Raw {
            child,
            port: v["port"].as_u64().unwrap() as u16,
            record: record.clone(),
            _dir: dir,
        }
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!("smtp://{host}:{}?{query}", self.port)
    }

    /// The connections recorded so far, once the first `n` are closed.
    fn connections(&self, n: usize) -> Vec<Value> {
        let t0 = Instant::now();
        loop {
            let v: Value = std::fs::read(&self.record)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            let c = v["connections"].as_array().cloned().unwrap_or_default();
            if c.len() >= n && c.iter().take(n).all(|c| c["closed"] == true) {
                return c;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "raw server: {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines the client sent on connection `i`.
    fn lines(&self, i: usize) -> Vec<String> {
        self.connections(i + 1)[i]["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_owned())
            .collect()
    }
}

fn send(s: &str) -> Value {
    json!({ "send": s })
}
fn expect(s: &str) -> Value {
    json!({ "expect": s })
}
fn data() -> Value {
    json!({ "data": true })
}
fn close() -> Value {
    json!({ "close": true })
}

/// EHLO reply with these keywords.
fn ehlo_reply(caps: &[&str]) -> String {
    let mut s = String::from("250");
    if caps.is_empty() {
        return s + " raw.test\r\n";
    }
    s.push_str("-raw.test\r\n");
    for (i, c) in caps.iter().enumerate() {
        let sep = if i + 1 == caps.len() { ' ' } else { '-' };
        s.push_str(&format!("250{sep}{c}\r\n"));
    }
    s
}

/// A well-behaved session for one message to one recipient.
fn good(caps: &[&str]) -> Vec<Value> {
    let mut v = vec![
        send("220 raw.test ESMTP\r\n"),
        expect("EHLO"),
        send(&ehlo_reply(caps)),
    ];
    v.extend(transaction());
    v
}

fn transaction() -> Vec<Value> {
    vec![
        expect("MAIL FROM:"),
        send("250 2.1.0 sender ok\r\n"),
        expect("RCPT TO:"),
        send("250 2.1.5 recipient ok\r\n"),
        expect("DATA"),
        send("354 go ahead\r\n"),
        data(),
        send("250 2.0.0 queued as 1\r\n"),
    ]
}

const MSG: &[u8] = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: t\r\n\r\nhello\r\n";

fn spool() -> (tempfile::TempDir, Spool) {
    let d = tempfile::tempdir().unwrap();
    let s = Spool::open(d.path().join("spool")).unwrap();
    (d, s)
}

fn cfg(spool: &Spool, urls: &[String]) -> DispatchConfig {
    let mut c = config(spool.path(), urls);
    c.workers = 1;
    c
}

fn one(c: &DispatchConfig, body: &[u8]) -> (qmail_core::QueueId, Summary) {
    let id = write_raw_spool(&c.spools[0], "a@example.com", &["b@example.org"], body);
    (id, Dispatcher::drain(c.clone()).unwrap())
}

fn diagnosis(spool: &Spool, id: &qmail_core::QueueId) -> String {
    let st = MessageState::load(spool.path(), id.as_str())
        .unwrap()
        .expect("state");
    st.history.last().unwrap().results[0].reply.to_string()
}

fn mails(lines: &[String]) -> usize {
    lines.iter().filter(|l| l.starts_with("MAIL")).count()
}

#[test]
fn stalled_greeting_hits_greeting_secs() {
    let srv = Raw::start(vec![vec![json!({"sleep": 30})]], None);
    let (_d, sp) = spool();
    let mut c = cfg(&sp, &[srv.url("127.0.0.1", "tls=none")]);
    c.timeouts.greeting_secs = 1;
    let t0 = Instant::now();
    let (id, s) = one(&c, MSG);
    assert_eq!((s.delivered, s.deferred), (0, 1));
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(
        diagnosis(&sp, &id).contains("greeting"),
        "{}",
        diagnosis(&sp, &id)
    );
    // control: a greeting in time
    let ok = Raw::start(vec![good(&[])], None);
    let (_d2, sp2) = spool();
    let mut c2 = cfg(&sp2, &[ok.url("127.0.0.1", "tls=none")]);
    c2.timeouts.greeting_secs = 1;
    assert_eq!(one(&c2, MSG).1.delivered, 1);
}

#[test]
fn trickled_reply_hits_the_deadline_per_reply() {
    // "250 ok\r\n" one byte every 0.5 s: complete after 4 s
    let slow = |every: f64| {
        vec![
            send("220 raw.test\r\n"),
            expect("EHLO"),
            send(&ehlo_reply(&[])),
            expect("MAIL"),
            json!({"trickle": "250 ok\r\n", "every": every}),
            expect("RCPT"),
            send("250 ok\r\n"),
            expect("DATA"),
            send("354 go\r\n"),
            data(),
            send("250 ok\r\n"),
        ]
    };
    let srv = Raw::start(vec![slow(0.5)], None);
    let (_d, sp) = spool();
    let mut c = cfg(&sp, &[srv.url("127.0.0.1", "tls=none")]);
    c.timeouts.mail_secs = 2;
    let t0 = Instant::now();
    let (id, s) = one(&c, MSG);
    let took = t0.elapsed();
    assert_eq!((s.delivered, s.deferred), (0, 1));
    // every read got a byte well within 2 s; only a deadline per reply stops it
    assert!(took < Duration::from_millis(3900), "took {took:?}");
    let d = diagnosis(&sp, &id);
    assert!(d.contains("MAIL FROM") && d.contains("timeout"), "{d}");
    // control: the same trickle within the deadline is delivered
    let srv2 = Raw::start(vec![slow(0.1)], None);
    let (_d2, sp2) = spool();
    let mut c2 = cfg(&sp2, &[srv2.url("127.0.0.1", "tls=none")]);
    c2.timeouts.mail_secs = 2;
    assert_eq!(one(&c2, MSG).1.delivered, 1);
}

#[test]
fn code_only_replies_are_replies() {
    let bare = vec![
        send("220\r\n"),
        expect("EHLO"),
        send("250-raw.test\r\n250\r\n"),
        expect("MAIL"),
        send("250\r\n"),
        expect("RCPT"),
        send("250\r\n"),
        expect("DATA"),
        send("354\r\n"),
        data(),
        send("250\r\n"),
    ];
    let srv = Raw::start(vec![bare], None);
    let (_d, sp) = spool();
    let c = cfg(&sp, &[srv.url("127.0.0.1", "tls=none")]);
    let (_id, s) = one(&c, MSG);
    assert_eq!((s.delivered, s.deferred, s.failed), (1, 0, 0));
    // delivered once: one message with its final dot, nothing left to send again
    let m = &srv.connections(1)[0]["messages"];
    assert_eq!(
        (m.as_array().unwrap().len(), &m[0]["size"], &m[0]["dot"]),
        (1, &json!(MSG.len()), &json!(true))
    );
    assert!(files(sp.path(), "deferred").is_empty() && files(sp.path(), "ready").is_empty());
    assert_eq!(Dispatcher::drain(c).unwrap().delivered, 0);
    // control: the same with text
    let ok = Raw::start(vec![good(&[])], None);
    let (_d2, sp2) = spool();
    assert_eq!(
        one(&cfg(&sp2, &[ok.url("127.0.0.1", "tls=none")]), MSG)
            .1
            .delivered,
        1
    );
}

fn tls_session(injected: &str) -> Vec<Value> {
    let mut v = vec![
        send("220 raw.test\r\n"),
        expect("EHLO"),
        send(&ehlo_reply(&["STARTTLS", "PIPELINING"])),
        expect("STARTTLS"),
        send(&format!("220 2.0.0 go ahead\r\n{injected}")),
        json!({"starttls": true}),
        expect("EHLO"),
        send(&ehlo_reply(&["PIPELINING"])),
    ];
    v.extend(transaction());
    v
}

#[test]
fn bytes_after_starttls_220_are_a_protocol_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path(), "localhost", "DNS:localhost,IP:127.0.0.1");
    let srv = Raw::start(
        vec![tls_session("250-injected\r\n250 2.0.0 queued\r\n")],
        Some((&cert, &key)),
    );
    let (_d, sp) = spool();
    let mut c = cfg(&sp, &[]);
    c.relays = vec![RelayConfig {
        url: Some(srv.url("localhost", "tls=required")),
        ca_file: Some(cert.clone()),
        cooldown_secs: 60,
        ..Default::default()
    }];
    let id = write_raw_spool(sp.path(), "a@example.com", &["b@example.org"], MSG);
    let id2 = write_raw_spool(sp.path(), "a@example.com", &["b@example.org"], MSG);
    let s = Dispatcher::drain(c).unwrap();
    assert_eq!((s.delivered, s.deferred, s.failed), (0, 2, 0));
    let (d, d2) = (diagnosis(&sp, &id), diagnosis(&sp, &id2));
    // one message met the injection; the relay then was in cooldown for the other
    let (inj, cool) = if d.contains("CVE") { (d, d2) } else { (d2, d) };
    assert!(
        inj.contains("CVE-2011-0411") && inj.contains("250-injected"),
        "{inj}"
    );
    assert!(cool.contains("cooldown"), "{cool}");
    let lines = srv.lines(0);
    assert_eq!(mails(&lines), 0, "{lines:?}");
    assert_eq!(
        srv.connections(1)[0]["tls"],
        false,
        "dropped before the handshake"
    );
    assert_eq!(srv.connections(1).len(), 1);

    // control: nothing injected: TLS, EHLO again inside it, delivered
    let ok = Raw::start(vec![tls_session("")], Some((&cert, &key)));
    let (_d2, sp2) = spool();
    let mut c2 = cfg(&sp2, &[]);
    c2.relays = vec![RelayConfig {
        url: Some(ok.url("localhost", "tls=required")),
        ca_file: Some(cert.clone()),
        ..Default::default()
    }];
    assert_eq!(one(&c2, MSG).1.delivered, 1);
    let c0 = &ok.connections(1)[0];
    assert_eq!(c0["tls"], true);
    let lines = ok.lines(0);
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("EHLO")).count(),
        2,
        "{lines:?}"
    );

    // without STARTTLS, EHLO is sent once
    let plain = Raw::start(vec![good(&[])], None);
    let (_d3, sp3) = spool();
    assert_eq!(
        one(&cfg(&sp3, &[plain.url("127.0.0.1", "tls=none")]), MSG)
            .1
            .delivered,
        1
    );
    let lines = plain.lines(0);
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("EHLO")).count(),
        1,
        "{lines:?}"
    );
}

/// A message of exactly `n` bytes.
fn sized(n: usize) -> Vec<u8> {
    let mut m = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: big\r\n\r\n".to_vec();
    while m.len() + 72 <= n {
        m.extend_from_slice(&[b'x'; 70]);
        m.extend_from_slice(b"\r\n");
    }
    let left = n - m.len();
    if left >= 2 {
        m.extend(std::iter::repeat_n(b'y', left - 2));
        m.extend_from_slice(b"\r\n");
    } else {
        m.extend(std::iter::repeat_n(b'z', left));
    }
    assert_eq!(m.len(), n);
    m
}

#[test]
fn size_over_the_relay_limit_is_not_sent() {
    let body = sized(62_179);
    let small = Raw::start(vec![good(&["SIZE 20000"])], None);
    let (_d, sp) = spool();
    let (id, s) = one(&cfg(&sp, &[small.url("127.0.0.1", "tls=none")]), &body);
    assert_eq!((s.delivered, s.failed), (0, 1));
    let d = diagnosis(&sp, &id);
    assert!(d.contains("62179") && d.contains("20000"), "{d}");
    assert_eq!(mails(&small.lines(0)), 0);

    // a chain: the small relay first, a larger one behind it takes the message
    let small2 = Raw::start(vec![good(&["SIZE 20000"])], None);
    let large = Raw::start(vec![good(&["SIZE 100000"])], None);
    let (_d2, sp2) = spool();
    let mut c = cfg(
        &sp2,
        &[
            small2.url("127.0.0.1", "tls=none&priority=0"),
            large.url("127.0.0.1", "tls=none&priority=1"),
        ],
    );
    c.workers = 1;
    assert_eq!(one(&c, &body).1.delivered, 1);
    drop(c);
    let lines = large.lines(0);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("MAIL FROM:<a@example.com> SIZE=62179")),
        "{lines:?}"
    );
    assert_eq!(large.connections(1)[0]["messages"][0]["size"], 62_179);
    // control: under the limit, sent with SIZE= declared
    let ok = Raw::start(vec![good(&["SIZE 100000"])], None);
    let (_d3, sp3) = spool();
    assert_eq!(
        one(&cfg(&sp3, &[ok.url("127.0.0.1", "tls=none")]), &body)
            .1
            .delivered,
        1
    );
}

#[test]
fn eight_bit_message_never_to_a_relay_without_8bitmime() {
    let body = "From: a@example.com\r\nSubject: t\r\n\r\ngrüße\r\n".as_bytes();
    let srv = Raw::start(vec![good(&[])], None);
    let (_d, sp) = spool();
    let (id, s) = one(&cfg(&sp, &[srv.url("127.0.0.1", "tls=none")]), body);
    assert_eq!(s.failed, 1);
    assert!(
        diagnosis(&sp, &id).contains("8BITMIME"),
        "{}",
        diagnosis(&sp, &id)
    );
    assert_eq!(mails(&srv.lines(0)), 0);
    // control: offered, declared
    let ok = Raw::start(vec![good(&["8BITMIME"])], None);
    let (_d2, sp2) = spool();
    assert_eq!(
        one(&cfg(&sp2, &[ok.url("127.0.0.1", "tls=none")]), body)
            .1
            .delivered,
        1
    );
    assert!(
        ok.lines(0).iter().any(|l| l.ends_with("BODY=8BITMIME")),
        "{:?}",
        ok.lines(0)
    );
}

#[test]
fn disconnect_at_every_step_defers() {
    for caps in [&[][..], &["PIPELINING"][..]] {
        let g = good(caps);
        // cut the well-behaved script after each of its steps (the server then closes)
        for cut in 0..g.len() - 1 {
            let mut steps: Vec<Value> = g[..cut].to_vec();
            steps.push(close());
            let srv = Raw::start(vec![steps], None);
            let (_d, sp) = spool();
            let (id, s) = one(&cfg(&sp, &[srv.url("127.0.0.1", "tls=none")]), MSG);
            assert_eq!(
                (s.delivered, s.deferred, s.failed),
                (0, 1, 0),
                "{caps:?} cut after step {cut}: {}",
                diagnosis(&sp, &id)
            );
            let st = MessageState::load(sp.path(), id.as_str()).unwrap().unwrap();
            assert_eq!(st.attempts, 1, "{caps:?} cut {cut}");
        }
        // the full script: delivered
        let srv = Raw::start(vec![g], None);
        let (_d, sp) = spool();
        assert_eq!(
            one(&cfg(&sp, &[srv.url("127.0.0.1", "tls=none")]), MSG)
                .1
                .delivered,
            1
        );
    }
}

#[test]
fn multi_line_garbage_is_a_protocol_error_quoted() {
    let cases = [
        ("EHLO", "250-raw.test\r\nGARBAGE\x01 here\r\n250 ok\r\n"),
        ("RCPT", "550-no\r\n551 the code changed\r\n"),
        ("MAIL", "HTTP/1.1 400 Bad Request\r\n"),
    ];
    for (at, reply) in cases {
        let mut steps = vec![send("220 raw.test\r\n"), expect("EHLO")];
        match at {
            "EHLO" => steps.push(send(reply)),
            "MAIL" => steps.extend([send(&ehlo_reply(&[])), expect("MAIL"), send(reply)]),
            _ => steps.extend([
                send(&ehlo_reply(&[])),
                expect("MAIL"),
                send("250 ok\r\n"),
                expect("RCPT"),
                send(reply),
            ]),
        }
        steps.push(json!({"sleep": 5}));
        let srv = Raw::start(vec![steps], None);
        let (_d, sp) = spool();
        let t0 = Instant::now();
        let (id, s) = one(&cfg(&sp, &[srv.url("127.0.0.1", "tls=none")]), MSG);
        assert_eq!((s.delivered, s.deferred, s.failed), (0, 1, 0), "{at}");
        // seen at once, not after a timeout
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "{at}: {:?}",
            t0.elapsed()
        );
        let d = diagnosis(&sp, &id);
        assert!(d.contains("protocol error"), "{at}: {d}");
        let quoted = match at {
            "EHLO" => "GARBAGE\\x01 here",
            "RCPT" => "551 the code changed",
            _ => "HTTP/1.1 400",
        };
        assert!(d.contains(quoted), "{at}: {d}");
        assert!(!srv.lines(0).iter().any(|l| l == "DATA"), "{at}");
    }
}

#[test]
fn relay_closing_between_messages_is_seen_and_replaced() {
    let mut first = good(&[]);
    first.push(close());
    let srv = Raw::start(vec![first, good(&[])], None);
    let (_d, sp) = spool();
    let c = cfg(&sp, &[srv.url("127.0.0.1", "tls=none")]);
    write_raw_spool(sp.path(), "a@example.com", &["b@example.org"], MSG);
    write_raw_spool(sp.path(), "a@example.com", &["b@example.org"], MSG);
    let s = Dispatcher::drain(c).unwrap();
    assert_eq!((s.delivered, s.deferred), (2, 0));
    // no attempt counted for the dead connection: no state file left
    assert!(files(sp.path(), "state").is_empty());
    let conns = srv.connections(2);
    assert_eq!(conns.len(), 2);
    assert_eq!(conns[0]["messages"].as_array().unwrap().len(), 1);
    assert_eq!(conns[1]["messages"].as_array().unwrap().len(), 1);
}

#[test]
fn rset_only_after_a_transaction_abandoned_before_end_of_data() {
    // RFC 5321 §4.1.1.4: the end-of-data reply, whatever its code, resets the relay's state;
    // RSET goes first only after a transaction abandoned before it (here: every RCPT refused)
    let rcpts = vec!["b@example.org".to_owned()];
    let yes = || true;
    let tx = Transaction {
        mail_from: "a@example.com",
        rcpts: &rcpts,
        smtputf8: false,
        eight_bit: false,
        body_len: MSG.len() as u64,
        ends_with_crlf: true,
        fence: &yes,
        checked: false,
        prefix: b"",
        next: None,
    };
    let end = |reply: &str| -> Vec<Value> {
        vec![
            expect("MAIL FROM:"),
            send("250 2.1.0 sender ok\r\n"),
            expect("RCPT TO:"),
            send("250 2.1.5 recipient ok\r\n"),
            expect("DATA"),
            send("354 go ahead\r\n"),
            data(),
            send(reply),
        ]
    };
    for caps in [&[][..], &["PIPELINING"][..]] {
        let mut steps = vec![
            send("220 raw.test ESMTP\r\n"),
            expect("EHLO"),
            send(&ehlo_reply(caps)),
            expect("MAIL FROM:"),
            send("250 2.1.0 sender ok\r\n"),
            expect("RCPT TO:"),
            send("550 5.1.1 no such user\r\n"),
        ];
        if caps.contains(&"PIPELINING") {
            // DATA went in the same write (RFC 2920 §3.1)
            steps.extend([expect("DATA"), send("554 5.5.1 no valid recipients\r\n")]);
        }
        steps.extend([expect("RSET"), send("250 2.0.0 ok\r\n")]);
        steps.extend(end("554 5.7.1 content refused\r\n"));
        steps.extend(end("250 2.0.0 queued as 1\r\n"));
        steps.extend(end("250 2.0.0 queued as 2\r\n"));
        let srv = Raw::start(vec![steps], None);
        let mut s = open(&srv);
        let status = |r: Vec<qmail_dispatch::RcptResult>| r[0].status;
        use qmail_dispatch::RcptStatus::{Delivered, Failed};
        // 1: abandoned (no recipient) -> 2: RSET first; its end-of-data refused (a clean end)
        // -> 3 and 4: no RSET
        assert_eq!(status(s.send(&tx, MSG).unwrap()), Failed, "{caps:?}");
        assert_eq!(status(s.send(&tx, MSG).unwrap()), Failed, "{caps:?}");
        assert_eq!(status(s.send(&tx, MSG).unwrap()), Delivered, "{caps:?}");
        assert_eq!(status(s.send(&tx, MSG).unwrap()), Delivered, "{caps:?}");
        s.quit();
        let c = &srv.connections(1)[0];
        assert_eq!(c["errors"], json!([]), "{caps:?}: {c}");
        let lines = srv.lines(0);
        let verbs: Vec<&str> = lines
            .iter()
            .filter_map(|l| {
                ["RSET", "MAIL", "QUIT"]
                    .into_iter()
                    .find(|v| l.starts_with(v))
            })
            .collect();
        assert_eq!(
            verbs,
            ["MAIL", "RSET", "MAIL", "MAIL", "MAIL", "QUIT"],
            "{caps:?}: {lines:?}"
        );
    }
}

#[test]
fn a_relay_that_stops_reading_the_message_times_out_at_data_block_secs() {
    // the relay answers 354 and then reads nothing: the body's writes block once the socket
    // buffers are full. The command batch left a shorter send timeout (command_secs = 1) on
    // the socket; it only wakes the write early, which goes on to data_block_secs (3)
    let srv = Raw::start(
        vec![vec![
            send("220 raw.test ESMTP\r\n"),
            expect("EHLO"),
            send(&ehlo_reply(&["PIPELINING"])),
            expect("MAIL FROM:"),
            send("250 2.1.0 sender ok\r\n"),
            expect("RCPT TO:"),
            send("250 2.1.5 recipient ok\r\n"),
            expect("DATA"),
            send("354 go ahead\r\n"),
            json!({"sleep": 30}),
        ]],
        None,
    );
    let cfg = RelayConfig::from_url(&srv.url("127.0.0.1", "tls=none"))
        .and_then(RelayConfig::resolve)
        .unwrap();
    let ep = RelayEndpoint::new(cfg).unwrap();
    let t = qmail_dispatch::TimeoutConfig {
        greeting_secs: 5,
        command_secs: 1,
        data_block_secs: 3,
        ..Default::default()
    };
    let mut s = Session::open(&ep, "client.test", &t).unwrap();
    let rcpts = vec!["b@example.org".to_owned()];
    let yes = || true;
    let body = sized(32 << 20);
    let tx = Transaction {
        mail_from: "a@example.com",
        rcpts: &rcpts,
        smtputf8: false,
        eight_bit: false,
        body_len: body.len() as u64,
        ends_with_crlf: true,
        fence: &yes,
        checked: false,
        prefix: b"",
        next: None,
    };
    let r = s.send(&tx, body.as_slice());
    assert!(
        matches!(
            r,
            Err(TxError::DiedBefore(SmtpError::Timeout {
                phase: Phase::Body,
                secs: 3
            }))
        ),
        "{r:?}"
    );
    s.abort();
}

fn c_head(srv: &Raw) -> String {
    srv.connections(1)[0]["messages"][0]["head"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// A reader that fails after `n` bytes.
struct Failing {
    left: usize,
}

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("disk on fire"));
        }
        let n = buf.len().min(self.left).min(1000);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = if i % 100 == 99 {
                b'\n'
            } else if i % 100 == 98 {
                b'\r'
            } else {
                b'a'
            };
        }
        self.left -= n;
        Ok(n)
    }
}

fn open(srv: &Raw) -> Session {
    let cfg = RelayConfig::from_url(&srv.url("127.0.0.1", "tls=none"))
        .and_then(RelayConfig::resolve)
        .unwrap();
    let ep = RelayEndpoint::new(cfg).unwrap();
    let t = qmail_dispatch::TimeoutConfig {
        greeting_secs: 5,
        data_end_secs: 5,
        ..Default::default()
    };
    Session::open(&ep, "client.test", &t).unwrap()
}

#[test]
fn read_error_mid_body_drops_without_the_final_dot() {
    let srv = Raw::start(vec![good(&[])], None);
    let mut s = open(&srv);
    let rcpts = vec!["b@example.org".to_owned()];
    let yes = || true;
    let tx = Transaction {
        mail_from: "a@example.com",
        rcpts: &rcpts,
        smtputf8: false,
        eight_bit: false,
        body_len: 300_000,
        ends_with_crlf: true,
        fence: &yes,
        checked: false,
        prefix: b"",
        next: None,
    };
    let r = s.send(&tx, Failing { left: 150_000 });
    assert!(
        matches!(r, Err(TxError::Body(BodyError::Read(ref e))) if e.contains("disk on fire")),
        "{r:?}"
    );
    s.abort();
    let c = &srv.connections(1)[0];
    assert_eq!(c["messages"][0]["dot"], false, "{c}");
    assert!(c["messages"][0]["size"].as_u64().unwrap() < 150_000);
}

#[test]
fn the_fence_stops_before_data_and_before_the_final_dot() {
    let rcpts = vec!["b@example.org".to_owned()];
    let no = || false;
    // small message: no DATA at all
    let srv = Raw::start(vec![good(&[])], None);
    let mut s = open(&srv);
    let tx = Transaction {
        mail_from: "a@example.com",
        rcpts: &rcpts,
        smtputf8: false,
        eight_bit: false,
        body_len: MSG.len() as u64,
        ends_with_crlf: true,
        fence: &no,
        checked: false,
        prefix: b"",
        next: None,
    };
    assert!(matches!(s.send(&tx, MSG), Err(TxError::Fenced)));
    s.abort();
    assert!(
        !srv.lines(0).iter().any(|l| l == "DATA"),
        "{:?}",
        srv.lines(0)
    );
    // small message with PIPELINING: DATA leaves with MAIL and RCPT, and the one check,
    // after the 354, stops before any byte of the message: no final dot
    let srv = Raw::start(vec![good(&["PIPELINING"])], None);
    let mut s = open(&srv);
    let calls = std::cell::Cell::new(0);
    let counted_no = || {
        calls.set(calls.get() + 1);
        false
    };
    let tx_p = Transaction {
        fence: &counted_no,
        ..tx
    };
    assert!(matches!(s.send(&tx_p, MSG), Err(TxError::Fenced)));
    s.abort();
    assert_eq!(calls.get(), 1, "one fence per pipelined message");
    let c = &srv.connections(1)[0];
    assert_eq!(c["messages"][0]["dot"], false, "{c}");
    assert_eq!(c["messages"][0]["size"], 0, "{c}");
    // large message: the fence turns false during the body: no final dot
    let srv = Raw::start(vec![good(&[])], None);
    let mut s = open(&srv);
    let calls = std::cell::Cell::new(0);
    let second_no = || {
        calls.set(calls.get() + 1);
        calls.get() == 1
    };
    let body = sized(200_000);
    let tx = Transaction {
        body_len: body.len() as u64,
        fence: &second_no,
        ..tx
    };
    assert!(matches!(s.send(&tx, body.as_slice()), Err(TxError::Fenced)));
    s.abort();
    let c = &srv.connections(1)[0];
    assert_eq!(c["messages"][0]["dot"], false, "{c}");
    // control: a prefix is sent first, stuffed, and counted in SIZE=
    let srv = Raw::start(vec![good(&["SIZE 1000000"])], None);
    let mut s = open(&srv);
    let yes = || true;
    let prefix = b"X-Prefix: 1\r\n.dot\r\n";
    let tx = Transaction {
        body_len: MSG.len() as u64,
        fence: &yes,
        prefix,
        ..tx
    };
    let r = s.send(&tx, MSG).unwrap();
    assert_eq!(r[0].status, qmail_dispatch::RcptStatus::Delivered);
    s.quit();
    let lines = srv.lines(0);
    let want = format!("SIZE={}", MSG.len() + prefix.len());
    assert!(lines.iter().any(|l| l.ends_with(&want)), "{lines:?}");
    let head = c_head(&srv);
    assert!(
        head.starts_with("X-Prefix: 1\r\n..dot\r\nFrom: a@example.com"),
        "stuffed: {head:?}"
    );
}

fn auth_session(offer: &str, exchange: Vec<Value>) -> Vec<Value> {
    let mut v = vec![
        send("220 raw.test\r\n"),
        expect("EHLO"),
        send(&ehlo_reply(&["STARTTLS"])),
        expect("STARTTLS"),
        send("220 go\r\n"),
        json!({"starttls": true}),
        expect("EHLO"),
        send(&ehlo_reply(&[offer, "PIPELINING"])),
    ];
    v.extend(exchange);
    v.extend(transaction());
    v
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn auth_xoauth2_reads_the_token_file_at_each_auth_and_login_works() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path(), "localhost", "DNS:localhost,IP:127.0.0.1");
    let token_file = dir.path().join("token");
    let ok = vec![expect("AUTH XOAUTH2 "), send("235 2.7.0 accepted\r\n")];
    let srv = Raw::start(
        vec![
            auth_session("AUTH XOAUTH2 PLAIN", ok.clone()),
            auth_session("AUTH XOAUTH2", ok),
        ],
        Some((&cert, &key)),
    );
    let (_d, sp) = spool();
    let mut c = cfg(&sp, &[]);
    c.relays = vec![RelayConfig {
        url: Some(srv.url("localhost", "tls=required")),
        username: Some("app@example.com".into()),
        token_file: Some(token_file.clone()),
        ca_file: Some(cert.clone()),
        max_messages_per_connection: 1,
        ..Default::default()
    }];
    std::fs::write(&token_file, "tok-one\n").unwrap();
    assert_eq!(one(&c, MSG).1.delivered, 1);
    // the refresher rewrote the file: the next AUTH sends the new token
    std::fs::write(&token_file, "tok-two\n").unwrap();
    assert_eq!(one(&c, MSG).1.delivered, 1);
    for (i, tok) in ["tok-one", "tok-two"].iter().enumerate() {
        let want = format!(
            "AUTH XOAUTH2 {}",
            b64(&format!(
                "user=app@example.com\x01auth=Bearer {tok}\x01\x01"
            ))
        );
        assert!(srv.lines(i).contains(&want), "{:?}", srv.lines(i));
    }

    // LOGIN when only LOGIN is offered; a refusal names AUTH and never the secret
    let login = vec![
        expect("AUTH LOGIN"),
        send("334 VXNlcm5hbWU6\r\n"),
        expect(&b64("app@example.com")),
        send("334 UGFzc3dvcmQ6\r\n"),
        expect(&b64("s3cret")),
        send("235 ok\r\n"),
    ];
    let refuse = vec![expect("AUTH LOGIN"), send("535 5.7.8 no\r\n")];
    let srv = Raw::start(
        vec![
            auth_session("AUTH LOGIN", login),
            auth_session("AUTH LOGIN", refuse),
        ],
        Some((&cert, &key)),
    );
    let (_d2, sp2) = spool();
    let mut c2 = cfg(&sp2, &[]);
    c2.relays = vec![RelayConfig {
        url: Some(srv.url("localhost", "tls=required")),
        username: Some("app@example.com".into()),
        password: Some("s3cret".into()),
        ca_file: Some(cert.clone()),
        max_messages_per_connection: 1,
        ..Default::default()
    }];
    assert_eq!(one(&c2, MSG).1.delivered, 1);
    let (id, s) = one(&c2, MSG);
    assert_eq!(s.deferred, 1);
    let d = diagnosis(&sp2, &id);
    assert!(d.starts_with("535 AUTH failed: 5.7.8 no"), "{d}");
    let state = std::fs::read_to_string(
        sp2.path()
            .join("state")
            .join(format!("{}.json", id.as_str())),
    )
    .unwrap_or_default();
    assert!(!state.contains("s3cret") && !state.contains(&b64("s3cret")));
}

/// The next message's MAIL, RCPT and DATA leave in the same write as the current end-of-data
/// (RFC 2920 §3.1): this relay answers the first end-of-data only after it has read the next
/// transaction's DATA, so a client that waited for that reply first would stall to its
/// timeout. The next send takes the commands up (no second MAIL on the wire) and reads their
/// replies; a send for another envelope abandons the session.
#[test]
fn the_next_transaction_rides_behind_the_end_of_data() {
    let rcpts = vec!["b@example.org".to_owned()];
    let yes = || true;
    let offers = std::cell::Cell::new(0);
    let next_b = || {
        offers.set(offers.get() + 1);
        Some(qmail_dispatch::smtp::NextTx {
            mail_from: "a@example.com".into(),
            rcpts: vec!["b@example.org".into()],
            smtputf8: false,
            eight_bit: false,
            body_len: MSG.len() as u64,
        })
    };
    let tx = Transaction {
        mail_from: "a@example.com",
        rcpts: &rcpts,
        smtputf8: false,
        eight_bit: false,
        body_len: MSG.len() as u64,
        ends_with_crlf: true,
        fence: &yes,
        checked: false,
        prefix: b"",
        next: Some(&next_b),
    };
    let steps = vec![
        send("220 raw.test ESMTP\r\n"),
        expect("EHLO"),
        send(&ehlo_reply(&["PIPELINING"])),
        expect("MAIL FROM:"),
        expect("RCPT TO:"),
        expect("DATA"),
        send("250 2.1.0 sender ok\r\n250 2.1.5 recipient ok\r\n354 go ahead\r\n"),
        data(),
        // the next group must already be here before the first end-of-data is answered
        expect("MAIL FROM:<a@example.com>"),
        expect("RCPT TO:<b@example.org>"),
        expect("DATA"),
        send(
            "250 2.0.0 queued as 1\r\n250 2.1.0 sender ok\r\n452 4.2.2 mailbox full\r\n354 go ahead\r\n",
        ),
        // every recipient of the chained transaction was refused: a lone dot (RFC 2920 §3.1)
        data(),
        send("554 5.5.1 no valid recipients\r\n"),
    ];
    let srv = Raw::start(vec![steps], None);
    let mut s = open(&srv);
    let r = s.send(&tx, MSG).unwrap();
    assert_eq!(r[0].status, qmail_dispatch::RcptStatus::Delivered);
    assert!(r[0].reply.to_string().contains("queued as 1"), "{:?}", r[0]);
    assert!(s.has_preissued());
    assert_eq!(offers.get(), 1);
    let no_more = Transaction { next: None, ..tx };
    let r = s.send(&no_more, MSG).unwrap();
    assert_eq!(r[0].status, qmail_dispatch::RcptStatus::Deferred, "{r:?}");
    assert!(
        r[0].reply.to_string().contains("mailbox full"),
        "{:?}",
        r[0]
    );
    assert!(!s.has_preissued());
    s.quit();
    let lines = srv.lines(0);
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("MAIL FROM")).count(),
        2,
        "{lines:?}"
    );
    assert!(
        srv.connections(1)[0]["errors"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // a send for another envelope than the one announced: the session is given up, nothing
    // is written into the announced transaction's DATA
    let steps = vec![
        send("220 raw.test ESMTP\r\n"),
        expect("EHLO"),
        send(&ehlo_reply(&["PIPELINING"])),
        expect("MAIL FROM:"),
        expect("RCPT TO:"),
        expect("DATA"),
        send("250 2.1.0 sender ok\r\n250 2.1.5 recipient ok\r\n354 go ahead\r\n"),
        data(),
        expect("MAIL FROM:"),
        expect("RCPT TO:"),
        expect("DATA"),
        send(
            "250 2.0.0 queued as 1\r\n250 2.1.0 sender ok\r\n250 2.1.5 recipient ok\r\n354 go ahead\r\n",
        ),
        data(),
    ];
    let srv = Raw::start(vec![steps], None);
    let mut s = open(&srv);
    s.send(&tx, MSG).unwrap();
    let other = vec!["c@example.org".to_owned()];
    let tx_c = Transaction {
        rcpts: &other,
        next: None,
        ..tx
    };
    assert!(matches!(s.send(&tx_c, MSG), Err(TxError::DiedBefore(_))));
    s.abort();
    let c = &srv.connections(1)[0];
    assert_eq!(c["messages"].as_array().unwrap().len(), 2, "{c}");
    assert_eq!(c["messages"][1]["dot"], false, "{c}");
    assert!(!srv.lines(0).iter().any(|l| l.contains("c@example.org")));

    // without PIPELINING nothing is chained, and the next message is not even asked for
    let srv = Raw::start(vec![good(&[])], None);
    let mut s = open(&srv);
    offers.set(0);
    s.send(&tx, MSG).unwrap();
    assert_eq!(offers.get(), 0);
    assert!(!s.has_preissued());
    s.quit();
}

/// A dispatcher chains messages on one connection; a relay that closes right after an
/// end-of-data reply loses the chained commands, and that message goes on a new connection:
/// each message is delivered once.
#[test]
fn a_relay_closing_behind_a_chained_end_of_data_loses_nothing() {
    let pipelined = |first: bool| -> Vec<Value> {
        let mut v = vec![
            send("220 raw.test ESMTP\r\n"),
            expect("EHLO"),
            send(&ehlo_reply(&["PIPELINING"])),
        ];
        v.extend(transaction());
        if first {
            v.push(close());
        } else {
            v.extend(transaction());
            v.extend(transaction());
        }
        v
    };
    let srv = Raw::start(vec![pipelined(true), pipelined(false)], None);
    let (_d, spool) = spool();
    let c = cfg(&spool, &[srv.url("127.0.0.1", "tls=none")]);
    for _ in 0..3 {
        write_raw_spool(&c.spools[0], "a@example.com", &["b@example.org"], MSG);
    }
    let sum = Dispatcher::drain(c).unwrap();
    assert_eq!((sum.delivered, sum.deferred), (3, 0), "{sum:?}");
    let conns = srv.connections(2);
    let dots = |i: usize| {
        conns[i]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["dot"] == true)
            .count()
    };
    assert_eq!((dots(0), dots(1)), (1, 2), "{conns:?}");
}
