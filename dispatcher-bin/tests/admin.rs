//! The operator's view against real spools, the real binary and a real SMTP server
//! (aiosmtpd): `list`, `hold`, `release`, `delete`, `cat`, `summary`, `find`,
//! `requeue-failed`, the read-only status view, retention, configuration errors with line
//! and column, the HTTP listener (metrics, healthz, API with its token), counters across
//! SIGHUP, flat JSON logs, and the Grafana dashboard against a real scrape.

#[path = "../../qmail-dispatch/tests/dispatch_common/mod.rs"]
mod dispatch_common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dispatch_common::*;
use dispatch_common::{free_port, http};
use qmail_core::spool::status::{self, State};
use qmail_core::{Message, QueueId, Spool, SpoolOptions};

const BIN: &str = env!("CARGO_BIN_EXE_qmail-dispatcher");

fn spool_at(dir: &Path) -> Spool {
    Spool::open_with(
        dir.join("spool"),
        SpoolOptions {
            durable: false,
            ..Default::default()
        },
    )
    .unwrap()
}

fn submit(spool: &Spool, to: &str, subject: &str) -> QueueId {
    let m = Message::builder()
        .from("noreply@example.com")
        .to(to)
        .subject(subject)
        .text("hello operator")
        .build()
        .unwrap();
    spool.submit(&m).unwrap()
}

fn write_config(dir: &Path, spool: &Path, relays: &[String], extra: &str) -> PathBuf {
    let mut s = format!(
        "spools = [{:?}]\nworkers = 2\nehlo_name = \"dispatcher.test\"\nlease_secs = 3\nrescan_ms = 300\ndurable = false\ndelivery_log = {:?}\n{extra}\n[retry]\nfirst_secs = 3600\njitter = 0.0\n[timeouts]\nconnect_secs = 5\ncommand_secs = 10\ndata_end_secs = 10\n",
        spool.to_string_lossy(),
        dir.join("delivery.log").to_string_lossy(),
    );
    for r in relays {
        s.push_str(&format!("[[relay]]\nurl = {r:?}\ncooldown_secs = 0\n"));
    }
    let p = dir.join("c.toml");
    std::fs::write(&p, s).unwrap();
    p
}

fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("QMAIL_LOG", "warn")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

fn dir_of(spool: &Path, id: &str) -> Option<String> {
    status::locate(spool, id).map(|(d, _, _)| d.dir_name().to_owned())
}

#[test]
fn list_hold_release_delete_cat_summary_find_requeue() {
    let srv = SmtpServer::start(&[
        "--rcpt-reject",
        "m1@example.org:550",
        "--rcpt-reject",
        "m2@example.org:451",
    ]);
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let sp = spool.path().to_owned();
    let ids: Vec<QueueId> = (0..4)
        .map(|i| {
            submit(
                &spool,
                &format!("m{i}@example.org"),
                &format!("subject {i}"),
            )
        })
        .collect();
    let id = |i: usize| ids[i].as_str().to_owned();
    let cfg = write_config(d.path(), &sp, &[srv.url("tls=none")], "");
    let c = cfg.to_str().unwrap();

    // hold before the drain: never claimed
    let o = cli(&["--config", c, "hold", &id(3), "--json"]);
    assert!(o.status.success(), "{o:?}");
    let v = json(&o);
    assert_eq!(v["results"][0]["outcome"], "done");
    assert_eq!(v["results"][0]["from"], "ready");
    assert_eq!(v["results"][0]["to"], "hold");
    assert_eq!(dir_of(&sp, &id(3)).as_deref(), Some("hold"));

    let o = cli(&["--config", c, "drain"]);
    assert_eq!(
        stdout(&o).trim(),
        "delivered 1, deferred 1, failed 1, corrupt 0"
    );
    assert_eq!(srv.delivered().len(), 1);
    assert_eq!(
        dir_of(&sp, &id(3)).as_deref(),
        Some("hold"),
        "held: not claimed"
    );

    // list --json: mailq's fields
    let v = json(&cli(&["--config", c, "list", "--json"]));
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3, "{v}");
    let by = |i: usize| {
        msgs.iter()
            .find(|m| m["id"] == id(i).as_str())
            .unwrap_or_else(|| panic!("{} not listed: {v}", id(i)))
    };
    assert_eq!(by(1)["state"], "failed");
    assert!(by(1)["reasons"][0].as_str().unwrap().contains("550"), "{v}");
    let def = by(2);
    assert_eq!(def["state"], "deferred");
    assert_eq!(def["attempts"], 1);
    assert!(
        def["last_reply"].as_str().unwrap().starts_with("451"),
        "{def}"
    );
    assert!(def["next_attempt"].as_i64().unwrap() > qmail_core::spool::now_secs() + 3000);
    assert_eq!(def["sender"], "noreply@example.com");
    assert_eq!(def["recipients"][0], "m2@example.org");
    assert_eq!(def["priority"], 3);
    assert!(def["size"].as_u64().unwrap() > 100);
    assert!(def["created"].is_i64());
    assert_eq!(by(3)["state"], "held");

    // filters
    let v = json(&cli(&[
        "--config", c, "list", "--state", "deferred", "--json",
    ]));
    assert_eq!(v["messages"].as_array().unwrap().len(), 1);
    let v = json(&cli(&[
        "--config",
        c,
        "list",
        "--rcpt",
        "M1@EXAMPLE.org",
        "--json",
    ]));
    assert_eq!(v["messages"][0]["id"], id(1).as_str());
    let v = json(&cli(&[
        "--config",
        c,
        "list",
        "--rcpt",
        "@example.org",
        "--json",
    ]));
    assert_eq!(v["messages"].as_array().unwrap().len(), 3);
    let v = json(&cli(&["--config", c, "list", "--from", "x@y.z", "--json"]));
    assert_eq!(v["messages"].as_array().unwrap().len(), 0);
    let v = json(&cli(&["--config", c, "list", "--older", "3600", "--json"]));
    assert_eq!(v["messages"].as_array().unwrap().len(), 0);
    assert!(
        !cli(&["--config", c, "list", "--state", "lost"])
            .status
            .success()
    );

    // human list: RFC 3339 and relative times
    let text = stdout(&cli(&["--config", c, "list"]));
    assert!(text.contains(&id(2)) && text.contains("451"), "{text}");
    assert!(
        text.contains("just now") || text.contains(" s ago"),
        "{text}"
    );
    assert!(
        text.contains("next attempt 20") && text.contains("Z (in "),
        "{text}"
    );
    assert!(text.contains("in 3 message(s)"), "{text}");
    let text = stdout(&cli(&["--config", c, "show", &id(2)]));
    assert!(
        text.contains("next due    20") && text.contains("(in "),
        "{text}"
    );
    let text = stdout(&cli(&["--config", c, "status"]));
    assert!(text.contains("hold               1"), "{text}");

    // release: back to ready (no retry time ahead), goes out at the next drain
    let o = cli(&["--config", c, "release", &id(3)]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        stdout(&o).contains("released (hold/ -> ready/)"),
        "{}",
        stdout(&o)
    );
    // a deferred message keeps its retry time through hold/release
    assert!(cli(&["--config", c, "hold", &id(2)]).status.success());
    assert_eq!(dir_of(&sp, &id(2)).as_deref(), Some("hold"));
    let o = cli(&["--config", c, "release", &id(2), "--json"]);
    assert_eq!(json(&o)["results"][0]["to"], "deferred");
    // wrong states and bad ids
    let o = cli(&["--config", c, "release", &id(1)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is in failed/"), "{}", stderr(&o));
    let o = cli(&["--config", c, "hold", "../../etc/passwd"]);
    assert!(!o.status.success());
    let o = cli(&["--config", c, "hold"]);
    assert!(!o.status.success(), "hold needs ids");

    // cat: the message as it goes on the wire
    let o = cli(&["--config", c, "cat", &id(3)]);
    assert!(o.status.success());
    let wire = o.stdout.clone();
    assert!(
        wire.windows(11).any(|w| w == b"Subject: su"),
        "{}",
        stdout(&o)
    );
    assert!(wire.windows(14).any(|w| w == b"hello operator"));
    // CRLF line ends only (no bare CR or LF)
    for (i, b) in wire.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(wire.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
            b'\n' => assert!(i > 0 && wire[i - 1] == b'\r', "bare LF at {i}"),
            _ => {}
        }
    }
    let o = cli(&["--config", c, "cat", &id(3), "--headers"]);
    assert!(o.stdout.ends_with(b"\r\n\r\n"));
    assert!(!o.stdout.windows(14).any(|w| w == b"hello operator"));
    let v = json(&cli(&["--config", c, "cat", &id(3), "--json"]));
    assert!(v["message"].as_str().unwrap().contains("hello operator"));
    assert!(
        !cli(&["--config", c, "cat", &id(0)]).status.success(),
        "delivered: gone"
    );

    // summary (qshape): recipients by domain × age
    let v = json(&cli(&["--config", c, "summary", "--json"]));
    assert_eq!(v["rows"][0]["domain"], "TOTAL");
    assert_eq!(v["rows"][0]["total"], 2, "ready + deferred: {v}");
    assert_eq!(v["rows"][1]["domain"], "example.org");
    assert_eq!(v["rows"][1]["buckets"][0], 2, "all under 5 minutes");
    let v = json(&cli(&[
        "--config", c, "summary", "--state", "failed", "--json",
    ]));
    assert_eq!(v["rows"][0]["total"], 1);
    let text = stdout(&cli(&["--config", c, "summary"]));
    assert!(
        text.contains("example.org") && text.contains("1280+"),
        "{text}"
    );

    // delete: never a message in flight
    let ready = sp.join("ready").join(id(3));
    let active = sp.join("active").join(format!("{}+other-instance", id(3)));
    std::fs::rename(&ready, &active).unwrap();
    let o = cli(&["--config", c, "delete", &id(3)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("in flight"), "{}", stderr(&o));
    assert!(active.exists());
    let v = json(&cli(&["--config", c, "delete", &id(3), "--json"]));
    assert_eq!(v["results"][0]["outcome"], "in_flight");
    std::fs::rename(&active, &ready).unwrap();
    assert!(cli(&["--config", c, "delete", &id(3)]).status.success());
    assert_eq!(dir_of(&sp, &id(3)), None);
    assert!(
        !cli(&["--config", c, "delete", "--state", "failed"])
            .status
            .success(),
        "--state without --all is refused"
    );
    assert!(!cli(&["--config", c, "delete", "--all"]).status.success());
    assert!(
        !cli(&["--config", c, "delete", "--state", "active", "--all"])
            .status
            .success()
    );

    // requeue-failed: ids or an explicit --all
    let o = cli(&["--config", c, "requeue-failed"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--all"), "{}", stderr(&o));
    assert_eq!(dir_of(&sp, &id(1)).as_deref(), Some("failed"));
    let v = json(&cli(&["--config", c, "requeue-failed", "--all", "--json"]));
    assert_eq!(v["moved"][0], id(1).as_str());
    assert_eq!(dir_of(&sp, &id(1)).as_deref(), Some("ready"));
    // and delete --state ready --all clears it
    let v = json(&cli(&[
        "--config", c, "delete", "--state", "ready", "--all", "--json",
    ]));
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    assert!(!sp.join("state").join(format!("{}.json", id(1))).exists());

    // find: over the delivery log, messages already gone included
    let v = json(&cli(&[
        "--config",
        c,
        "find",
        "--rcpt",
        "m0@example.org",
        "--json",
    ]));
    let a = &v["attempts"][0];
    assert_eq!(a["id"], id(0).as_str());
    assert_eq!(a["all_delivered"], true);
    assert_eq!(a["code"], 250);
    let mid = a["message_id"].as_str().unwrap().to_owned();
    let v = json(&cli(&[
        "--config",
        c,
        "find",
        "--message-id",
        &mid,
        "--json",
    ]));
    assert_eq!(v["attempts"].as_array().unwrap().len(), 1);
    let text = stdout(&cli(&["--config", c, "find", "--rcpt", "@example.org"]));
    assert!(
        text.contains("delivered") && text.contains("not delivered"),
        "{text}"
    );
    assert!(
        !cli(&["--config", c, "find", "--rcpt", "nobody@example.net"])
            .status
            .success()
    );
    assert!(!cli(&["--config", c, "find"]).status.success());

    // the read-only view the bindings use
    let s = status::status(&sp, &id(0), Some(&d.path().join("delivery.log"))).unwrap();
    assert_eq!(s.state, State::Delivered);
    assert!(s.delivered_at.is_some());
    let s = status::status(&sp, &id(0), None).unwrap();
    assert_eq!(s.state, State::Unknown, "no log, no sent/: unknown");
    let s = status::status(&sp, &id(2), None).unwrap();
    assert_eq!(s.state, State::Deferred);
    assert!(s.last_reply.unwrap().starts_with("451"));
    assert!(s.next_attempt.is_some());
}

#[test]
fn status_view_of_every_state() {
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let sp = spool.path().to_owned();
    let a = submit(&spool, "a@example.org", "a");
    assert_eq!(
        status::status(&sp, a.as_str(), None).unwrap().state,
        State::Queued
    );
    let m = Message::builder()
        .from("noreply@example.com")
        .to("b@example.org")
        .subject("later")
        .text("x")
        .not_before(qmail_core::spool::now_secs() + 3600)
        .build()
        .unwrap();
    let b = spool.submit(&m).unwrap();
    let s = status::status(&sp, b.as_str(), None).unwrap();
    assert_eq!(s.state, State::Scheduled);
    assert!(s.next_attempt.unwrap() > qmail_core::spool::now_secs());
    // held (hold/ created by Spool::open)
    std::fs::rename(
        sp.join("ready").join(a.as_str()),
        sp.join("hold").join(a.as_str()),
    )
    .unwrap();
    assert_eq!(
        status::status(&sp, a.as_str(), None).unwrap().state,
        State::Held
    );
    // delivered, from sent/
    std::fs::create_dir_all(sp.join("sent")).unwrap();
    std::fs::rename(
        sp.join("hold").join(a.as_str()),
        sp.join("sent").join(a.as_str()),
    )
    .unwrap();
    let s = status::status(&sp, a.as_str(), None).unwrap();
    assert_eq!(
        (s.state, s.dir.as_deref()),
        (State::Delivered, Some("sent"))
    );
    // corrupt: failed with a reason
    let c = write_raw_spool(
        &sp,
        "x@example.com",
        &["y@example.org"],
        b"Subject: x\r\n\r\nx\r\n",
    );
    let f = sp.join("ready").join(c.as_str());
    let mut bytes = std::fs::read(&f).unwrap();
    bytes.truncate(bytes.len() - 4);
    std::fs::write(sp.join("corrupt").join(c.as_str()), bytes).unwrap();
    std::fs::remove_file(f).unwrap();
    let s = status::status(&sp, c.as_str(), None).unwrap();
    assert_eq!(s.state, State::Failed);
    assert!(s.reasons[0].starts_with("corrupt"), "{s:?}");
    // unknown, and refused ids
    let u = QueueId::generate();
    assert_eq!(
        status::status(&sp, u.as_str(), None).unwrap().state,
        State::Unknown
    );
    assert!(status::status(&sp, "a/../b", None).is_err());
    assert!(status::status(&d.path().join("nope"), u.as_str(), None).is_err());
    // a state file that is not JSON is ignored, not fatal
    std::fs::create_dir_all(sp.join("state")).unwrap();
    std::fs::write(sp.join("state").join(format!("{b}.json")), b"{not json").unwrap();
    assert_eq!(status::status(&sp, b.as_str(), None).unwrap().attempts, 0);
    let l = status::list(&sp, &Default::default()).unwrap();
    assert_eq!(l.len(), 2, "{l:?}");
}

#[test]
fn retention_of_failed_and_corrupt() {
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let sp = spool.path().to_owned();
    std::fs::create_dir_all(sp.join("state")).unwrap();
    let f = submit(&spool, "f@example.org", "f");
    let c = submit(&spool, "c@example.org", "c");
    std::fs::rename(
        sp.join("ready").join(f.as_str()),
        sp.join("failed").join(f.as_str()),
    )
    .unwrap();
    std::fs::write(sp.join("state").join(format!("{f}.json")), b"{}").unwrap();
    std::fs::rename(
        sp.join("ready").join(c.as_str()),
        sp.join("corrupt").join(c.as_str()),
    )
    .unwrap();
    // young: kept
    assert!(qmail_dispatch::admin::ops::purge_expired(&sp, 3600, 3600).is_empty());
    // failed older than 1 s goes, corrupt with 0 (keep forever) stays
    let t0 = Instant::now();
    let gone = loop {
        let g = qmail_dispatch::admin::ops::purge_expired(&sp, 1, 0);
        if !g.is_empty() {
            break g;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "never expired");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(gone, [f.as_str().to_owned()]);
    assert!(!sp.join("failed").join(f.as_str()).exists());
    assert!(!sp.join("state").join(format!("{f}.json")).exists());
    assert!(sp.join("corrupt").join(c.as_str()).exists());
    // the defaults: 5 days, like Postfix's maximal_queue_lifetime
    let cfg = qmail_dispatch::DispatchConfig::default();
    assert_eq!(
        (cfg.failed_retention_secs, cfg.corrupt_retention_secs),
        (432000, 432000)
    );
}

#[test]
fn config_errors_name_file_line_column_and_relay() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("bad.toml");
    let check = |text: &str| {
        std::fs::write(&f, text).unwrap();
        let o = cli(&["--config", f.to_str().unwrap(), "check-config"]);
        assert!(!o.status.success(), "{text}");
        stderr(&o)
    };
    let e = check(
        "spools = [\"/tmp/a\"]\n[[relay]]\nurl = \"smtp://mx1.example\"\n[[relay]]\nname = \"backup\"\nurl = \"smtp://u:hunter2@mx2.example?weight=4294967296\"\n",
    );
    assert!(e.contains("bad.toml:6:7: relay 2 (backup)"), "{e}");
    assert!(e.contains("weight") && e.contains("4294967295"), "{e}");
    assert!(!e.contains("hunter2"), "never the password: {e}");
    let e = check("spools = [\"/tmp/a\"]\n[[relay]]\nurl = \"smtp://mx.example:99999\"\n");
    assert!(
        e.contains("bad.toml:3:7: relay 1") && e.contains("port"),
        "{e}"
    );
    let e = check("spools = [\"/tmp/a\"]\n[[relay]]\nhost = \"mx.example\"\nport = 99999\n");
    assert!(e.contains("bad.toml:4:8:"), "{e}");
    let e = check(
        "spools = [\"/tmp/a\"]\n[[relay]]\nurl = \"smtp://mx.example?tls=none&tls=required\"\n",
    );
    assert!(e.contains("twice"), "{e}");
    let e = check("spools = [\"/tmp/a\"]\nworkers = 0\n");
    assert!(e.contains("bad.toml:2:11:") && e.contains("workers"), "{e}");
    let e = check("spools = [\"/tmp/a\"]\n\n[retry]\nfirst_sec = 3\n");
    assert!(
        e.contains("bad.toml:4:1:") && e.contains("first_sec"),
        "{e}"
    );
    // SMTP:// in capitals is a valid scheme (RFC 3986 §3.1)
    std::fs::write(
        &f,
        "spools = [\"/tmp/a\"]\n[[relay]]\nurl = \"SMTP://MX.example:2525?tls=none\"\n",
    )
    .unwrap();
    let o = cli(&["--config", f.to_str().unwrap(), "check-config"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("relay mx.example:2525"),
        "{}",
        stdout(&o)
    );
    // from the command line: which --relay
    let o = cli(&[
        "--spool",
        "/tmp/a",
        "--relay",
        "smtp://ok.example",
        "--relay",
        "smtp://x.example?weight=-1",
        "check-config",
    ]);
    assert!(stderr(&o).contains("--relay 2"), "{}", stderr(&o));
}

// ---- the HTTP listener ----

fn wait_http(port: u16) {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(15), "no http listener");
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(t0.elapsed() < timeout, "the dispatcher did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `/metrics` until `pred` holds.
fn scrape_until(port: u16, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let (code, body) = http(port, "GET", "/metrics", None);
        if code == 200 && pred(&body) {
            return body;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "{what}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metric_value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The metric names a scrape exposes (families and their series).
fn exposed_names(scrape: &str) -> std::collections::BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn http_metrics_api_tokens_sighup_and_the_dashboard() {
    let srv = SmtpServer::start(&["--rcpt-reject", "slow@example.org:451"]);
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let sp = spool.path().to_owned();
    let port = free_port();
    let token = "0123456789abcdef0123";
    let cfg = write_config(
        d.path(),
        &sp,
        &[format!("{}&name=relay-a", srv.url("tls=none"))],
        &format!(
            "log_format = \"json\"\n[http]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{token}\"\n"
        ),
    );
    let log = std::fs::File::create(d.path().join("stderr.log")).unwrap();
    let mut p = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .env("QMAIL_LOG", "info")
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_http(port);
    for i in 0..3 {
        submit(&spool, &format!("ok{i}@example.org"), "hi");
    }
    let slow = submit(&spool, "slow@example.org", "slow");
    srv.wait_delivered(3, Duration::from_secs(15));
    let body = scrape_until(port, "labelled counters", |b| {
        b.contains("qmail_delivery_attempts_total{relay=\"relay-a\",outcome=\"delivered\"} 3")
            && b.contains("outcome=\"deferred\"} 1")
    });
    assert!(body.contains("qmail_dispatch_delivered_total 3"), "{body}");
    assert!(
        body.contains("qmail_delivery_recipients_total{relay=\"relay-a\",code_class=\"2xx\"} 3")
    );
    assert!(body.contains("code_class=\"4xx\"} 1"));
    assert!(
        body.contains("qmail_relay_connections_total{relay=\"relay-a\",outcome=\"opened\"}"),
        "{body}"
    );
    assert!(
        body.contains("qmail_delivery_duration_seconds_bucket{le="),
        "{body}"
    );
    assert!(
        body.contains("qmail_queue_time_seconds_count{relay=\"relay-a\"} 3"),
        "{body}"
    );
    assert!(body.contains(&format!(
        "qmail_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(
        body.contains("state=\"deferred\"} 1") || body.contains("state=\"active\""),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"));

    // healthz and the read API
    let (code, h) = http(port, "GET", "/healthz", None);
    assert_eq!(code, 200, "{h}");
    assert!(h.contains("\"status\":\"ok\""));
    let t0 = Instant::now();
    loop {
        let (_, s) = http(port, "GET", "/api/v1/messages?state=deferred", None);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        if v["messages"].as_array().is_some_and(|a| a.len() == 1) {
            assert_eq!(v["messages"][0]["id"], slow.as_str());
            assert!(
                v["messages"][0]["last_reply"]
                    .as_str()
                    .unwrap()
                    .starts_with("451")
            );
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, s) = http(port, "GET", &format!("/api/v1/messages/{slow}"), None);
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["status"]["state"], "deferred");
    assert_eq!(v["message"]["dispatch"]["history"][0]["relay"], "relay-a");
    let (_, s) = http(port, "GET", "/api/v1/status", None);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["spools"][0]["states"]["deferred"]["count"], 1);
    assert!(v["history"][0]["delivered"].as_u64().unwrap() >= 3, "{v}");
    let (code, s) = http(port, "GET", "/api/v1/find?rcpt=ok0@example.org", None);
    assert_eq!(code, 200, "{s}");
    assert!(s.contains("\"all_delivered\":true"));
    assert_eq!(
        http(port, "GET", "/api/v1/messages/..%2F..%2Fetc", None).0,
        400
    );
    assert_eq!(http(port, "GET", "/api/v1/messages?older=-3", None).0, 400);
    assert_eq!(http(port, "GET", "/nope", None).0, 404);
    // DNS rebinding: a foreign Host on the loopback listener is refused
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        c,
        "GET /api/v1/status HTTP/1.1\r\nHost: evil.example:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    assert!(s.starts_with("HTTP/1.1 421"), "{s}");
    let (code, page) = http(port, "GET", "/", None);
    assert_eq!(code, 200);
    assert!(page.contains("<script src=\"/console.js\""));

    // actions need the token
    let hold = format!("/api/v1/messages/{slow}/hold");
    assert_eq!(http(port, "POST", &hold, None).0, 401);
    assert_eq!(
        http(port, "POST", &hold, Some("wrong-token-wrong-token")).0,
        401
    );
    assert_eq!(dir_of(&sp, slow.as_str()).as_deref(), Some("deferred"));
    let (code, s) = http(port, "POST", &hold, Some(token));
    assert_eq!(code, 200, "{s}");
    assert_eq!(dir_of(&sp, slow.as_str()).as_deref(), Some("hold"));
    assert_eq!(
        http(port, "POST", &hold, Some(token)).0,
        409,
        "already held"
    );
    let (code, _) = http(
        port,
        "POST",
        &format!("/api/v1/messages/{slow}/release"),
        Some(token),
    );
    assert_eq!(code, 200);
    assert_eq!(dir_of(&sp, slow.as_str()).as_deref(), Some("deferred"));
    let (code, _) = http(
        port,
        "POST",
        &format!("/api/v1/messages/{slow}/retry"),
        Some(token),
    );
    assert_eq!(code, 200);
    let t0 = Instant::now();
    loop {
        let v = status::status(&sp, slow.as_str(), None).unwrap();
        if v.attempts >= 2 && v.state == State::Deferred {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "retry did not run: {v:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGHUP: a new dispatcher, the same counters
    let before = metric_value(&body, "qmail_dispatch_attempts_total").unwrap();
    signal(&p, "HUP");
    submit(&spool, "ok9@example.org", "after hup");
    srv.wait_delivered(4, Duration::from_secs(15));
    let after = scrape_until(port, "counters after SIGHUP", |b| {
        metric_value(b, "qmail_dispatch_delivered_total") == Some(4.0)
    });
    assert!(metric_value(&after, "qmail_dispatch_attempts_total").unwrap() > before);

    // the Grafana dashboard: valid JSON, every query names a metric of a real scrape
    let dash: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("docs/grafana/qmail.json")).unwrap(),
    )
    .unwrap();
    assert!(dash["title"].is_string() && dash["panels"].is_array());
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 30);
    let names = exposed_names(&after);
    let mut exprs = 0;
    for panel in dash["panels"].as_array().unwrap() {
        assert!(
            panel["title"].is_string() && panel["type"].is_string(),
            "{panel}"
        );
        assert!(panel["gridPos"]["w"].is_u64(), "{panel}");
        for t in panel["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().unwrap();
            exprs += 1;
            let used: Vec<&str> = e
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("qmail_"))
                .collect();
            assert!(!used.is_empty(), "{e}");
            for m in used {
                assert!(
                    names.contains(m),
                    "{m} (in {e}) is not in the scrape: {names:?}"
                );
            }
        }
    }
    assert!(exprs >= 6);

    // DELETE, then the JSON log is flat: the delivery record as fields
    let (code, _) = http(
        port,
        "DELETE",
        &format!("/api/v1/messages/{slow}"),
        Some(token),
    );
    assert!(
        code == 200 || code == 409,
        "deleted, or in flight at that instant"
    );
    signal(&p, "TERM");
    assert!(wait_exit(&mut p, Duration::from_secs(15)).success());
    let text = std::fs::read_to_string(d.path().join("stderr.log")).unwrap();
    let rec: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "delivery attempt" && v["outcome"] == "delivered")
        .unwrap_or_else(|| panic!("no flat delivery record in: {text}"));
    assert_eq!(rec["target"], "qmail::delivery");
    assert_eq!(rec["relay"], "relay-a");
    assert_eq!(rec["code"], 250);
    assert!(rec["id"].is_string() && rec["message_id"].is_string() && rec["attempt"].is_u64());
    let started = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "qmail-dispatcher started")
        .unwrap();
    assert_eq!(started["relays"], "relay-a", "names, not Debug strings");
}

#[test]
fn actions_without_a_token_are_refused_and_healthz_sees_a_lost_spool() {
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let sp = spool.path().to_owned();
    let id = submit(&spool, "x@example.org", "x");
    // held: it stays put while the dispatcher runs
    std::fs::rename(
        sp.join("ready").join(id.as_str()),
        sp.join("hold").join(id.as_str()),
    )
    .unwrap();
    let port = free_port();
    let mut p = Command::new(BIN)
        .args([
            "--spool",
            sp.to_str().unwrap(),
            "--http",
            &port.to_string(),
            "run",
        ])
        .env("QMAIL_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_http(port);
    let (code, body) = http(
        port,
        "POST",
        &format!("/api/v1/messages/{id}/release"),
        Some("anything-at-all-123"),
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("token"), "{body}");
    assert_eq!(dir_of(&sp, id.as_str()).as_deref(), Some("hold"));
    let (_, s) = http(port, "GET", "/api/v1/status", None);
    assert!(s.contains("\"actions\":false"), "{s}");
    assert_eq!(http(port, "GET", "/healthz", None).0, 200);
    let moved = d.path().join("moved");
    std::fs::rename(&sp, &moved).unwrap();
    let t0 = Instant::now();
    loop {
        let (code, body) = http(port, "GET", "/healthz", None);
        if code == 503 {
            assert!(body.contains("unreadable"), "{body}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{code} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::rename(&moved, &sp).unwrap();
    signal(&p, "TERM");
    assert!(wait_exit(&mut p, Duration::from_secs(15)).success());
}
