//! `qmail-dispatcher forward`, `queue init` and `status --queue` against a real PostgreSQL:
//! every local message lands in the queue exactly once, through SIGKILL between COMMIT and
//! unlink, through the database going down mid-run, and a 1 GiB message in bounded memory.

#[path = "../../qmail-dispatch/tests/child_guard/mod.rs"]
mod child_guard;
#[path = "../../qmail-dispatch/tests/pg_common/mod.rs"]
mod pg_common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use child_guard::Guarded;
use pg_common::{Pg, rss_anon_kib, wait_for};
use qmail_core::{Message, QueueId, Spool, SpoolOptions};
use qmail_dispatch::queue::postgres::{PgOptions, PgQueue};
use qmail_dispatch::queue::{Claim, Queue, Settlement};
use qmail_dispatch::state::MessageState;

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

fn submit(spool: &Spool, i: usize) -> QueueId {
    let m = Message::builder()
        .from("noreply@example.com")
        .to(format!("m{i}@example.org").as_str())
        .subject("forwarded")
        .text("hello")
        .build()
        .unwrap();
    spool.submit(&m).unwrap()
}

fn config(dir: &Path, pg: &Pg, rescan_ms: u64) -> PathBuf {
    let p = dir.join("forward.toml");
    std::fs::write(
        &p,
        format!(
            "spools = [{:?}]\nlease_secs = 3\nrescan_ms = {rescan_ms}\n[queue]\nurl = {:?}\n",
            dir.join("spool").to_string_lossy(),
            pg.uri()
        ),
    )
    .unwrap();
    p
}

fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("QMAIL_LOG", "warn")
        .output()
        .unwrap()
}

fn start_forward(cfg: &Path) -> Guarded {
    Guarded(
        Command::new(BIN)
            .arg("--config")
            .arg(cfg)
            .arg("forward")
            .env("QMAIL_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn rows(pg: &Pg) -> i64 {
    pg.client()
        .query_one("SELECT count(*) FROM qmail.message", &[])
        .unwrap()
        .get(0)
}

fn local_files(dir: &Path) -> usize {
    ["ready", "scheduled", "active"]
        .iter()
        .map(|d| {
            std::fs::read_dir(dir.join("spool").join(d))
                .map(|r| r.count())
                .unwrap_or(0)
        })
        .sum()
}

fn init(pg: &Pg) {
    let o = cli(&["queue", "init", "--queue", &pg.uri()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn term(c: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
    panic!("forwarder did not stop on SIGTERM");
}

#[test]
fn queue_init_forward_drain_and_status() {
    let Some(pg) = Pg::start() else { return };
    let o = cli(&["queue", "init", "--queue", &pg.uri()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("applied migration"));
    let o = cli(&["queue", "init", "--queue", &pg.uri()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("up to date"));
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_at(dir.path());
    let ids: Vec<QueueId> = (0..20).map(|i| submit(&spool, i)).collect();
    let sp = dir.path().join("spool");
    let o = cli(&[
        "forward",
        "--drain",
        "--spool",
        sp.to_str().unwrap(),
        "--queue",
        &pg.uri(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("forwarded 20"));
    assert_eq!(rows(&pg), 20);
    assert_eq!(
        local_files(dir.path()),
        0,
        "local files removed after COMMIT"
    );
    let o = cli(&["status", "--json", "--queue", &pg.uri()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["queue"]["states"][0]["state"], "ready");
    assert_eq!(v["queue"]["states"][0]["count"], 20);
    // the rows carry the spool header: the queue hands them out with their envelope
    let q = PgQueue::connect(&pg.url(), PgOptions::default()).unwrap();
    let got = q.claim(100, Duration::from_secs(2)).unwrap();
    assert_eq!(got.len(), 20);
    let mut seen: Vec<&str> = got.iter().map(|c| c.id()).collect();
    seen.sort();
    let mut want: Vec<&str> = ids.iter().map(|i| i.as_str()).collect();
    want.sort();
    assert_eq!(seen, want);
    assert!(got[0].header().envelope.rcpt_to[0].ends_with("@example.org"));
}

#[test]
fn a_forwarder_killed_between_commit_and_unlink_forwards_once() {
    let Some(pg) = Pg::start() else { return };
    init(&pg);
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_at(dir.path());
    // three messages: one import transaction for the three, then SIGKILL before any unlink
    let mut ids: Vec<String> = (1..=3).map(|i| submit(&spool, i).to_string()).collect();
    ids.sort();
    let cfg = config(dir.path(), &pg, 300);
    let mut ch = Guarded(
        Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .arg("forward")
            .env("QMAIL_LOG", "warn")
            .env("QMAIL_FORWARD_TEST_HOLD_AFTER_COMMIT", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut err = BufReader::new(ch.stderr.take().unwrap());
    let mut committed = Vec::new();
    let mut l = String::new();
    while committed.len() < 3 {
        l.clear();
        assert!(err.read_line(&mut l).unwrap() > 0, "forwarder ended");
        if let Some(id) = l.trim().strip_prefix("committed ") {
            committed.push(id.to_owned());
        }
    }
    committed.sort();
    assert_eq!(committed, ids);
    ch.kill().unwrap(); // SIGKILL after COMMIT, before the unlink
    ch.wait().unwrap();
    assert_eq!(rows(&pg), 3);
    assert_eq!(
        local_files(dir.path()),
        3,
        "the local files are still there"
    );
    // the next forwarder takes the dead one's claims back and finds the rows already there
    let o = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["forward", "--drain"])
        .env("QMAIL_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("forwarded 0, duplicates 3"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(rows(&pg), 3, "exactly one row each");
    assert_eq!(local_files(dir.path()), 0);
    let q = PgQueue::connect(&pg.url(), PgOptions::default()).unwrap();
    let c = q.claim(10, Duration::from_secs(2)).unwrap();
    assert_eq!(c.len(), 3, "each claimed once");
    for c in c {
        c.settle(Settlement::Delivered(MessageState::default()))
            .unwrap();
    }
    assert!(q.claim(10, Duration::from_millis(500)).unwrap().is_empty());
}

#[test]
fn the_database_killed_while_forwarding_loses_nothing() {
    let Some(mut pg) = Pg::start() else { return };
    init(&pg);
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_at(dir.path());
    let cfg = config(dir.path(), &pg, 200);
    let mut fwd = start_forward(&cfg);
    let n = 300;
    for i in 0..100 {
        submit(&spool, i);
    }
    wait_for(30, "the first messages forwarded", || rows(&pg) > 0);
    pg.kill();
    for i in 100..200 {
        submit(&spool, i);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        local_files(dir.path()) >= 100,
        "submits keep working while the database is down"
    );
    assert!(
        fwd.try_wait().unwrap().is_none(),
        "the forwarder waits, it does not exit"
    );
    pg.restart();
    for i in 200..n {
        submit(&spool, i);
    }
    wait_for(60, "every message forwarded after the restart", || {
        local_files(dir.path()) == 0
    });
    assert_eq!(rows(&pg), n as i64, "nothing lost, nothing doubled");
    term(&mut fwd);
}

/// utime + stime of a process, in clock ticks (proc(5): fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // the command name may hold spaces: count fields after its closing parenthesis
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn inotify_wakes_an_idle_forwarder() {
    let Some(pg) = Pg::start() else { return };
    init(&pg);
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_at(dir.path());
    // a 60 s rescan: only the inotify wake-up can be this quick
    let cfg = config(dir.path(), &pg, 60_000);
    let mut fwd = start_forward(&cfg);
    // idle, it sleeps: its own scans of ready/ (open, read, close) do not wake it (it spun on
    // a core when they did: ~190 ticks of CPU in these 2 s)
    let before = cpu_ticks(fwd.id());
    std::thread::sleep(Duration::from_secs(2));
    let idle = cpu_ticks(fwd.id()) - before;
    assert!(
        idle < 50,
        "an idle forwarder used {idle} ticks of CPU in 2 s"
    );
    let t = Instant::now();
    submit(&spool, 1);
    wait_for(20, "forwarded", || rows(&pg) == 1);
    eprintln!("idle submit → row committed in {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(20));
    term(&mut fwd);
}

#[test]
fn a_1_gib_message_is_forwarded_in_bounded_memory() {
    let Some(pg) = Pg::start() else { return };
    init(&pg);
    let mib = pg_common::big_mib();
    let dir = tempfile::tempdir().unwrap();
    let _spool = spool_at(dir.path());
    let id = QueueId::generate();
    let len = mib << 20;
    {
        // written directly in the spool format: no builder holds 1 GiB in memory
        let tmp = dir.path().join("spool/tmp").join(id.as_str());
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
        let h = qmail_core::SpoolHeader {
            envelope: qmail_core::Envelope {
                mail_from: "noreply@example.com".into(),
                rcpt_to: vec!["big@example.org".into()],
                smtputf8: false,
                eightbitmime: false,
            },
            created: qmail_core::spool::now_secs(),
            not_before: None,
            priority: 3,
            message_id: "<big@example.com>".into(),
        };
        qmail_core::spool::record::write_header(&mut f, &h).unwrap();
        let mut line = vec![b'x'; 1022];
        line.extend_from_slice(b"\r\n");
        for _ in 0..len / 1024 {
            f.write_all(&line).unwrap();
        }
        qmail_core::spool::record::write_trailer(&mut f, len).unwrap();
        f.flush().unwrap();
        drop(f);
        std::fs::rename(&tmp, dir.path().join("spool/ready").join(id.as_str())).unwrap();
    }
    let cfg = config(dir.path(), &pg, 300);
    let mut ch = Guarded(
        Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .args(["forward", "--drain"])
            .env("QMAIL_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut peak = 0;
    let t = Instant::now();
    while ch.try_wait().unwrap().is_none() {
        peak = peak.max(rss_anon_kib(ch.id()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "forwarding took too long"
        );
    }
    assert!(ch.wait().unwrap().success());
    eprintln!(
        "{mib} MiB forwarded in {:?}, forwarder peak RssAnon {peak} KiB",
        t.elapsed()
    );
    assert!(peak <= 64 * 1024, "peak RssAnon {peak} KiB > 64 MiB");
    let r = pg
        .client()
        .query_one(
            "SELECT body_len, chunked, (SELECT count(*) FROM qmail.chunk c WHERE c.id = m.id) \
             FROM qmail.message m WHERE id = $1",
            &[&id.as_str()],
        )
        .unwrap();
    assert_eq!(r.get::<_, i64>(0) as u64, len);
    assert!(r.get::<_, bool>(1));
    assert_eq!(r.get::<_, i64>(2) as u64, len.div_ceil(1 << 20));
    assert_eq!(local_files(dir.path()), 0);
}
