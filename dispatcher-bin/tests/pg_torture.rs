//! The torture run of the PostgreSQL queue (issue 12): one private PostgreSQL, a spool fed
//! all along and a `forward` process (SIGKILLed once and restarted), four `run --queue`
//! dispatchers SIGKILLed (and restarted), SIGSTOPped past their lease (SIGCONT once another
//! dispatcher has taken their lease back) and briefly, at random moments chosen by a seeded
//! generator. The recording aiosmtpd relay keeps every copy: nothing is missing, and each
//! duplicate's first copy was sent by a process that a SIGKILL or a long SIGSTOP hit within
//! the end-of-DATA window (`pg_common/window.rs`, the rule of `faults.rs`); at the end no row
//! is active or owned, every row is a tombstone and no lease is left.
//!
//! `QMAIL_TORTURE_SEED=N` replays a schedule (the seed is printed at the start).

#[path = "../../qmail-dispatch/tests/pg_common/mod.rs"]
mod pg_common;

#[path = "../../qmail-dispatch/tests/pg_common/window.rs"]
mod window;

#[path = "../../qmail-dispatch/tests/dispatch_common/mod.rs"]
mod dispatch_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dispatch_common::SmtpServer;
use pg_common::{Pg, wait_for};
use qmail_core::{Message, Spool, SpoolOptions};
use window::{Event, accepted_copies, judge, per_rcpt, unix_now};

const BIN: &str = env!("CARGO_BIN_EXE_qmail-dispatcher");
/// The dispatchers' lease (seconds).
const LEASE: u64 = 3;
/// Dispatchers running at any time.
const SLOTS: usize = 4;
/// Worker threads of each dispatcher (at most this many duplicates per fault).
const WORKERS: usize = 2;
/// Messages submitted.
const N: usize = 500;

/// xorshift64*: a replayable schedule (the dispatcher's own jitter is seeded by the OS).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

fn seed() -> u64 {
    std::env::var("QMAIL_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

fn rcpt(i: usize) -> String {
    format!("t{i}@example.org")
}

fn submit(spool: &Spool, i: usize) {
    let m = Message::builder()
        .from("noreply@example.com")
        .to(rcpt(i).as_str())
        .subject(format!("torture {i}").as_str())
        .text("hello")
        .build()
        .unwrap();
    spool.submit(&m).unwrap();
}

/// One process of the run, its stderr in `DIR/NAME.log`.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} {}", self.name);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; the exit status (a panic after 30 s).
    fn term(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not stop on SIGTERM:\n{}", self.name, self.log());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `run --queue` named `name` (EHLO `NAME.test`: the relay's record says who sent a copy).
fn dispatcher(dir: &Path, pg: &Pg, relay: &str, name: &str) -> Proc {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "workers = {WORKERS}\nehlo_name = \"{name}.test\"\nlease_secs = {LEASE}\n\
             durable = false\nshutdown_grace_secs = 10\n[retry]\nfirst_secs = 1\nmax_secs = 1\n\
             jitter = 0.0\n[[relay]]\nurl = {relay:?}\ncooldown_secs = 0\n"
        ),
    )
    .unwrap();
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["--queue", &pg.uri(), "run"])
        .env("QMAIL_LOG", "info")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Proc {
        name: name.to_owned(),
        child,
        log,
    }
}

fn forwarder(dir: &Path, cfg: &Path, name: &str) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(BIN)
        .arg("--config")
        .arg(cfg)
        .arg("forward")
        .env("QMAIL_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Proc {
        name: name.to_owned(),
        child,
        log,
    }
}

/// A dispatcher slot: the process and, when stopped, how it resumes.
struct Slot {
    proc: Proc,
    generation: usize,
    stopped: Option<Stop>,
}

enum Stop {
    /// SIGCONT once its lease row is gone (another dispatcher took it back), plus `extra`.
    PastLease { since: Instant, extra: Duration },
    /// SIGCONT at this instant (well within the lease).
    Brief(Instant),
}

fn local_files(spool: &Path) -> usize {
    ["ready", "scheduled", "active"]
        .iter()
        .map(|d| {
            std::fs::read_dir(spool.join(d))
                .map(|r| r.count())
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn torture_sigkill_and_sigstop_of_queue_dispatchers_lose_nothing() {
    let Some(pg) = Pg::start() else { return };
    let seed = seed();
    eprintln!("torture seed: {seed} (QMAIL_TORTURE_SEED={seed} replays the schedule)");
    let mut rng = Rng(seed | 1);
    let srv = SmtpServer::start(&["--rcpt-delay", "0.1"]);
    let relay = srv.url("tls=none");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = Command::new(BIN)
        .args(["queue", "init", "--queue", &pg.uri()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sp = d.join("spool");
    let spool = Spool::open_with(
        &sp,
        SpoolOptions {
            durable: false,
            ..Default::default()
        },
    )
    .unwrap();
    let fwd_cfg = d.join("forward.toml");
    std::fs::write(
        &fwd_cfg,
        format!(
            "spools = [{:?}]\nlease_secs = {LEASE}\nrescan_ms = 200\n[queue]\nurl = {:?}\n",
            sp.to_string_lossy(),
            pg.uri()
        ),
    )
    .unwrap();
    let mut fwd = forwarder(d, &fwd_cfg, "forward0");
    let mut slots: Vec<Slot> = (0..SLOTS)
        .map(|k| Slot {
            proc: dispatcher(d, &pg, &relay, &format!("d{k}g0")),
            generation: 0,
            stopped: None,
        })
        .collect();
    let mut db = pg.client();
    let lease_rows = |db: &mut postgres::Client, pid: u32| -> i64 {
        db.query_one(
            "SELECT count(*) FROM qmail.lease WHERE pid = $1",
            &[&(pid as i32)],
        )
        .unwrap()
        .get(0)
    };

    // a backlog first, then the rest in bursts while the faults land
    let mut submitted = 0;
    while submitted < N * 3 / 8 {
        submit(&spool, submitted);
        submitted += 1;
    }
    let mut events: Vec<Event> = Vec::new();
    let mut brief: Vec<(f64, String)> = Vec::new();
    let mut logs: Vec<PathBuf> = Vec::new();
    let (mut kills, mut long_stops, mut brief_stops, mut forwarder_kills) = (0, 0, 0, 0);
    let forwarder_kill_at = N / 2 + rng.below(N as u64 / 4) as usize;
    let t0 = Instant::now();
    let mut next_burst = Instant::now();
    let mut next_fault = Instant::now() + rng.millis(300, 800);
    let mut delivered = 0;
    let mut last_count = Instant::now();
    loop {
        let now = Instant::now();
        if submitted < N && now >= next_burst {
            for _ in 0..25.min(N - submitted) {
                submit(&spool, submitted);
                submitted += 1;
            }
            next_burst = now + Duration::from_millis(300);
            if forwarder_kills == 0 && submitted >= forwarder_kill_at {
                // between a COMMIT and its unlink, maybe: the re-forward is a duplicate key
                std::mem::replace(&mut fwd, forwarder(d, &fwd_cfg, "forward1")).kill();
                forwarder_kills += 1;
            }
        }
        // resume the stopped ones whose time has come
        for s in slots.iter_mut() {
            let resume = match &s.stopped {
                None => false,
                Some(Stop::Brief(at)) => now >= *at,
                Some(Stop::PastLease { since, extra }) => {
                    assert!(
                        since.elapsed() < Duration::from_secs(30),
                        "{}'s lease was not taken back within 30 s",
                        s.proc.name
                    );
                    since.elapsed() >= *extra && lease_rows(&mut db, s.proc.child.id()) == 0
                }
            };
            if resume {
                s.proc.signal("CONT");
                s.stopped = None;
            }
        }
        if last_count.elapsed() >= Duration::from_millis(200) {
            delivered = per_rcpt(&accepted_copies(&srv.record)).len();
            last_count = Instant::now();
        }
        // faults while most of the run is ahead; at least one dispatcher always serves
        if now >= next_fault && delivered < N * 19 / 20 {
            let running: Vec<usize> = (0..SLOTS).filter(|&k| slots[k].stopped.is_none()).collect();
            if running.len() >= 2 {
                let k = running[rng.below(running.len() as u64) as usize];
                let s = &mut slots[k];
                match rng.below(5) {
                    0 | 1 => {
                        events.push(Event {
                            time: unix_now(),
                            who: s.proc.name.clone(),
                            what: "SIGKILL".into(),
                        });
                        s.generation += 1;
                        let name = format!("d{k}g{}", s.generation);
                        let old = std::mem::replace(&mut s.proc, dispatcher(d, &pg, &relay, &name));
                        logs.push(old.log.clone());
                        old.kill();
                        kills += 1;
                    }
                    2 | 3 => {
                        events.push(Event {
                            time: unix_now(),
                            who: s.proc.name.clone(),
                            what: "SIGSTOP past the lease".into(),
                        });
                        s.proc.signal("STOP");
                        s.stopped = Some(Stop::PastLease {
                            since: Instant::now(),
                            extra: Duration::from_secs(LEASE) + rng.millis(0, 700),
                        });
                        long_stops += 1;
                    }
                    _ => {
                        // well within the lease: never a reason for a duplicate
                        brief.push((unix_now(), s.proc.name.clone()));
                        s.proc.signal("STOP");
                        s.stopped = Some(Stop::Brief(Instant::now() + rng.millis(100, 900)));
                        brief_stops += 1;
                    }
                }
            }
            next_fault = Instant::now() + rng.millis(200, 600);
        }
        let quiet = slots.iter().all(|s| s.stopped.is_none());
        if submitted == N && quiet && delivered >= N {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{delivered} of {N} delivered after 120 s (seed {seed}); queue: {:?}",
            db.query("SELECT state, count(*) FROM qmail.message GROUP BY 1", &[])
                .map(|r| r
                    .iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                    .collect::<Vec<_>>())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let run_time = t0.elapsed();
    wait_for(30, "the local spool empty", || local_files(&sp) == 0);
    // the queue's final state: every row a tombstone, none active or owned, no chunk left
    wait_for(30, "every row settled", || {
        db.query_one(
            "SELECT count(*) FROM qmail.message WHERE state <> 'delivered' OR owner IS NOT NULL",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
            == 0
    });
    let rows: i64 = db
        .query_one("SELECT count(*) FROM qmail.message", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, N as i64, "one row (a tombstone) per message");
    let chunks: i64 = db
        .query_one("SELECT count(*) FROM qmail.chunk", &[])
        .unwrap()
        .get(0);
    assert_eq!(chunks, 0);
    let reclaimed: i64 = db
        .query_one("SELECT count(*) FROM qmail.message WHERE claims > 1", &[])
        .unwrap()
        .get(0);
    // the dead ones' leases are taken back; the live ones give theirs back at SIGTERM
    let live: Vec<u32> = slots.iter().map(|s| s.proc.child.id()).collect();
    wait_for(30, "only the live dispatchers' leases", || {
        let pids: Vec<i32> = db
            .query("SELECT pid FROM qmail.lease", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        pids.len() == SLOTS && pids.iter().all(|p| live.contains(&(*p as u32)))
    });
    logs.extend(slots.iter().map(|s| s.proc.log.clone()));
    for s in slots {
        let name = s.proc.name.clone();
        assert!(s.proc.term().success(), "{name} exits cleanly at SIGTERM");
    }
    let leases: i64 = db
        .query_one("SELECT count(*) FROM qmail.lease", &[])
        .unwrap()
        .get(0);
    assert_eq!(leases, 0, "every lease given back");
    fwd.kill();

    let expected: Vec<String> = (0..N).map(rcpt).collect();
    let copies = accepted_copies(&srv.record);
    let v = judge(&expected, &copies, &events);
    eprintln!(
        "torture (seed {seed}): {N} messages in {run_time:.1?}; {kills} SIGKILL, {long_stops} \
         SIGSTOP past the lease, {brief_stops} brief SIGSTOP, {forwarder_kills} forwarder \
         SIGKILL; {reclaimed} messages claimed more than once; {} missing, {} duplicate(s) \
         from the end-of-DATA window (per fault: {:?})",
        v.missing.len(),
        v.duplicates,
        v.per_event
    );
    assert!(kills + long_stops > 0, "faults landed (seed {seed})");
    assert!(
        v.missing.is_empty(),
        "missing (seed {seed}): {:?}",
        v.missing
    );
    if !v.unexplained.is_empty() {
        // what the dispatchers said besides deliveries: claims taken or given back, fences
        let said: Vec<String> = logs
            .iter()
            .flat_map(|l| {
                let name = l
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                std::fs::read_to_string(l)
                    .unwrap_or_default()
                    .lines()
                    .filter(|x| !x.contains("qmail::delivery") && !x.contains("started on"))
                    .map(|x| format!("{name}: {x}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        panic!(
            "duplicates beyond the end-of-DATA window (seed {seed}): {:?}\nfaults: {events:?}\n\
             brief stops: {brief:?}\n{}",
            v.unexplained,
            said.join("\n")
        );
    }
    assert!(
        v.per_event.iter().all(|&c| c <= WORKERS),
        "at most one duplicate per transaction in flight at a fault (seed {seed}): {:?}",
        v.per_event
    );
}

/// The rule itself, on made-up records: a copy followed by another is explained only by a
/// fault of its own sender, within the window around it.
#[test]
fn the_window_rule_explains_only_duplicates_of_a_faulted_sender() {
    let copy = |rcpt: &str, sender: &str, time: f64| window::Copy {
        rcpt: rcpt.into(),
        sender: sender.into(),
        time,
    };
    let ev = |who: &str, time: f64| Event {
        time,
        who: who.into(),
        what: "SIGKILL".into(),
    };
    let expected = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
    let copies = [
        copy("a", "d0g0", 100.0),
        copy("a", "d1g0", 104.0),
        copy("b", "d1g0", 101.0),
    ];
    // d0g0 killed 0.1 s after its copy of a: explained; c never arrived
    let v = judge(&expected, &copies, &[ev("d0g0", 100.1)]);
    assert_eq!(v.missing, ["c"]);
    assert_eq!((v.duplicates, v.per_event.as_slice()), (1, &[1][..]));
    assert!(v.unexplained.is_empty());
    // the fault hit another process, or came too late or too early: not explained
    for e in [ev("d1g0", 100.1), ev("d0g0", 101.0), ev("d0g0", 99.5)] {
        let v = judge(&expected, &copies, &[e]);
        assert_eq!(v.unexplained.len(), 1, "{v:?}");
    }
    // a failover explains any sender's copy in its window
    let v = judge(&expected, &copies, &[ev("*", 100.3)]);
    assert!(v.unexplained.is_empty(), "{v:?}");
    // three copies: each of the first two needs a fault of its own sender in its window
    let three = [
        copies[0].clone(),
        copies[1].clone(),
        copy("a", "d2g0", 109.0),
    ];
    let v = judge(&expected, &three, &[ev("d0g0", 100.0)]);
    assert_eq!(v.over_twice, [("a".to_owned(), 3)]);
    assert_eq!(v.duplicates, 2);
    assert_eq!(v.unexplained.len(), 1, "d1g0's copy is unexplained: {v:?}");
    assert!(v.unexplained[0].contains("copy 2 of 3 by d1g0"), "{v:?}");
    let v = judge(&expected, &three, &[ev("d0g0", 100.0), ev("d1g0", 104.2)]);
    assert!(v.unexplained.is_empty(), "{v:?}");
    assert_eq!(v.per_event, [1, 1]);
}

/// A claim whose COMMIT took effect while its reply was lost (the connection broke: the
/// primary died, as in `failover.rs`) leaves a row `active` under a live dispatcher that no
/// worker of it holds. The dispatcher finds it and gives it back; it is delivered once.
#[test]
fn a_claim_whose_reply_was_lost_is_given_back_by_its_live_owner() {
    let Some(pg) = Pg::start() else { return };
    let srv = SmtpServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cli = |args: &[&str]| {
        let o = Command::new(BIN)
            .args(args)
            .env("QMAIL_LOG", "warn")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    cli(&["queue", "init", "--queue", &pg.uri()]);
    let a = dispatcher(d, &pg, &srv.url("tls=none"), "a");
    let mut db = pg.client();
    let owner = || -> Option<String> {
        pg.client()
            .query_opt(
                "SELECT owner FROM qmail.lease WHERE pid = $1",
                &[&(a.child.id() as i32)],
            )
            .unwrap()
            .map(|r| r.get(0))
    };
    wait_for(30, "the dispatcher's lease", || owner().is_some());
    let me = owner().unwrap();
    // while it is stopped (well within its lease), a row appears as its lost claim would:
    // active, owned by it, claimed a while ago
    a.signal("STOP");
    let sp = d.join("spool");
    let spool = Spool::open_with(
        &sp,
        SpoolOptions {
            durable: false,
            ..Default::default()
        },
    )
    .unwrap();
    submit(&spool, 0);
    cli(&[
        "forward",
        "--drain",
        "--spool",
        sp.to_str().unwrap(),
        "--queue",
        &pg.uri(),
    ]);
    let n = db
        .execute(
            "UPDATE qmail.message SET state = 'active', owner = $1, claims = claims + 1, \
             claimed_at = now() - interval '1 minute'",
            &[&me],
        )
        .unwrap();
    assert_eq!(n, 1);
    a.signal("CONT");
    assert_eq!(srv.wait_count(1, Duration::from_secs(30)), 1, "{}", a.log());
    wait_for(30, "the row settled", || {
        db.query_one(
            "SELECT count(*) FROM qmail.message WHERE state = 'delivered'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
            == 1
    });
    assert!(
        a.log().contains("gave back claims of this process"),
        "{}",
        a.log()
    );
    let got = per_rcpt(&accepted_copies(&srv.record));
    assert_eq!(got.get(&rcpt(0)), Some(&1), "{got:?}");
    assert!(a.term().success());
}
