//! Fleet-wide relay limits (issue 12) through `qmail-dispatcher run --queue URL`: a relay's
//! `max_connections` and `max_messages_per_second` hold across every dispatcher of a queue,
//! not per process. A real PostgreSQL, real dispatcher processes, and a scripted SMTP sink in
//! this file that counts the sessions open at once and records when each message arrived.
//!
//! - 3 dispatchers × 4 workers, one relay with `max_connections = 2` and
//!   `max_messages_per_second = 50`: no 10 s window holds more than 50 × 1.1 × 10 arrivals,
//!   never more than 2 sessions are open at once, and every message arrives exactly once.
//!   Per process alone the same configuration would allow 6 sessions and 150 messages/s.
//! - a dispatcher SIGKILLed while its idle session holds the relay's only slot: another one,
//!   waiting for it, gets the slot at once (the advisory lock goes with the dead process's
//!   database session), long before the dead one's idle close would have freed it.
//! - a dispatcher stopped while its workers wait for a slot gives their messages back
//!   untouched at once.
//! - the per-process fallback while the database is down, and the limits back after it.

#[path = "../../qmail-dispatch/tests/child_guard/mod.rs"]
mod child_guard;
#[path = "../../qmail-dispatch/tests/pg_common/mod.rs"]
mod pg_common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use child_guard::{Guarded, run_queue};
use pg_common::Pg;
use qmail_core::{Message, Spool, SpoolOptions};

const BIN: &str = env!("CARGO_BIN_EXE_qmail-dispatcher");

/// What the sink saw.
#[derive(Default)]
struct Record {
    /// Sessions open now (counted from accept to QUIT, or to the close without one).
    open: AtomicUsize,
    /// The most open at once.
    max_open: AtomicUsize,
    /// Sessions accepted so far.
    sessions: AtomicUsize,
    /// Each accepted message: when its end-of-data arrived, and its recipients.
    arrivals: Mutex<Vec<(Instant, Vec<String>)>>,
}

/// A scripted SMTP server (RFC 5321 without extensions beyond 8BITMIME): 250 to everything,
/// 354 to DATA, 221 to QUIT. A session stops counting as open when its QUIT arrives, before
/// the 221: the client gives its slot back only after reading the 221, so a new session of
/// another dispatcher can never overlap an ending one in the count.
struct Sink {
    port: u16,
    rec: Arc<Record>,
}

impl Sink {
    fn start() -> Sink {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let rec = Arc::new(Record::default());
        let r = Arc::clone(&rec);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let now = r.open.fetch_add(1, Ordering::SeqCst) + 1;
                r.max_open.fetch_max(now, Ordering::SeqCst);
                r.sessions.fetch_add(1, Ordering::SeqCst);
                let r = Arc::clone(&r);
                std::thread::spawn(move || {
                    let quit = serve(s, &r);
                    if !quit {
                        r.open.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Sink { port, rec }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.port)
    }

    fn count(&self) -> usize {
        self.rec.arrivals.lock().unwrap().len()
    }

    /// Accepted deliveries per recipient.
    fn per_rcpt(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for (_, rcpts) in self.rec.arrivals.lock().unwrap().iter() {
            for r in rcpts {
                *m.entry(r.clone()).or_insert(0) += 1;
            }
        }
        m
    }

    /// The most arrivals within any window of `w`.
    fn max_in(&self, w: Duration) -> usize {
        let mut t: Vec<Instant> = self
            .rec
            .arrivals
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| *t)
            .collect();
        t.sort();
        let mut best = 0;
        let mut j = 0;
        for i in 0..t.len() {
            while j < t.len() && t[j] < t[i] + w {
                j += 1;
            }
            best = best.max(j - i);
        }
        best
    }
}

/// One session; true when it ended with QUIT (already uncounted).
fn serve(s: TcpStream, r: &Record) -> bool {
    let Ok(mut out) = s.try_clone() else {
        return false;
    };
    let mut inp = BufReader::new(s);
    if out.write_all(b"220 sink.test ESMTP\r\n").is_err() {
        return false;
    }
    let mut rcpts = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        match inp.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-sink.test\r\n250 8BITMIME\r\n",
            "MAIL" => {
                rcpts.clear();
                b"250 ok\r\n"
            }
            "RCPT" => {
                let to = line
                    .split_once('<')
                    .and_then(|(_, t)| t.split_once('>'))
                    .map(|(t, _)| t.to_owned())
                    .unwrap_or_default();
                rcpts.push(to);
                b"250 ok\r\n"
            }
            "DATA" => {
                if out.write_all(b"354 go ahead\r\n").is_err() {
                    return false;
                }
                loop {
                    line.clear();
                    match inp.read_line(&mut line) {
                        Ok(0) | Err(_) => return false,
                        Ok(_) if line == ".\r\n" => break,
                        Ok(_) => {}
                    }
                }
                r.arrivals
                    .lock()
                    .unwrap()
                    .push((Instant::now(), std::mem::take(&mut rcpts)));
                b"250 queued\r\n"
            }
            "QUIT" => {
                r.open.fetch_sub(1, Ordering::SeqCst);
                let _ = out.write_all(b"221 bye\r\n");
                return true;
            }
            _ => b"250 ok\r\n",
        };
        if out.write_all(reply).is_err() {
            return false;
        }
    }
}

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

fn submit(spool: &Spool, i: usize) {
    let m = Message::builder()
        .from("noreply@example.com")
        .to(format!("m{i}@example.org").as_str())
        .subject(format!("limited {i}").as_str())
        .text("hello")
        .build()
        .unwrap();
    spool.submit(&m).unwrap();
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

/// Forwards everything in `DIR/spool` into the queue (`forward --drain`), `n` messages.
fn forward(pg: &Pg, dir: &Path, n: usize) {
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

/// A dispatcher configuration with no spool (the queue comes from `--queue`) and one limited
/// relay.
fn config(dir: &Path, workers: usize, relay: &str, idle_close_ms: u64, limits: &str) -> PathBuf {
    let p = dir.join(format!("run-{workers}-{idle_close_ms}.toml"));
    std::fs::write(
        &p,
        format!(
            "workers = {workers}\nehlo_name = \"dispatcher.test\"\nlease_secs = 5\n\
             durable = false\nshutdown_grace_secs = 10\nidle_close_ms = {idle_close_ms}\n\
             [retry]\nfirst_secs = 1\nmax_secs = 1\njitter = 0.0\n\
             [[relay]]\nurl = {relay:?}\ncooldown_secs = 0\n{limits}\n"
        ),
    )
    .unwrap();
    p
}

fn start_run(cfg: &Path, pg: &Pg, log: &Path) -> Guarded {
    run_queue(BIN, cfg, &pg.uri(), log)
}

fn signal(c: &Child, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &c.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig}");
}

fn term(c: &mut Child) -> std::process::ExitStatus {
    signal(c, "-TERM");
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

/// Messages settled as delivered (tombstones), read from the table itself. A test that waits
/// for a delivery waits for this too, not only for the sink's copy: the relay's 250 comes
/// before the settle's COMMIT, and a SIGSTOP between the two leaves the message claimed (its
/// lease then expires and another dispatcher takes it back: the end-of-DATA window).
fn delivered(pg: &Pg) -> i64 {
    pg.client()
        .query_one(
            "SELECT count(*) FROM qmail.message WHERE state = 'delivered'",
            &[],
        )
        .unwrap()
        .get(0)
}

/// Rows per state (`status --queue --json`).
fn states(pg: &Pg) -> HashMap<String, i64> {
    let out = ok(&cli(&["status", "--json", "--queue", &pg.uri()]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["queue"]["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["state"].as_str().unwrap().to_owned(),
                s["count"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn settled(st: &HashMap<String, i64>) -> bool {
    ["ready", "scheduled", "active", "deferred"]
        .iter()
        .all(|s| st.get(*s).copied().unwrap_or(0) == 0)
}

/// Dispatcher processes, each SIGKILLed when dropped (a failed test leaves none behind).
struct Procs(Vec<Guarded>);

/// Polls `f` until it is true; after `secs`, fails with the dispatchers' logs.
fn wait_logged(secs: u64, what: &str, dir: &Path, names: &[&str], mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            logs(dir, names)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn logs(dir: &Path, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "--- {n}:\n{}",
                std::fs::read_to_string(dir.join(n)).unwrap_or_default()
            )
        })
        .collect()
}

#[test]
fn three_dispatchers_share_the_relays_connection_and_rate_limits() {
    let Some(pg) = Pg::start() else { return };
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_at(dir.path());
    // 12 s of sending at 50/s: every 10 s window inside the run is a full one
    let n = 600;
    for i in 0..n {
        submit(&spool, i);
    }
    ok(&cli(&["queue", "init", "--queue", &pg.uri()]));
    forward(&pg, dir.path(), n);
    // sessions end after 25 messages, so the slots pass between the dispatchers
    let cfg = config(
        dir.path(),
        4,
        &sink.url(),
        300,
        "max_connections = 2\nmax_messages_per_second = 50.0\nmax_messages_per_connection = 25",
    );
    let names = ["a.log", "b.log", "c.log"];
    let mut ds = Procs(
        names
            .iter()
            .map(|l| start_run(&cfg, &pg, &dir.path().join(l)))
            .collect(),
    );
    wait_logged(120, "every message delivered", dir.path(), &names, || {
        sink.count() >= n && settled(&states(&pg))
    });
    for d in &mut ds.0 {
        assert!(term(d).success());
    }
    let window = sink.max_in(Duration::from_secs(10));
    let second = sink.max_in(Duration::from_secs(1));
    let max_open = sink.rec.max_open.load(Ordering::SeqCst);
    eprintln!(
        "{n} messages: at most {window} in a 10 s window, {second} in a 1 s window; \
         {} sessions, at most {max_open} at once",
        sink.rec.sessions.load(Ordering::SeqCst)
    );
    let logs = logs(dir.path(), &names);
    assert!(
        window <= 550,
        "at most 50 msg/s × 1.1 over 10 s: {window}\n{logs}"
    );
    assert!(
        max_open <= 2,
        "never more than max_connections = 2 sessions: {max_open}\n{logs}"
    );
    let got = sink.per_rcpt();
    assert_eq!(got.len(), n, "every message arrived");
    assert!(
        got.values().all(|&c| c == 1),
        "each message exactly once: {:?}",
        got.iter().filter(|(_, c)| **c != 1).collect::<Vec<_>>()
    );
    assert_eq!(states(&pg).get("delivered").copied(), Some(n as i64));
    // the limits were shared, not one dispatcher doing all the work
    let owners: i64 = pg
        .client()
        .query_one(
            "SELECT count(DISTINCT h->>'instance') FROM qmail.message, \
             jsonb_array_elements(dstate->'history') h",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        owners >= 2,
        "the dispatchers took turns: {owners} delivered"
    );
}

#[test]
fn a_sigkilled_dispatchers_connection_slot_is_free_at_once() {
    let Some(pg) = Pg::start() else { return };
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_at(dir.path());
    ok(&cli(&["queue", "init", "--queue", &pg.uri()]));
    submit(&spool, 0);
    forward(&pg, dir.path(), 1);
    // one slot; A's idle session would keep it for 10 minutes, B's closes after 300 ms (so
    // B's two workers take turns)
    let limits = "max_connections = 1\nmax_messages_per_second = 50.0";
    let cfg_a = config(dir.path(), 2, &sink.url(), 600_000, limits);
    let cfg_b = config(dir.path(), 2, &sink.url(), 300, limits);
    let names = ["a.log", "b.log"];
    let mut ds = Procs(vec![start_run(&cfg_a, &pg, &dir.path().join("a.log"))]);
    wait_logged(
        30,
        "the first message delivered and settled by A",
        dir.path(),
        &names,
        || sink.count() == 1 && delivered(&pg) == 1,
    );
    assert_eq!(
        sink.rec.open.load(Ordering::SeqCst),
        1,
        "A keeps its idle session (and its slot)"
    );
    // A can claim nothing more; B starts and waits for the slot A holds
    signal(&ds.0[0], "-STOP");
    ds.0.push(start_run(&cfg_b, &pg, &dir.path().join("b.log")));
    for i in 1..4 {
        submit(&spool, i);
    }
    forward(&pg, dir.path(), 3);
    wait_logged(
        30,
        "B holding claims, waiting for the slot",
        dir.path(),
        &names,
        || states(&pg).get("active").copied().unwrap_or(0) >= 1,
    );
    assert_eq!(
        sink.count(),
        1,
        "nothing passes while A holds the only slot"
    );
    assert_eq!(sink.rec.sessions.load(Ordering::SeqCst), 1);
    signal(&ds.0[0], "-KILL");
    let _ = ds.0[0].wait();
    wait_logged(
        20,
        "B delivers once A's slot is free",
        dir.path(),
        &names,
        || sink.count() == 4 && settled(&states(&pg)),
    );
    assert!(term(&mut ds.0[1]).success());
    let got = sink.per_rcpt();
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.values().all(|&c| c == 1), "each once: {got:?}");
    // A's own session, then B's
    assert!(sink.rec.sessions.load(Ordering::SeqCst) >= 2);
}

/// The engine's view of the limits while the database goes away and comes back: errors
/// (so the route uses the per-process limits) without a connection attempt per call for
/// `LIMITS_RETRY`, fleet slots again once the database answers, and a slot taken before the
/// crash that is dropped after it never frees the slot a new session holds under its key.
#[test]
fn limits_fall_back_while_the_database_is_down_and_come_back() {
    use qmail_dispatch::queue::postgres::{PgOptions, PgQueue};
    use qmail_dispatch::queue::{FallbackLimits, QueueError, RelayLimits};

    let Some(mut pg) = Pg::start() else { return };
    PgQueue::init(&pg.url(), "qmail").unwrap();
    let q = || PgQueue::connect(&pg.url(), PgOptions::default()).unwrap();
    let limits = FallbackLimits::new(q());
    let other = q();
    let before = limits.fleet_slot("mx", 1).unwrap().expect("a free slot");
    assert!(other.connection_slot("mx", 1).unwrap().is_none(), "held");

    pg.kill();
    // (slot 0 is this process's already: slot 1 is asked of the database)
    match limits.fleet_slot("mx", 2) {
        Err(QueueError::Unavailable(_)) => {}
        r => panic!("the database is down: {r:?}"),
    }
    // the next calls answer at once, from the fallback, without touching the network
    match limits.fleet_token("mx", 50.0, 2.5) {
        Err(QueueError::Unavailable(why)) => assert!(why.contains("retried shortly"), "{why}"),
        r => panic!("within LIMITS_RETRY: {r:?}"),
    }

    pg.restart();
    let deadline = Instant::now() + qmail_dispatch::queue::LIMITS_RETRY * 4;
    let after = loop {
        match limits.fleet_slot("mx", 1) {
            Ok(Some(s)) => break s,
            Ok(None) => panic!("the old session's lock went with it"),
            Err(_) => {
                assert!(Instant::now() < deadline, "the limits never came back");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    // the slot of the dead session is dropped now: it must not unlock the new one
    drop(before);
    assert!(
        other.connection_slot("mx", 1).unwrap().is_none(),
        "the new session's slot is still held"
    );
    drop(after);
    assert!(other.connection_slot("mx", 1).unwrap().is_some());
    // tokens too (the pool's connections from before the crash fail once, then reconnect)
    let deadline = Instant::now() + qmail_dispatch::queue::LIMITS_RETRY * 4;
    loop {
        match limits.fleet_token("mx", 50.0, 2.5) {
            Ok(qmail_dispatch::queue::RateDecision::Granted) => break,
            r => {
                assert!(
                    Instant::now() < deadline,
                    "no token after the restart: {r:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A dispatcher told to stop while its workers wait for a fleet slot gives their messages
/// back untouched at once (ready again, no attempt counted), rather than waiting out
/// `LIMIT_WAIT` or its grace period with the claims held.
#[test]
fn a_stopping_dispatcher_gives_back_what_waits_for_a_slot() {
    let Some(pg) = Pg::start() else { return };
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_at(dir.path());
    ok(&cli(&["queue", "init", "--queue", &pg.uri()]));
    submit(&spool, 0);
    forward(&pg, dir.path(), 1);
    let limits = "max_connections = 1";
    let cfg_a = config(dir.path(), 1, &sink.url(), 600_000, limits);
    let cfg_b = config(dir.path(), 2, &sink.url(), 300, limits);
    let names = ["a.log", "b.log"];
    let mut ds = Procs(vec![start_run(&cfg_a, &pg, &dir.path().join("a.log"))]);
    wait_logged(
        30,
        "the first message delivered and settled by A",
        dir.path(),
        &names,
        || sink.count() == 1 && delivered(&pg) == 1,
    );
    signal(&ds.0[0], "-STOP");
    ds.0.push(start_run(&cfg_b, &pg, &dir.path().join("b.log")));
    for i in 1..3 {
        submit(&spool, i);
    }
    forward(&pg, dir.path(), 2);
    wait_logged(
        30,
        "B's workers holding both claims",
        dir.path(),
        &names,
        || states(&pg).get("active").copied().unwrap_or(0) == 2,
    );
    assert!(term(&mut ds.0[1]).success());
    let st = states(&pg);
    assert_eq!(
        st.get("ready").copied(),
        Some(2),
        "given back untouched: {st:?}\n{}",
        logs(dir.path(), &names)
    );
    assert_eq!(st.get("active").copied().unwrap_or(0), 0, "{st:?}");
    assert_eq!(sink.count(), 1, "nothing was sent while A held the slot");
    let attempts: i64 = pg
        .client()
        .query_one(
            "SELECT count(*) FROM qmail.message, jsonb_array_elements(dstate->'history') h",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(attempts, 1, "only A's delivery is in any history");
}
