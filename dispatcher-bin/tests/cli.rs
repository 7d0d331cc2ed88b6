//! The `qmail-dispatcher` binary against real SMTP servers (aiosmtpd): the commands, two
//! processes on one spool, SIGKILL and restart (Q-12 c), the idle wake-up latency, signals,
//! metrics.

#[path = "../../qmail-dispatch/tests/child_guard/mod.rs"]
mod child_guard;
#[path = "../../qmail-dispatch/tests/dispatch_common/mod.rs"]
mod dispatch_common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use child_guard::Guarded;
use dispatch_common::*;
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

fn submit_n(spool: &Spool, from: usize, n: usize) -> Vec<QueueId> {
    (from..from + n)
        .map(|i| {
            let m = Message::builder()
                .from("noreply@example.com")
                .to(format!("m{i}@example.org").as_str())
                .subject("bulk")
                .text("hello")
                .build()
                .unwrap();
            spool.submit(&m).unwrap()
        })
        .collect()
}

/// A configuration file for the binary.
fn write_config(dir: &Path, name: &str, spool: &Path, relays: &[String], extra: &str) -> PathBuf {
    let mut s = format!(
        "spools = [{:?}]\nworkers = 4\nehlo_name = \"dispatcher.test\"\nlease_secs = 3\nrescan_ms = 300\ndurable = false\ndelivery_log = {:?}\n{extra}\n[retry]\nfirst_secs = 1\njitter = 0.0\n[timeouts]\nconnect_secs = 5\ncommand_secs = 10\ndata_end_secs = 10\n",
        spool.to_string_lossy(),
        dir.join(format!("{name}.log")).to_string_lossy(),
    );
    for r in relays {
        s.push_str(&format!("[[relay]]\nurl = {r:?}\ncooldown_secs = 0\n"));
    }
    let p = dir.join(format!("{name}.toml"));
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

fn start_run(config: &Path) -> Guarded {
    Guarded(
        Command::new(BIN)
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("QMAIL_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
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

fn per_rcpt(txs: &[Tx]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for t in txs {
        for r in &t.rcpt_tos {
            *m.entry(r.clone()).or_insert(0) += 1;
        }
    }
    m
}

#[test]
fn commands_drain_status_show_retry_requeue_check_config() {
    let srv = SmtpServer::start(&[
        "--rcpt-reject",
        "m1@example.org:550",
        "--rcpt-reject",
        "m2@example.org:451",
    ]);
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let ids = submit_n(&spool, 0, 3);
    let cfg = write_config(d.path(), "c", spool.path(), &[srv.url("tls=none")], "");
    let c = cfg.to_str().unwrap();

    let o = cli(&["--config", c, "check-config"]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("configuration ok: 1 spool(s), 1 relay(s)"));

    let o = cli(&["--config", c, "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["spools"][0]["ready"]["count"], 3);

    let o = cli(&["--config", c, "drain"]);
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).trim(),
        "delivered 1, deferred 1, failed 1, corrupt 0"
    );
    assert_eq!(srv.delivered().len(), 1);

    let o = cli(&["--config", c, "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let sp = &v["spools"][0];
    assert_eq!(
        (
            sp["ready"]["count"].as_u64(),
            sp["deferred"]["count"].as_u64(),
            sp["failed"]["count"].as_u64()
        ),
        (Some(0), Some(1), Some(1))
    );
    assert!(sp["failed"]["oldest_age_secs"].is_i64());
    let o = cli(&["--config", c, "status"]);
    assert!(
        stdout(&o).contains("deferred           1"),
        "{}",
        stdout(&o)
    );

    // show: the failed one with its diagnosis
    let o = cli(&["--config", c, "show", ids[1].as_str()]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(
        text.contains("state       failed") && text.contains("550"),
        "{text}"
    );
    let o = cli(&["--config", c, "show", ids[1].as_str(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["dispatch"]["failed"][0]["reply"]["code"], 550);
    assert_eq!(v["rcpt_to"][0], "m1@example.org");
    assert!(!cli(&["--config", c, "show", "1.2.3.nope"]).status.success());

    // retry: the deferred one due now (the server still says 451: deferred again, attempt 2)
    let o = cli(&["--config", c, "retry", ids[2].as_str()]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("1 message(s) due now"));
    assert_eq!(
        stdout(&cli(&["--config", c, "drain"])).trim(),
        "delivered 0, deferred 1, failed 0, corrupt 0"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&cli(&[
        "--config",
        c,
        "show",
        ids[2].as_str(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(v["dispatch"]["attempts"], 2);
    assert!(
        !cli(&["--config", c, "retry", ids[0].as_str()])
            .status
            .success(),
        "delivered: not deferred"
    );

    // requeue-failed: against an accepting relay it goes out
    let srv2 = SmtpServer::start(&[]);
    let o = cli(&["--config", c, "requeue-failed", "--all"]);
    assert!(
        stdout(&o).contains("1 message(s) requeued"),
        "{}",
        stdout(&o)
    );
    let o = cli(&[
        "--spool",
        spool.path().to_str().unwrap(),
        "--relay",
        &srv2.url("tls=none"),
        "drain",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["delivered"], 1);
    assert_eq!(srv2.delivered()[0].rcpt_tos, ["m1@example.org"]);

    // a bad configuration is refused
    std::fs::write(
        d.path().join("bad.toml"),
        "spools = [\"/tmp/x\"]\nworkerz = 1\n",
    )
    .unwrap();
    let o = cli(&[
        "--config",
        d.path().join("bad.toml").to_str().unwrap(),
        "check-config",
    ]);
    assert!(!o.status.success());
    let o = cli(&[
        "--spool",
        "/tmp/x",
        "--relay",
        "http://nope",
        "check-config",
    ]);
    assert!(!o.status.success());
}

#[test]
fn outbox_default_when_no_relay() {
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let ids = submit_n(&spool, 0, 2);
    let mut child = Guarded(
        Command::new(BIN)
            .args(["--spool", spool.path().to_str().unwrap(), "run"])
            .env("QMAIL_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while files(spool.path(), "outbox").len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("no relay configured"), "{err}");
    for id in ids {
        assert!(
            spool
                .path()
                .join("outbox")
                .join(format!("{id}.eml"))
                .exists()
        );
    }
}

/// The issue asks for 5,000 messages; that runs in well under a minute here (aiosmtpd is the
/// slower side), so the full count is kept.
const TWO_PROCESS_MESSAGES: usize = 5_000;

#[test]
fn two_dispatchers_on_one_spool_none_missing_none_twice() {
    let srv = SmtpServer::start(&[]);
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let n = TWO_PROCESS_MESSAGES;
    submit_n(&spool, 0, n / 2);
    let a = write_config(d.path(), "a", spool.path(), &[srv.url("tls=none")], "");
    let b = write_config(d.path(), "b", spool.path(), &[srv.url("tls=none")], "");
    let mut pa = start_run(&a);
    let mut pb = start_run(&b);
    // the other half arrives while they run
    submit_n(&spool, n / 2, n - n / 2);
    let got = srv.wait_count(n, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    signal(&pa, "TERM");
    signal(&pb, "TERM");
    assert!(wait_exit(&mut pa, Duration::from_secs(20)).success());
    assert!(wait_exit(&mut pb, Duration::from_secs(20)).success());
    assert_eq!(got, n, "every message delivered");
    let txs = srv.delivered();
    assert_eq!(txs.len(), n, "none twice");
    let counts = per_rcpt(&txs);
    assert_eq!(counts.len(), n, "none missing");
    assert!(counts.values().all(|&c| c == 1));
    let la = std::fs::read_to_string(d.path().join("a.log"))
        .unwrap()
        .lines()
        .count();
    let lb = std::fs::read_to_string(d.path().join("b.log"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(la + lb, n);
    assert!(la > 0 && lb > 0, "both dispatchers worked ({la} + {lb})");
    for dir in ["ready", "active", "deferred", "failed", "leases"] {
        assert!(
            files(spool.path(), dir).is_empty(),
            "{dir}/: {:?}",
            files(spool.path(), dir)
        );
    }
}

#[test]
fn q12c_sigkill_mid_run_and_restart_loses_nothing() {
    let srv = SmtpServer::start(&[]);
    let d = tempfile::tempdir().unwrap();
    // durable spool and state changes, as in production
    let spool = Spool::open(d.path().join("spool")).unwrap();
    let n = 1000;
    submit_n(&spool, 0, n);
    let cfg = write_config(d.path(), "k", spool.path(), &[srv.url("tls=none")], "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("durable = false", "durable = true");
    std::fs::write(&cfg, text).unwrap();
    let workers = 4;
    let mut kills = 0;
    let mut rng = qmail_dispatch::retry::Jitter::new();
    while kills < 5 {
        // kill at a random moment of each sixth of the run, so every kill hits work in flight
        let at = n * (kills + 1) / 6 + rng.below(n as u64 / 12) as usize;
        let mut p = start_run(&cfg);
        srv.wait_count(at, Duration::from_secs(60));
        p.kill().unwrap(); // SIGKILL
        p.wait().unwrap();
        kills += 1;
    }
    let before_final = srv.count();
    eprintln!("delivered before the final drain: {before_final} of {n}");
    assert!(
        before_final < n,
        "the kills happened mid-run ({before_final} of {n} already sent)"
    );
    let o = cli(&["--config", cfg.to_str().unwrap(), "drain"]);
    assert!(o.status.success(), "{o:?}");
    let txs = srv.delivered();
    let counts = per_rcpt(&txs);
    assert_eq!(counts.len(), n, "every message delivered at least once");
    let dups: usize = counts.values().map(|c| c - 1).sum();
    assert!(
        dups <= kills * workers,
        "duplicates ({dups}) at most the messages in flight at each kill"
    );
    for dir in ["ready", "active", "deferred", "failed"] {
        assert!(
            files(spool.path(), dir).is_empty(),
            "{dir}/ after the final drain: {:?}",
            files(spool.path(), dir)
        );
    }
}

#[test]
fn idle_submit_reaches_the_relay_within_50_ms() {
    let srv = SmtpServer::start(&[]);
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let cfg = write_config(
        d.path(),
        "l",
        spool.path(),
        &[srv.url("tls=none")],
        "idle_close_ms = 60000",
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("rescan_ms = 300", "rescan_ms = 60000");
    std::fs::write(&cfg, text).unwrap();
    let mut p = start_run(&cfg);
    std::thread::sleep(Duration::from_millis(500));
    let mut lat = Vec::new();
    for i in 0..21 {
        let m = Message::builder()
            .from("noreply@example.com")
            .to(format!("l{i}@example.org").as_str())
            .subject("latency")
            .text("x")
            .build()
            .unwrap();
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        spool.submit(&m).unwrap();
        let txs = srv.wait_delivered(i + 1, Duration::from_secs(10));
        assert_eq!(txs.len(), i + 1);
        lat.push(txs[i].time - t);
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&p, "TERM");
    assert!(wait_exit(&mut p, Duration::from_secs(10)).success());
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p50 = lat[lat.len() / 2];
    eprintln!(
        "idle submit → accepted by the relay: p50 {:.1} ms",
        p50 * 1000.0
    );
    assert!(
        p50 <= 0.050,
        "idle submit → accepted by the relay: p50 {:.1} ms (all: {lat:?})",
        p50 * 1000.0
    );
}

#[test]
fn sigterm_finishes_in_flight_and_sighup_reloads() {
    let slow = SmtpServer::start(&["--eod-delay", "1"]);
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let cfg = write_config(d.path(), "s", spool.path(), &[slow.url("tls=none")], "");
    let mut p = start_run(&cfg);
    std::thread::sleep(Duration::from_millis(300));
    submit_n(&spool, 0, 1);
    // SIGHUP with a new relay: in-flight work finishes, then the new configuration is used
    std::thread::sleep(Duration::from_millis(300));
    let other = SmtpServer::start(&[]);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&slow.url("tls=none"), &other.url("tls=none"));
    std::fs::write(&cfg, text).unwrap();
    signal(&p, "HUP");
    assert_eq!(
        slow.wait_delivered(1, Duration::from_secs(10)).len(),
        1,
        "the in-flight message was finished"
    );
    std::thread::sleep(Duration::from_millis(300));
    submit_n(&spool, 1, 1);
    assert_eq!(
        other.wait_delivered(1, Duration::from_secs(10)).len(),
        1,
        "after SIGHUP the new relay is used"
    );
    // SIGTERM during a slow transaction: it is finished, the process exits 0, lease released
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&other.url("tls=none"), &slow.url("tls=none"));
    std::fs::write(&cfg, text).unwrap();
    signal(&p, "HUP");
    std::thread::sleep(Duration::from_millis(500));
    submit_n(&spool, 2, 1);
    std::thread::sleep(Duration::from_millis(400));
    signal(&p, "TERM");
    assert!(wait_exit(&mut p, Duration::from_secs(15)).success());
    assert_eq!(
        slow.delivered().len(),
        2,
        "the transaction in flight at SIGTERM completed"
    );
    assert!(files(spool.path(), "active").is_empty());
    assert!(files(spool.path(), "leases").is_empty(), "lease released");
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let srv = SmtpServer::start(&[]);
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = write_config(d.path(), "m", spool.path(), &[srv.url("tls=none")], "");
    let mut p = Guarded(
        Command::new(BIN)
            .args([
                "--config",
                cfg.to_str().unwrap(),
                "--metrics",
                &format!("127.0.0.1:{port}"),
                "run",
            ])
            .env("QMAIL_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    submit_n(&spool, 0, 3);
    srv.wait_delivered(3, Duration::from_secs(10));
    let mut body = String::new();
    let t0 = Instant::now();
    loop {
        if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            body.clear();
            c.read_to_string(&mut body).unwrap();
            if body.contains("qmail_dispatch_delivered_total 3") {
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(body.starts_with("HTTP/1.") && body.contains(" 200 OK"));
    assert!(body.contains("# TYPE qmail_dispatch_attempts counter"));
    assert!(body.contains("state=\"ready\"} 0"));
    signal(&p, "TERM");
    assert!(wait_exit(&mut p, Duration::from_secs(10)).success());
}
