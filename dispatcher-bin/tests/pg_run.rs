//! `qmail-dispatcher run --queue URL` and `drain --queue URL` against a real PostgreSQL and the
//! recording aiosmtpd relay: messages submitted into a local spool, `forward --drain` into the
//! queue, then dispatcher processes serving it. Every count comes from the relay's record and
//! the queue's `status --queue --json`.

#[path = "../../qmail-dispatch/tests/child_guard/mod.rs"]
mod child_guard;
#[path = "../../qmail-dispatch/tests/pg_common/mod.rs"]
mod pg_common;

#[path = "../../qmail-dispatch/tests/dispatch_common/mod.rs"]
mod dispatch_common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use child_guard::{Guarded, run_queue};
use dispatch_common::SmtpServer;
use pg_common::{Pg, wait_for};
use qmail_core::{Message, Spool, SpoolOptions};

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

fn submit(spool: &Spool, i: usize, to: &[String]) {
    let mut b = Message::builder()
        .from("noreply@example.com")
        .subject(format!("queued {i}").as_str())
        .text("hello");
    for t in to {
        b = b.to(t.as_str());
    }
    spool.submit(&b.build().unwrap()).unwrap();
}

fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("QMAIL_LOG", "warn")
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Initialises the queue and forwards everything in `DIR/spool` into it.
fn init_and_forward(pg: &Pg, dir: &Path, n: usize) {
    ok(&cli(&["queue", "init", "--queue", &pg.uri()]));
    let sp = dir.join("spool");
    let out = ok(&cli(&[
        "forward",
        "--drain",
        "--spool",
        sp.to_str().unwrap(),
        "--queue",
        &pg.uri(),
    ]));
    assert!(out.contains(&format!("forwarded {n}")), "{out}");
}

/// A dispatcher configuration with no spool: the queue comes from `--queue`.
fn config(dir: &Path, relay: &str, extra: &str) -> PathBuf {
    let p = dir.join("run.toml");
    std::fs::write(
        &p,
        format!(
            "workers = 3\nehlo_name = \"dispatcher.test\"\nlease_secs = 3\ndurable = false\n\
             shutdown_grace_secs = 10\n{extra}\n[retry]\nfirst_secs = 1\nmax_secs = 1\n\
             jitter = 0.0\n[[relay]]\nurl = {relay:?}\ncooldown_secs = 0\n"
        ),
    )
    .unwrap();
    p
}

fn start_run(cfg: &Path, pg: &Pg, log: &Path) -> Guarded {
    run_queue(BIN, cfg, &pg.uri(), log)
}

fn term(c: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = c.try_wait() {
            return st;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
    panic!("dispatcher did not stop on SIGTERM");
}

/// `status --queue --json`: count per state, and the live leases.
fn status(pg: &Pg) -> (HashMap<String, i64>, i64) {
    let out = ok(&cli(&["status", "--json", "--queue", &pg.uri()]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let states = v["queue"]["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["state"].as_str().unwrap().to_owned(),
                s["count"].as_i64().unwrap(),
            )
        })
        .collect();
    (states, v["queue"]["leases"].as_i64().unwrap())
}

/// Nothing left to do: no row ready, scheduled, active or deferred.
fn settled(st: &HashMap<String, i64>) -> bool {
    ["ready", "scheduled", "active", "deferred"]
        .iter()
        .all(|s| st.get(*s).copied().unwrap_or(0) == 0)
}

/// Accepted deliveries per recipient, from the relay's record.
fn per_rcpt(srv: &SmtpServer) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for t in srv.delivered() {
        for r in t.rcpt_tos {
            *m.entry(r).or_insert(0) += 1;
        }
    }
    m
}

#[test]
fn two_dispatchers_deliver_every_message_once() {
    let Some(pg) = Pg::start() else { return };
    let srv = SmtpServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_at(dir.path());
    let n = 120;
    for i in 0..n {
        submit(
            &spool,
            i,
            &[format!("m{i}@example.org"), format!("c{i}@example.net")],
        );
    }
    init_and_forward(&pg, dir.path(), n);
    let cfg = config(dir.path(), &srv.url("tls=none"), "");
    let mut a = start_run(&cfg, &pg, &dir.path().join("a.log"));
    let mut b = start_run(&cfg, &pg, &dir.path().join("b.log"));
    wait_for(120, "every message delivered", || {
        srv.count() >= n && settled(&status(&pg).0)
    });
    let (st, leases) = status(&pg);
    assert_eq!(st.get("delivered").copied(), Some(n as i64), "{st:?}");
    assert_eq!(leases, 2, "both dispatchers hold a lease while running");
    assert!(term(&mut a).success());
    assert!(term(&mut b).success());
    let got = per_rcpt(&srv);
    assert_eq!(got.len(), 2 * n, "every recipient reached: {got:?}");
    assert!(
        got.values().all(|&c| c == 1),
        "each recipient exactly once: {:?}",
        got.iter().filter(|(_, c)| **c != 1).collect::<Vec<_>>()
    );
    // both served (SKIP LOCKED spreads the rows), and both gave their lease back at SIGTERM
    let owners: i64 = pg
        .client()
        .query_one(
            "SELECT count(DISTINCT h->>'instance') FROM qmail.message, \
             jsonb_array_elements(dstate->'history') h",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(owners, 2, "both dispatchers delivered some");
    assert_eq!(status(&pg).1, 0, "leases released at SIGTERM");
}

#[test]
fn a_4xx_recipient_is_deferred_and_retried_until_the_lifetime() {
    let Some(pg) = Pg::start() else { return };
    let srv = SmtpServer::start(&["--rcpt-reject", "slow@example.org:451"]);
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_at(dir.path());
    submit(
        &spool,
        0,
        &["ok@example.org".into(), "slow@example.org".into()],
    );
    for i in 1..5 {
        submit(&spool, i, &[format!("m{i}@example.org")]);
    }
    init_and_forward(&pg, dir.path(), 5);
    let cfg = config(dir.path(), &srv.url("tls=none"), "");
    // the lifetime is set at the message's submit: 6 s leaves room for several retries
    let cfg_text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("jitter = 0.0", "jitter = 0.0\nlifetime_secs = 6");
    std::fs::write(&cfg, cfg_text).unwrap();
    let mut a = start_run(&cfg, &pg, &dir.path().join("a.log"));
    wait_for(60, "the 4xx recipient fails at the lifetime", || {
        let st = status(&pg).0;
        st.get("failed").copied() == Some(1) && settled(&st)
    });
    assert!(term(&mut a).success());
    let row = pg
        .client()
        .query_one(
            "SELECT (dstate->>'attempts')::int, dstate::text FROM qmail.message \
             WHERE state = 'failed'",
            &[],
        )
        .unwrap();
    let attempts: i32 = row.get(0);
    let dstate: String = row.get(1);
    assert!(attempts >= 3, "deferred and retried: {attempts} attempts");
    assert!(dstate.contains("slow@example.org"), "{dstate}");
    assert!(
        dstate.contains("451"),
        "the relay's reply is kept: {dstate}"
    );
    // every retry offered only the recipient left, and ok@ was delivered once
    let got = per_rcpt(&srv);
    assert_eq!(got.get("ok@example.org"), Some(&1), "{got:?}");
    assert!(!got.contains_key("slow@example.org"), "{got:?}");
    for i in 1..5 {
        assert_eq!(got.get(&format!("m{i}@example.org")), Some(&1), "{got:?}");
    }
    let rcpts_offered = srv
        .sessions()
        .iter()
        .flat_map(|s| s.lines.clone())
        .filter(|l| l.to_ascii_uppercase().starts_with("RCPT TO:<SLOW@"))
        .count();
    assert!(
        rcpts_offered as i32 >= attempts,
        "slow@ offered at each attempt: {rcpts_offered} RCPT for {attempts} attempts"
    );
}

#[test]
fn drain_queue_prints_the_summary() {
    let Some(pg) = Pg::start() else { return };
    let srv = SmtpServer::start(&["--rcpt-reject", "slow@example.org:451"]);
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_at(dir.path());
    for i in 0..10 {
        submit(&spool, i, &[format!("m{i}@example.org")]);
    }
    submit(&spool, 10, &["slow@example.org".into()]);
    init_and_forward(&pg, dir.path(), 11);
    // retries an hour away: the deferred one is not retried within the drain
    let cfg = config(dir.path(), &srv.url("tls=none"), "")
        .to_string_lossy()
        .into_owned();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "first_secs = 1\nmax_secs = 1",
        "first_secs = 3600\nmax_secs = 3600",
    );
    std::fs::write(&cfg, text).unwrap();
    let out = ok(&cli(&["--config", &cfg, "--queue", &pg.uri(), "drain"]));
    assert_eq!(
        out.trim(),
        "delivered 10, deferred 1, failed 0, corrupt 0",
        "{out}"
    );
    let (st, leases) = status(&pg);
    assert_eq!(st.get("delivered").copied(), Some(10), "{st:?}");
    assert_eq!(st.get("deferred").copied(), Some(1), "{st:?}");
    assert_eq!(leases, 0, "the drain gave its lease back");
    let got = per_rcpt(&srv);
    assert_eq!(got.len(), 10);
    assert!(got.values().all(|&c| c == 1), "{got:?}");
    // JSON, and nothing due: an empty drain
    let out = ok(&cli(&[
        "--config",
        &cfg,
        "--queue",
        &pg.uri(),
        "drain",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["delivered"], 0);
    assert_eq!(v["deferred"], 0);
}

#[test]
fn run_queue_without_a_relay_is_refused_naming_the_field() {
    let Some(pg) = Pg::start() else { return };
    ok(&cli(&["queue", "init", "--queue", &pg.uri()]));
    let o = cli(&["--queue", &pg.uri(), "drain"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("needs at least one relay"), "{err}");
}

#[test]
fn a_dispatcher_sigkilled_mid_run_loses_nothing() {
    let Some(pg) = Pg::start() else { return };
    // slow transactions keep some in flight when the kill lands (not --eod-delay: the
    // recorder names a transaction by the end-of-data count after the delay, so concurrent
    // delayed ones overwrite each other's record)
    let srv = SmtpServer::start(&["--rcpt-delay", "0.03"]);
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_at(dir.path());
    let n = 150;
    for i in 0..n {
        submit(&spool, i, &[format!("m{i}@example.org")]);
    }
    init_and_forward(&pg, dir.path(), n);
    let cfg = config(dir.path(), &srv.url("tls=none"), "");
    let mut a = start_run(&cfg, &pg, &dir.path().join("a.log"));
    let mut b = start_run(&cfg, &pg, &dir.path().join("b.log"));
    srv.wait_count(n / 4, Duration::from_secs(60));
    a.kill().unwrap();
    a.wait().unwrap();
    let at_kill = srv.count();
    assert!(at_kill < n, "the kill landed mid-run ({at_kill} of {n})");
    wait_for(120, "the survivor delivers the rest", || {
        let st = status(&pg).0;
        st.get("delivered").copied() == Some(n as i64) && settled(&st)
    });
    assert!(term(&mut b).success());
    let got = per_rcpt(&srv);
    let missing: Vec<usize> = (0..n)
        .filter(|i| !got.contains_key(&format!("m{i}@example.org")))
        .collect();
    assert!(missing.is_empty(), "missing: {missing:?}");
    // a duplicate only for a message whose DATA had ended at the relay when the killed
    // process died (at most one per worker of it: 3)
    let dups: Vec<(&String, &usize)> = got.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        dups.len() <= 3 && dups.iter().all(|(_, c)| **c == 2),
        "duplicates beyond the end-of-DATA window: {dups:?}"
    );
    eprintln!(
        "SIGKILL mid-run: {n} delivered, {} duplicate(s) from the end-of-DATA window",
        dups.len()
    );
    assert_eq!(
        status(&pg).1,
        0,
        "the dead lease was taken back, the survivor's released"
    );
}

#[test]
fn sigterm_finishes_the_transactions_in_flight() {
    let Some(pg) = Pg::start() else { return };
    // each transaction takes about 2 s (two recipients, 1 s before each RCPT reply)
    let srv = SmtpServer::start(&["--rcpt-delay", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_at(dir.path());
    for i in 0..3 {
        submit(
            &spool,
            i,
            &[format!("m{i}@example.org"), format!("c{i}@example.org")],
        );
    }
    init_and_forward(&pg, dir.path(), 3);
    let cfg = config(dir.path(), &srv.url("tls=none"), "");
    let mut a = start_run(&cfg, &pg, &dir.path().join("a.log"));
    wait_for(30, "three transactions in flight", || {
        status(&pg).0.get("active").copied() == Some(3)
    });
    assert_eq!(srv.count(), 0, "none finished yet");
    assert!(term(&mut a).success());
    let (st, leases) = status(&pg);
    assert_eq!(st.get("delivered").copied(), Some(3), "{st:?}");
    assert_eq!(leases, 0);
    let got = per_rcpt(&srv);
    assert_eq!(got.len(), 6, "{got:?}");
    assert!(got.values().all(|&c| c == 1), "{got:?}");
}

#[test]
fn the_database_down_mid_run_loses_and_doubles_nothing() {
    let Some(mut pg) = Pg::start() else { return };
    let srv = SmtpServer::start(&["--rcpt-delay", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_at(dir.path());
    let n = 6;
    for i in 0..n {
        submit(&spool, i, &[format!("m{i}@example.org")]);
    }
    init_and_forward(&pg, dir.path(), n);
    let cfg = config(dir.path(), &srv.url("tls=none"), "");
    let log = dir.path().join("a.log");
    let mut a = start_run(&cfg, &pg, &log);
    wait_for(30, "transactions in flight", || {
        status(&pg).0.get("active").copied() == Some(3)
    });
    // the database crashes while three transactions wait for their RCPT replies
    pg.kill();
    wait_for(30, "the dispatcher notices the database is gone", || {
        let l = std::fs::read_to_string(&log).unwrap_or_default();
        l.contains("cannot record the outcome") || l.contains("cannot claim from the queue")
    });
    pg.restart();
    wait_for(120, "every message delivered after the restart", || {
        let st = status(&pg).0;
        st.get("delivered").copied() == Some(n as i64) && settled(&st)
    });
    assert!(term(&mut a).success());
    let got = per_rcpt(&srv);
    assert_eq!(got.len(), n, "{got:?}");
    assert!(got.values().all(|&c| c == 1), "{got:?}");
}

#[test]
fn a_5xx_recipient_gets_a_dsn_through_the_queue() {
    let Some(pg) = Pg::start() else { return };
    let srv = SmtpServer::start(&["--rcpt-reject", "bad@example.org:550"]);
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_at(dir.path());
    submit(
        &spool,
        0,
        &["ok@example.org".into(), "bad@example.org".into()],
    );
    init_and_forward(&pg, dir.path(), 1);
    let cfg = config(dir.path(), &srv.url("tls=none"), "[dsn]\nenabled = true");
    let mut a = start_run(&cfg, &pg, &dir.path().join("a.log"));
    wait_for(60, "the failed message and its DSN settled", || {
        let st = status(&pg).0;
        st.get("failed").copied() == Some(1)
            && st.get("delivered").copied() == Some(1)
            && settled(&st)
    });
    assert!(term(&mut a).success());
    let txs = srv.delivered();
    // the recorder keeps MAIL FROM as sent: `<>` for the null reverse-path
    let dsn: Vec<_> = txs
        .iter()
        .filter(|t| t.mail_from.is_empty() || t.mail_from == "<>")
        .collect();
    assert_eq!(dsn.len(), 1, "one DSN among {} transactions", txs.len());
    assert_eq!(dsn[0].rcpt_tos, vec!["noreply@example.com".to_owned()]);
    let body = String::from_utf8_lossy(&dsn[0].data);
    assert!(body.contains("report-type=delivery-status"), "{body}");
    assert!(
        body.contains("Final-Recipient: rfc822; bad@example.org"),
        "{body}"
    );
    assert!(body.contains("Diagnostic-Code: smtp; 550"), "{body}");
    let got = per_rcpt(&srv);
    assert_eq!(got.get("ok@example.org"), Some(&1), "{got:?}");
}
