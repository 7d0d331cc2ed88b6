//! The PostgreSQL queue against a real PostgreSQL (Debian's, started privately by
//! `pg_common`): claim/settle/fencing, aging, scheduled and deferred due times, requeue,
//! chunked bodies with memory measured, leases (SIGKILL and SIGSTOP of an owner), the
//! fleet-wide rate limit and connection slots, the database going away.

mod pg_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pg_common::{Pg, rss_anon_kib, wait_for};
use qmail_core::{Envelope, QueueId, SpoolHeader};
use qmail_dispatch::queue::postgres::{
    FenceCounts, Imported, PgClaim, PgOptions, PgQueue, RateDecision,
};
use qmail_dispatch::queue::{Claim, LeaseHealth, Queue, QueueError, SettleError, Settlement};
use qmail_dispatch::state::MessageState;

fn header(created: i64, priority: u8, not_before: Option<i64>) -> SpoolHeader {
    SpoolHeader {
        envelope: Envelope {
            mail_from: "noreply@example.com".into(),
            rcpt_to: vec!["rcpt@example.org".into()],
            smtputf8: false,
            eightbitmime: false,
        },
        created,
        not_before,
        priority,
        message_id: "<t@example.com>".into(),
    }
}

fn now() -> i64 {
    qmail_core::spool::now_secs()
}

fn opts(schema: &str, lease: Duration) -> PgOptions {
    PgOptions {
        schema: schema.into(),
        lease,
        poll: Duration::from_millis(200),
        ..PgOptions::default()
    }
}

fn queue(pg: &Pg, schema: &str) -> PgQueue {
    PgQueue::init(&pg.url(), schema).unwrap();
    PgQueue::connect(&pg.url(), opts(schema, Duration::from_secs(30))).unwrap()
}

fn import(q: &PgQueue, h: &SpoolHeader, body: &[u8]) -> QueueId {
    let id = QueueId::generate();
    assert_eq!(
        q.import(&id, h, &mut &body[..], body.len() as u64).unwrap(),
        Imported::New
    );
    id
}

/// One value of the first row of `sql`.
fn scalar<T: for<'a> postgres::types::FromSql<'a>>(
    pg: &Pg,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> T {
    pg.client().query_one(sql, params).unwrap().get(0)
}

fn state_of(pg: &Pg, schema: &str, id: &str) -> (String, Option<String>, i64) {
    let r = pg
        .client()
        .query_one(
            &format!("SELECT state, owner, claims FROM {schema}.message WHERE id = $1"),
            &[&id],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

fn read_all(c: &impl Claim) -> Vec<u8> {
    let mut v = Vec::new();
    c.body().unwrap().read_to_end(&mut v).unwrap();
    v
}

#[test]
fn init_is_idempotent_and_import_is_idempotent_with_tombstones() {
    let Some(pg) = Pg::start() else { return };
    assert_eq!(PgQueue::init(&pg.url(), "qmail").unwrap(), vec![1, 2, 3]);
    assert!(PgQueue::init(&pg.url(), "qmail").unwrap().is_empty());
    // several hosts, the first one dead: target_session_attrs=read-write finds the live one
    let multi = format!(
        "postgres://qmail@127.0.0.1:1,127.0.0.1:{}/postgres?target_session_attrs=read-write&connect_timeout=2",
        pg.port
    );
    let q = PgQueue::connect(&multi, opts("qmail", Duration::from_secs(30))).unwrap();
    assert!(matches!(
        PgQueue::connect(&pg.url(), opts("other", Duration::from_secs(30))),
        Err(QueueError::Corrupt { .. })
    ));
    assert!(PgQueue::connect(&pg.url(), opts("Bad-Name", Duration::from_secs(30))).is_err());

    let body = b"Subject: hi\r\n\r\nhello\r\n";
    let id = import(&q, &header(now(), 3, None), body);
    assert_eq!(
        q.import(
            &id,
            &header(now(), 3, None),
            &mut &body[..],
            body.len() as u64
        )
        .unwrap(),
        Imported::Duplicate
    );
    let got = q.claim(10, Duration::from_secs(2)).unwrap();
    assert_eq!(got.len(), 1);
    let c = got.into_iter().next().unwrap();
    assert_eq!(c.id(), id.as_str());
    assert_eq!(c.header().priority, 3);
    assert_eq!(read_all(&c), body);
    assert!(c.still_mine());
    let st = MessageState {
        attempts: 1,
        delivered: vec!["rcpt@example.org".into()],
        ..Default::default()
    };
    c.settle(Settlement::Delivered(st)).unwrap();
    let (state, owner, claims) = state_of(&pg, "qmail", id.as_str());
    assert_eq!((state.as_str(), owner, claims), ("delivered", None, 1));
    // the tombstone keeps a re-forward from being sent again
    assert_eq!(
        q.import(
            &id,
            &header(now(), 3, None),
            &mut &body[..],
            body.len() as u64
        )
        .unwrap(),
        Imported::Duplicate
    );
    assert!(q.claim(10, Duration::from_millis(300)).unwrap().is_empty());
    let status = q.status().unwrap();
    assert_eq!(status.states.len(), 1);
    assert_eq!(status.states[0].state, "delivered");
    assert_eq!(status.states[0].count, 1);
    let qp = PgQueue::connect(
        &pg.url(),
        PgOptions {
            tombstone_horizon: Duration::ZERO,
            ..opts("qmail", Duration::from_secs(30))
        },
    )
    .unwrap();
    wait_for(5, "tombstone purged", || {
        qp.purge_tombstones().unwrap() == 1
    });
}

#[test]
fn a_stale_owner_changes_nothing() {
    let Some(pg) = Pg::start() else { return };
    PgQueue::init(&pg.url(), "fence").unwrap();
    let a = PgQueue::connect(&pg.url(), opts("fence", Duration::from_secs(1))).unwrap();
    let b = PgQueue::connect(&pg.url(), opts("fence", Duration::from_secs(1))).unwrap();
    let id = import(&a, &header(now(), 3, None), b"x\r\n");
    let ca = a.claim(1, Duration::from_secs(2)).unwrap().pop().unwrap();
    assert_eq!(ca.fence_token(), 1);
    assert!(ca.still_mine());
    // b sees nothing to claim while a holds it
    assert!(b.claim(1, Duration::from_millis(300)).unwrap().is_empty());
    // a stops renewing (as if stopped): its lease ages past 1 s in database time
    wait_for(10, "a's lease expired and taken back", || {
        b.heartbeat().unwrap();
        b.reclaim_expired().unwrap() == 1
    });
    assert!(
        !ca.still_mine(),
        "the fence is down once the claim was taken back"
    );
    let cb = b.claim(1, Duration::from_secs(2)).unwrap().pop().unwrap();
    assert_eq!(cb.fence_token(), 2);
    // the stale owner's settle changes nothing
    let st = MessageState {
        attempts: 7,
        ..Default::default()
    };
    assert!(matches!(
        ca.settle(Settlement::Failed(st)),
        Err(SettleError::LostClaim)
    ));
    let (state, owner, claims) = state_of(&pg, "fence", id.as_str());
    assert_eq!(state, "active");
    assert_eq!(owner.as_deref(), Some(b.instance()));
    assert_eq!(claims, 2);
    // a, renewing again, gets a new lease but not the message
    assert_eq!(a.heartbeat().unwrap(), LeaseHealth::Fresh);
    assert!(a.claim(1, Duration::from_millis(300)).unwrap().is_empty());
    cb.settle(Settlement::Deferred {
        state: MessageState::default(),
        due: now() + 3600,
    })
    .unwrap();
    assert_eq!(state_of(&pg, "fence", id.as_str()).0, "deferred");
}

#[test]
fn priority_with_aging_orders_claims() {
    let Some(pg) = Pg::start() else { return };
    let q = queue(&pg, "aging");
    let t = now() - 10_000;
    // rank = created + (priority - 1) * 600
    let low_old = import(&q, &header(t, 5, None), b"a\r\n"); // t + 2400
    let normal = import(&q, &header(t + 1000, 3, None), b"b\r\n"); // t + 2200
    let urgent = import(&q, &header(t + 2000, 1, None), b"c\r\n"); // t + 2000
    let normal_late = import(&q, &header(t + 3000, 3, None), b"d\r\n"); // t + 4200
    let got: Vec<String> = q
        .claim(10, Duration::from_secs(2))
        .unwrap()
        .iter()
        .map(|c| c.id().to_owned())
        .collect();
    assert_eq!(
        got,
        [
            urgent.as_str(),
            normal.as_str(),
            low_old.as_str(),
            normal_late.as_str()
        ],
        "lowest rank first: an old low-priority message is not starved by newer normal ones"
    );
}

#[test]
fn scheduled_and_deferred_wait_for_their_due_time_and_requeue() {
    let Some(pg) = Pg::start() else { return };
    let q = queue(&pg, "due");
    // due times are whole seconds: 4 s ahead is at least 3 s, far more than the 300 ms looks
    let sched = import(&q, &header(now(), 3, Some(now() + 4)), b"s\r\n");
    assert_eq!(state_of(&pg, "due", sched.as_str()).0, "scheduled");
    assert!(q.claim(5, Duration::from_millis(300)).unwrap().is_empty());
    let c = q.claim(5, Duration::from_secs(10)).unwrap().pop().unwrap();
    assert_eq!(c.id(), sched.as_str());
    let due = now() + 4;
    let st = MessageState {
        attempts: 1,
        next_due: due,
        ..Default::default()
    };
    c.settle(Settlement::Deferred {
        state: st.clone(),
        due,
    })
    .unwrap();
    assert!(q.claim(5, Duration::from_millis(300)).unwrap().is_empty());
    let c = q.claim(5, Duration::from_secs(10)).unwrap().pop().unwrap();
    assert_eq!(c.state(), &st, "the state travels with the row");
    c.settle(Settlement::Failed(st.clone())).unwrap();
    assert_eq!(state_of(&pg, "due", sched.as_str()).0, "failed");
    assert!(q.claim(5, Duration::from_millis(300)).unwrap().is_empty());
    assert_eq!(q.requeue_failed(&[]).unwrap(), vec![sched.to_string()]);
    let c = q.claim(5, Duration::from_secs(2)).unwrap().pop().unwrap();
    assert_eq!(c.fence_token(), 3);
    c.settle(Settlement::Deferred {
        state: st.clone(),
        due: now() + 3600,
    })
    .unwrap();
    assert_eq!(q.retry(&[sched.to_string()]).unwrap().len(), 1);
    let c = q.claim(5, Duration::from_secs(2)).unwrap().pop().unwrap();
    c.settle(Settlement::Release).unwrap();
    let c = q.claim(5, Duration::from_secs(2)).unwrap().pop().unwrap();
    c.settle(Settlement::Held).unwrap();
    assert!(q.claim(5, Duration::from_millis(300)).unwrap().is_empty());
    assert_eq!(state_of(&pg, "due", sched.as_str()).0, "held");
    let v = q.show(sched.as_str()).unwrap().unwrap();
    assert_eq!(v["state"], "held");
    assert_eq!(v["dispatch"]["attempts"], 1);
}

#[test]
fn notify_wakes_a_waiting_claim() {
    let Some(pg) = Pg::start() else { return };
    let q = queue(&pg, "wake");
    let q2 = PgQueue::connect(
        &pg.url(),
        PgOptions {
            // polling alone would take 30 s: only NOTIFY can wake it in time
            poll: Duration::from_secs(30),
            ..opts("wake", Duration::from_secs(30))
        },
    )
    .unwrap();
    assert!(q2.claim(1, Duration::from_millis(200)).unwrap().is_empty());
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        let got = q2.claim(1, Duration::from_secs(20)).unwrap();
        (got.len(), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(700));
    import(&q, &header(now(), 3, None), b"n\r\n");
    let (n, took) = waiter.join().unwrap();
    assert_eq!(n, 1);
    assert!(
        took < Duration::from_secs(10),
        "woken by NOTIFY, took {took:?}"
    );
}

/// 64 KiB blocks: block k is k (8 bytes, little-endian) then k as u8 repeated.
fn block(k: u64, out: &mut [u8]) {
    out.fill(k as u8 ^ 0x5a);
    out[..8].copy_from_slice(&k.to_le_bytes());
}

struct Pattern {
    left: u64,
    k: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for Pattern {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        if self.pos == self.buf.len() {
            block(self.k, &mut self.buf);
            self.k += 1;
            self.pos = 0;
        }
        let n = out
            .len()
            .min(self.buf.len() - self.pos)
            .min(self.left as usize);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Largest RssAnon seen while `f` runs (sampled every 20 ms).
fn peak_rss_anon_kib<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while !s2.load(std::sync::atomic::Ordering::SeqCst) {
            peak = peak.max(rss_anon_kib(std::process::id()).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    });
    let r = f();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    (r, sampler.join().unwrap())
}

#[test]
fn a_large_body_is_chunked_and_streamed_in_bounded_memory() {
    let Some(pg) = Pg::start() else { return };
    let q = queue(&pg, "big");
    let mib = pg_common::big_mib();
    let len = mib << 20 | 12_345; // not a multiple of the chunk size
    let id = QueueId::generate();
    let before = rss_anon_kib(std::process::id()).unwrap();
    let (r, peak_in) = peak_rss_anon_kib(|| {
        let mut body = Pattern {
            left: len,
            k: 0,
            buf: vec![0; 65536],
            pos: 65536,
        };
        q.import(&id, &header(now(), 3, None), &mut body, len)
    });
    assert_eq!(r.unwrap(), Imported::New);
    let chunks: i64 = pg
        .client()
        .query_one(
            "SELECT count(*) FROM big.chunk WHERE id = $1",
            &[&id.as_str()],
        )
        .unwrap()
        .get(0);
    assert_eq!(chunks as u64, len.div_ceil(1 << 20));
    let c = q.claim(1, Duration::from_secs(2)).unwrap().pop().unwrap();
    assert_eq!(c.body_len(), len);
    let (read, peak_out) = peak_rss_anon_kib(|| {
        let mut r = c.body().unwrap();
        let mut got = vec![0u8; 65536];
        let mut want = vec![0u8; 65536];
        let mut k = 0u64;
        let mut total = 0u64;
        loop {
            let n = (len - total).min(65536) as usize;
            if n == 0 {
                break;
            }
            r.read_exact(&mut got[..n]).unwrap();
            block(k, &mut want);
            assert!(got[..n] == want[..n], "block {k} differs");
            k += 1;
            total += n as u64;
        }
        let mut extra = [0u8; 1];
        assert_eq!(r.read(&mut extra).unwrap(), 0, "no bytes past the end");
        total
    });
    assert_eq!(read, len);
    eprintln!(
        "{mib} MiB body: RssAnon {before} KiB before, peak {peak_in} KiB importing, \
         {peak_out} KiB reading"
    );
    assert!(
        peak_in.saturating_sub(before) <= 64 * 1024 && peak_out.saturating_sub(before) <= 64 * 1024,
        "anonymous memory grew by more than 64 MiB: {before} -> {peak_in} / {peak_out} KiB"
    );
    c.settle(Settlement::Delivered(MessageState::default()))
        .unwrap();
    let chunks: i64 = pg
        .client()
        .query_one("SELECT count(*) FROM big.chunk", &[])
        .unwrap()
        .get(0);
    assert_eq!(chunks, 0, "a tombstone keeps no body");
}

/// Child processes for the lease and rate tests: this test binary re-run with
/// `QMAIL_PG_CHILD` set (a no-op test otherwise).
#[test]
fn child_helper() {
    let Ok(role) = std::env::var("QMAIL_PG_CHILD") else {
        return;
    };
    let url = std::env::var("QMAIL_PG_URL").unwrap();
    let schema = std::env::var("QMAIL_PG_SCHEMA").unwrap();
    let lease: u64 = std::env::var("QMAIL_PG_LEASE").unwrap().parse().unwrap();
    let q = PgQueue::connect(&url, opts(&schema, Duration::from_secs(lease))).unwrap();
    let mut out = std::io::stdout();
    match role.as_str() {
        "owner" => {
            let got = q.claim(100, Duration::from_secs(5)).unwrap();
            writeln!(out, "claimed {}", got.len()).unwrap();
            out.flush().unwrap();
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            let (mut ok, mut lost) = (0, 0);
            for c in got {
                match c.settle(Settlement::Failed(MessageState::default())) {
                    Ok(()) => ok += 1,
                    Err(SettleError::LostClaim) => lost += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            writeln!(out, "settled {ok} lost {lost}").unwrap();
        }
        "rate" => {
            let start: u64 = std::env::var("QMAIL_PG_START").unwrap().parse().unwrap();
            let start = std::time::UNIX_EPOCH + Duration::from_millis(start);
            while std::time::SystemTime::now() < start {
                std::thread::sleep(Duration::from_millis(1));
            }
            let t = Instant::now();
            let mut granted = 0;
            while t.elapsed() < Duration::from_secs(10) {
                match q.take_token("mx.example", 50.0, 1.0).unwrap() {
                    RateDecision::Granted => granted += 1,
                    RateDecision::Wait(d) => std::thread::sleep(d.min(Duration::from_millis(20))),
                }
            }
            writeln!(out, "granted {granted}").unwrap();
        }
        r => panic!("unknown role {r}"),
    }
    out.flush().unwrap();
}

fn child(pg: &Pg, schema: &str, role: &str, lease: u64) -> std::process::Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "child_helper", "--nocapture", "--quiet"])
        .env("QMAIL_PG_CHILD", role)
        .env("QMAIL_PG_URL", pg.url())
        .env("QMAIL_PG_SCHEMA", schema)
        .env("QMAIL_PG_LEASE", lease.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    c
}

fn line_with(r: &mut impl BufRead, prefix: &str) -> String {
    let mut l = String::new();
    loop {
        l.clear();
        assert!(
            r.read_line(&mut l).unwrap() > 0,
            "child ended before {prefix:?}"
        );
        if l.starts_with(prefix) {
            return l.trim().to_owned();
        }
    }
}

#[test]
fn a_killed_owner_is_noticed_by_its_advisory_lock_and_taken_back_after_its_grace() {
    let Some(pg) = Pg::start() else { return };
    let q = queue(&pg, "killed");
    for _ in 0..5 {
        import(&q, &header(now(), 3, None), b"k\r\n");
    }
    // a 300 s lease: only the advisory lock can tell the owner is gone
    let mut ch = child(&pg, "killed", "owner", 300).spawn().unwrap();
    let mut out = BufReader::new(ch.stdout.take().unwrap());
    assert_eq!(line_with(&mut out, "claimed"), "claimed 5");
    assert_eq!(
        q.reclaim_expired().unwrap(),
        0,
        "a live owner keeps its claims"
    );
    let grace: i32 = scalar(&pg, "SELECT fence_grace_ms FROM killed.lease", &[]);
    assert_eq!(grace, 3000, "three windows of the default 1 s local fence");
    ch.kill().unwrap(); // SIGKILL
    ch.wait().unwrap();
    // its advisory lock is gone at once; its claims wait out the grace its row carries (its
    // fence may have answered from the lease for a window after its last renewal)
    let t = Instant::now();
    let (mut back, mut young_refused, mut age_at_takeback) = (0, false, None);
    wait_for(10, "claims of the killed owner taken back", || {
        let age: Option<f64> = pg
            .client()
            .query_opt(
                "SELECT extract(epoch FROM now() - renewed)::float8 FROM killed.lease",
                &[],
            )
            .unwrap()
            .map(|r| r.get(0));
        let n = q.reclaim_expired().unwrap();
        match age {
            Some(a) if n == 0 && a < 2.0 => young_refused = true,
            Some(a) if n > 0 => age_at_takeback = Some(a),
            _ => {}
        }
        back += n;
        back == 5
    });
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(
        young_refused,
        "not taken back while its last renewal was young"
    );
    let a = age_at_takeback.unwrap();
    assert!(
        a >= 2.5,
        "taken back {a:.2} s after the last renewal: before the 3 s grace"
    );
    assert_eq!(q.claim(10, Duration::from_secs(1)).unwrap().len(), 5);
}

#[test]
fn a_stopped_owner_loses_its_claims_when_its_heartbeat_ages_and_cannot_settle() {
    let Some(pg) = Pg::start() else { return };
    let q = PgQueue::connect(&pg.url(), opts("stopped", Duration::from_secs(2)));
    assert!(q.is_err(), "not initialised yet");
    let q = {
        PgQueue::init(&pg.url(), "stopped").unwrap();
        PgQueue::connect(&pg.url(), opts("stopped", Duration::from_secs(2))).unwrap()
    };
    let ids: Vec<QueueId> = (0..3)
        .map(|_| import(&q, &header(now(), 3, None), b"s\r\n"))
        .collect();
    let mut ch = child(&pg, "stopped", "owner", 2).spawn().unwrap();
    let mut out = BufReader::new(ch.stdout.take().unwrap());
    assert_eq!(line_with(&mut out, "claimed"), "claimed 3");
    let pid = ch.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    // the stopped process keeps its connection (and advisory lock): its heartbeat row ages
    let mut back = 0;
    wait_for(15, "claims of the stopped owner taken back", || {
        q.heartbeat().unwrap();
        back += q.reclaim_expired().unwrap();
        back == 3
    });
    let mine = q.claim(10, Duration::from_secs(1)).unwrap();
    assert_eq!(mine.len(), 3);
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    ch.stdin.as_mut().unwrap().write_all(b"settle\n").unwrap();
    assert_eq!(line_with(&mut out, "settled"), "settled 0 lost 3");
    ch.wait().unwrap();
    for id in &ids {
        let (state, owner, claims) = state_of(&pg, "stopped", id.as_str());
        assert_eq!(state, "active", "the stale owner's Failed changed nothing");
        assert_eq!(owner.as_deref(), Some(q.instance()));
        assert_eq!(claims, 2);
    }
    for c in mine {
        c.settle(Settlement::Delivered(MessageState::default()))
            .unwrap();
    }
}

#[test]
fn the_fleet_wide_rate_limit_holds_across_three_processes() {
    let Some(pg) = Pg::start() else { return };
    let _q = queue(&pg, "rate");
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 1500;
    let children: Vec<_> = (0..3)
        .map(|_| {
            child(&pg, "rate", "rate", 30)
                .env("QMAIL_PG_START", start.to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut total = 0u64;
    let mut each = Vec::new();
    for mut ch in children {
        let mut out = BufReader::new(ch.stdout.take().unwrap());
        let l = line_with(&mut out, "granted");
        let n: u64 = l.split_whitespace().nth(1).unwrap().parse().unwrap();
        each.push(n);
        total += n;
        assert!(ch.wait().unwrap().success());
    }
    eprintln!("granted over 10 s at 50/s by 3 processes: {each:?} = {total}");
    assert!(total <= 550, "at most 50 × 1.1 a second over 10 s: {total}");
    // a floor only against a limiter that starves (debug children on 2 busy cores)
    assert!(total >= 250, "the limit is not starving the fleet: {total}");
    assert!(
        each.iter().all(|&n| n > 0),
        "every process got some: {each:?}"
    );
}

#[test]
fn connection_slots_are_shared_by_the_fleet() {
    let Some(pg) = Pg::start() else { return };
    let a = queue(&pg, "slots");
    let b = PgQueue::connect(&pg.url(), opts("slots", Duration::from_secs(30))).unwrap();
    let s1 = a.connection_slot("mx", 2).unwrap().unwrap();
    let s2 = b.connection_slot("mx", 2).unwrap().unwrap();
    assert_ne!(s1.index(), s2.index());
    assert!(a.connection_slot("mx", 2).unwrap().is_none());
    assert!(b.connection_slot("mx", 2).unwrap().is_none());
    assert!(
        a.connection_slot("other", 2).unwrap().is_some(),
        "per relay"
    );
    drop(s2);
    let s3 = a.connection_slot("mx", 2).unwrap().unwrap();
    assert!(b.connection_slot("mx", 2).unwrap().is_none());
    drop((s1, s3));
    assert!(b.connection_slot("mx", 2).unwrap().is_some());
}

#[test]
fn while_the_database_is_down_nothing_is_claimed_and_unavailable_is_reported() {
    let Some(mut pg) = Pg::start() else { return };
    let q = queue(&pg, "down");
    let id = import(&q, &header(now(), 3, None), b"d\r\n");
    assert_eq!(q.heartbeat().unwrap(), LeaseHealth::Fresh);
    pg.kill();
    assert!(matches!(
        q.claim(1, Duration::from_millis(200)),
        Err(QueueError::Unavailable(_))
    ));
    match q.heartbeat() {
        Ok(LeaseHealth::Stale { .. }) | Err(QueueError::Unavailable(_)) => {}
        other => panic!("heartbeat while down: {other:?}"),
    }
    assert!(matches!(
        q.import(
            &QueueId::generate(),
            &header(now(), 3, None),
            &mut &b"x"[..],
            1
        ),
        Err(QueueError::Unavailable(_))
    ));
    pg.restart();
    let mut got = Vec::new();
    wait_for(20, "claims again after the restart", || {
        if let Ok(v) = q.claim(1, Duration::from_millis(200)) {
            got.extend(v);
        }
        !got.is_empty()
    });
    assert_eq!(got[0].id(), id.as_str());
}

#[test]
fn grouped_delivered_settles_fence_each_row() {
    let Some(pg) = Pg::start() else { return };
    let q = queue(&pg, "grouped");
    for i in 0..5 {
        import(&q, &header(now(), 3, None), format!("m{i}\r\n").as_bytes());
    }
    let claims = q.claim(5, Duration::from_secs(2)).unwrap();
    assert_eq!(claims.len(), 5);
    let settler = q.group_settler(64);
    // another dispatcher took the third claim back and claimed it again
    let taken = claims[2].id().to_owned();
    let mut db = pg.client();
    db.execute(
        "UPDATE grouped.message SET owner = 'other', claims = claims + 1 WHERE id = $1",
        &[&taken],
    )
    .unwrap();
    // the first settle's transaction waits on a row lock, so the next four queue up behind it
    // and go together in the second transaction
    let mut blocker = pg.client();
    let mut tx = blocker.transaction().unwrap();
    tx.query(
        "SELECT 1 FROM grouped.message WHERE id = $1 FOR UPDATE",
        &[&claims[0].id()],
    )
    .unwrap();
    let delivered = || Settlement::Delivered(MessageState::default());
    let results = std::thread::scope(|sc| {
        let first = sc.spawn(|| settler.settle(&claims[0], delivered()));
        wait_for(10, "the first group waits on the row lock", || {
            pg.client()
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                     AND query LIKE '%unnest%'",
                    &[],
                )
                .unwrap()
                .get::<_, i64>(0)
                == 1
        });
        let rest: Vec<_> = claims[1..]
            .iter()
            .map(|c| sc.spawn(|| settler.settle(c, delivered())))
            .collect();
        wait_for(10, "four settles queued behind it", || {
            settler.queued() == 4
        });
        tx.commit().unwrap();
        let mut out = vec![first.join().unwrap()];
        out.extend(rest.into_iter().map(|h| h.join().unwrap()));
        out
    });
    for (i, r) in results.iter().enumerate() {
        if i == 2 {
            assert!(
                matches!(r, Err(SettleError::LostClaim)),
                "the row taken back says LostClaim: {r:?}"
            );
        } else {
            assert!(r.is_ok(), "row {i} commits: {r:?}");
        }
    }
    assert_eq!(
        settler.transactions(),
        2,
        "one transaction, then the four together"
    );
    for (i, c) in claims.iter().enumerate() {
        let (state, owner, n) = state_of(&pg, "grouped", c.id());
        if i == 2 {
            assert_eq!(
                (state.as_str(), owner.as_deref(), n),
                ("active", Some("other"), 2)
            );
        } else {
            assert_eq!((state.as_str(), owner, n), ("delivered", None, 1));
        }
    }
    let bodies: i64 = db
        .query_one(
            "SELECT count(*) FROM grouped.message WHERE state = 'delivered' AND body IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(bodies, 0, "tombstones keep no body");
}

#[test]
fn a_batch_import_is_one_statement_and_idempotent_per_row() {
    let Some(pg) = Pg::start() else { return };
    let q = queue(&pg, "batch");
    let h = header(now(), 3, None);
    let later = header(now(), 3, Some(now() + 3600));
    let dup = import(&q, &h, b"first\r\n");
    let (a, b) = (QueueId::generate(), QueueId::generate());
    let (mut ba, mut bd, mut bb) = (&b"aa\r\n"[..], &b"other\r\n"[..], &b"bbb\r\n"[..]);
    let mut items = [
        qmail_dispatch::queue::postgres::ImportItem {
            id: &a,
            header: &h,
            body: &mut ba,
            len: 4,
        },
        qmail_dispatch::queue::postgres::ImportItem {
            id: &dup,
            header: &h,
            body: &mut bd,
            len: 7,
        },
        qmail_dispatch::queue::postgres::ImportItem {
            id: &b,
            header: &later,
            body: &mut bb,
            len: 5,
        },
    ];
    assert_eq!(
        q.import_batch(&mut items).unwrap(),
        vec![Imported::New, Imported::Duplicate, Imported::New]
    );
    assert_eq!(state_of(&pg, "batch", a.as_str()).0, "ready");
    assert_eq!(state_of(&pg, "batch", b.as_str()).0, "scheduled");
    let got = q.claim(5, Duration::from_secs(2)).unwrap();
    let mut bodies: Vec<(String, Vec<u8>)> = got
        .iter()
        .map(|c| (c.id().to_owned(), read_all(c)))
        .collect();
    bodies.sort();
    let mut want = vec![
        (a.to_string(), b"aa\r\n".to_vec()),
        (dup.to_string(), b"first\r\n".to_vec()),
    ];
    want.sort();
    assert_eq!(bodies, want, "the duplicate kept its first body");
    // a body shorter than its length fails the whole batch: nothing written
    let c = QueueId::generate();
    let mut short = &b"x"[..];
    let mut bc = &b"cc\r\n"[..];
    let d = QueueId::generate();
    let mut items = [
        qmail_dispatch::queue::postgres::ImportItem {
            id: &c,
            header: &h,
            body: &mut bc,
            len: 4,
        },
        qmail_dispatch::queue::postgres::ImportItem {
            id: &d,
            header: &h,
            body: &mut short,
            len: 9,
        },
    ];
    assert!(matches!(
        q.import_batch(&mut items),
        Err(QueueError::Io { .. })
    ));
    let n: i64 = pg
        .client()
        .query_one(
            "SELECT count(*) FROM batch.message WHERE id = ANY($1)",
            &[&vec![c.to_string(), d.to_string()]],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

/// The statistics of a queue's table are stale by nature: it grows and shrinks by orders of
/// magnitude between two autovacuums. The statements a dispatcher runs for every message
/// must read by key whatever the statistics say. Before, PostgreSQL switched the grouped
/// settle to a generic plan after five executions, made while the table was small and kept
/// for as long as the connection lived: a sequential scan of the whole table per statement
/// (`bench/postgres/profile.sh`: 2.8 ms per statement at 30,000 rows). The per-message
/// statements are now planned once, with the scans a stale plan could pick made a last
/// resort (`queue/postgres/db.rs`, `Plans`).
#[test]
fn settles_and_claims_read_by_key_however_stale_the_statistics() {
    let Some(pg) = Pg::start() else { return };
    let q = queue(&pg, "stale");
    let mut db = pg.client();
    db.batch_execute("ALTER TABLE stale.message SET (autovacuum_enabled = false)")
        .unwrap();
    let h = header(now(), 3, None);
    let body = vec![b'x'; 2048];
    let fill = |n: usize| {
        for _ in 0..n.div_ceil(500) {
            let ids: Vec<QueueId> = (0..n.min(500)).map(|_| QueueId::generate()).collect();
            let mut bodies: Vec<&[u8]> = vec![&body[..]; ids.len()];
            let mut items: Vec<_> = ids
                .iter()
                .zip(bodies.iter_mut())
                .map(|(id, b)| qmail_dispatch::queue::postgres::ImportItem {
                    id,
                    header: &h,
                    body: b,
                    len: 2048,
                })
                .collect();
            q.import_batch(&mut items).unwrap();
        }
    };
    // a worker's loop: each delivered settle claims its next row in the same statement
    let settler = q.group_settler(64);
    let delivered = || Settlement::Delivered(MessageState::default());
    let step = |claim: &PgClaim| {
        settler
            .settle_and_claim(claim, delivered(), true)
            .unwrap()
            .expect("the settle claimed the next row")
    };
    // the statements are prepared and run many times while the queue is small ...
    fill(40);
    let mut claim = q
        .claim(1, Duration::from_secs(2))
        .unwrap()
        .pop()
        .expect("a ready row");
    for _ in 0..20 {
        claim = step(&claim);
    }
    // ... then it grows 150-fold, unknown to the statistics (no autovacuum ran)
    let rows = 6_000;
    fill(rows as usize);
    for _ in 0..30 {
        claim = step(&claim);
    }
    claim.settle(delivered()).unwrap();
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM stale.message WHERE state = 'delivered'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 51);
    // a backend's table statistics are complete once it has exited
    drop(settler);
    drop(q);
    wait_for(20, "the queue's backends exit", || {
        db.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
             AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
            == 0
    });
    let (scans, read): (i64, i64) = db
        .query_one(
            "SELECT seq_scan, seq_tup_read FROM pg_stat_user_tables \
             WHERE schemaname = 'stale' AND relname = 'message'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(
        read < rows,
        "no statement read the whole table: {scans} sequential scans read {read} rows"
    );
    // and no claim walked (or sorted) every ready row to find the first ones by rank
    let entries: i64 = db
        .query_one(
            "SELECT idx_tup_read FROM pg_stat_user_indexes \
             WHERE schemaname = 'stale' AND indexrelname = 'message_ready'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        entries < rows,
        "each claim reads the head of message_ready: {entries} entries read for 51 claims"
    );
}

#[test]
fn the_fence_answers_from_a_fresh_lease_of_the_claims_own_registration() {
    let Some(pg) = Pg::start() else { return };
    let q = queue(&pg, "lfence");
    for _ in 0..2 {
        import(&q, &header(now(), 3, None), b"f\r\n");
    }
    // the claim registers the lease first: the fence is answered from it, no statement
    let c = q.claim(1, Duration::from_secs(2)).unwrap().pop().unwrap();
    assert!(c.still_mine());
    assert_eq!(
        q.fences(),
        FenceCounts {
            by_lease: 1,
            by_database: 0
        }
    );
    // no renewal for a window (1 s): the database answers
    wait_for(5, "the fence asked the database", || {
        assert!(c.still_mine());
        q.fences().by_database == 1
    });
    // a renewal: from the lease again
    assert_eq!(q.heartbeat().unwrap(), LeaseHealth::Fresh);
    let before = q.fences();
    assert!(c.still_mine());
    assert_eq!(q.fences().by_lease, before.by_lease + 1);
    // the lease connection dies: the next heartbeat registers the lease anew, and a claim of
    // the old registration is asked of the database (a takeback may lie between the two)
    let killed: bool = scalar(
        &pg,
        "SELECT pg_terminate_backend(backend_pid) FROM lfence.lease WHERE owner = $1",
        &[&q.instance()],
    );
    assert!(killed);
    let peer = PgQueue::connect(&pg.url(), opts("lfence", Duration::from_secs(30))).unwrap();
    assert_eq!(
        peer.reclaim_expired().unwrap(),
        0,
        "its lock is gone, but its last renewal is within the grace"
    );
    wait_for(5, "the lease registered anew", || {
        q.heartbeat().is_ok_and(|h| h == LeaseHealth::Fresh)
            && scalar::<i64>(
                &pg,
                "SELECT count(*) FROM pg_stat_activity a JOIN lfence.lease l ON \
                     a.pid = l.backend_pid WHERE l.owner = $1",
                &[&q.instance()],
            ) == 1
    });
    let before = q.fences();
    assert!(
        c.still_mine(),
        "nobody took it back: the database says it is still ours"
    );
    assert_eq!(q.fences().by_database, before.by_database + 1);
    let c2 = q.claim(1, Duration::from_secs(2)).unwrap().pop().unwrap();
    let before = q.fences();
    assert!(c2.still_mine());
    assert_eq!(
        q.fences().by_lease,
        before.by_lease + 1,
        "a claim of the new registration"
    );
    // taken back behind its back (as another dispatcher would after the grace): the database
    // fence of the old claim says no
    pg.client()
        .execute(
            "UPDATE lfence.message SET state = 'ready', owner = NULL WHERE id = $1",
            &[&c.id()],
        )
        .unwrap();
    assert!(!c.still_mine());
    c2.settle(Settlement::Delivered(MessageState::default()))
        .unwrap();
    // a window of zero: always the database
    let z = PgQueue::connect(
        &pg.url(),
        PgOptions {
            local_fence: Duration::ZERO,
            ..opts("lfence", Duration::from_secs(30))
        },
    )
    .unwrap();
    let cz = z.claim(1, Duration::from_secs(2)).unwrap().pop().unwrap();
    assert!(cz.still_mine());
    assert_eq!(
        z.fences(),
        FenceCounts {
            by_lease: 0,
            by_database: 1
        }
    );
    let grace: i32 = scalar(
        &pg,
        "SELECT fence_grace_ms FROM lfence.lease WHERE owner = $1",
        &[&z.instance()],
    );
    assert_eq!(
        grace, 0,
        "nothing to wait for: its fence never answers from the lease"
    );
}

/// Migration 3: a typical message's body stays in the heap row (no TOAST tuple to write at
/// import and to delete at the tombstone); one past a heap page still goes out of line.
#[test]
fn a_typical_body_stays_in_the_heap_row_and_a_large_one_goes_to_toast() {
    let Some(pg) = Pg::start() else { return };
    let q = queue(&pg, "toast");
    let toast_pages = |pg: &Pg| -> i64 {
        scalar(
            pg,
            "SELECT pg_relation_size(reltoastrelid) FROM pg_class \
             WHERE oid = 'toast.message'::regclass",
            &[],
        )
    };
    let opts: Vec<String> = scalar(
        &pg,
        "SELECT reloptions FROM pg_class WHERE oid = 'toast.message'::regclass",
        &[],
    );
    assert_eq!(opts, ["toast_tuple_target=8160"]);
    // 4 KiB and 7 KiB of body (a row over TOAST's 2 KiB threshold, under a page): inline
    for n in [4096usize, 7000] {
        let body = vec![b'a'; n];
        let id = import(&q, &header(now(), 3, None), &body);
        let stored: i32 = scalar(
            &pg,
            "SELECT pg_column_size(body) FROM toast.message WHERE id = $1",
            &[&id.as_str()],
        );
        assert_eq!(
            stored as usize,
            n + 4,
            "a plain varlena: not compressed, not a pointer"
        );
    }
    assert_eq!(toast_pages(&pg), 0, "no body went to TOAST");
    let got = q.claim(10, Duration::from_secs(2)).unwrap();
    assert_eq!(got.len(), 2);
    for c in &got {
        assert_eq!(read_all(c).len(), c.body_len() as usize);
    }
    // 20 KiB: out of line, uncompressed (STORAGE EXTERNAL), read back whole
    let big = vec![b'b'; 20 * 1024];
    let id = import(&q, &header(now(), 3, None), &big);
    assert!(toast_pages(&pg) > 0, "a body past a page goes to TOAST");
    let stored: i32 = scalar(
        &pg,
        "SELECT pg_column_size(body) FROM toast.message WHERE id = $1",
        &[&id.as_str()],
    );
    assert!(
        stored as usize >= big.len(),
        "out of line, uncompressed: {stored}"
    );
    let c = q.claim(10, Duration::from_secs(2)).unwrap().pop().unwrap();
    assert_eq!(read_all(&c), big);
}

#[test]
fn a_version_1_schema_is_migrated_and_version_1_dispatchers_turn_the_local_fence_off() {
    let Some(pg) = Pg::start() else { return };
    let q = queue(&pg, "mig");
    import(&q, &header(now(), 3, None), b"m\r\n");
    // back to what version 1 was, a lease row included
    pg.client()
        .batch_execute(
            "ALTER TABLE mig.lease DROP COLUMN fence_grace_ms; \
             ALTER TABLE mig.message RESET (toast_tuple_target); \
             DELETE FROM mig.schema_version WHERE version >= 2; \
             INSERT INTO mig.lease (owner, lock_key, host, pid, backend_pid) \
             VALUES ('old-1', 999, 'old', 1, 1);",
        )
        .unwrap();
    assert!(matches!(
        PgQueue::connect(&pg.url(), opts("mig", Duration::from_secs(30))),
        Err(QueueError::Corrupt { .. })
    ));
    assert_eq!(PgQueue::init(&pg.url(), "mig").unwrap(), vec![2, 3]);
    assert!(PgQueue::init(&pg.url(), "mig").unwrap().is_empty());
    let grace: Option<i32> = scalar(&pg, "SELECT fence_grace_ms FROM mig.lease", &[]);
    assert_eq!(
        grace, None,
        "a version-1 dispatcher's row: no grace of its own"
    );
    // a version-1 dispatcher (modelled by its row: what a v1 binary inserts) takes lock-less
    // leases back at once, so while its row is there nobody fences from the lease
    let c = q.claim(1, Duration::from_secs(2)).unwrap().pop().unwrap();
    assert!(c.still_mine());
    assert_eq!(q.fences().by_lease, 0);
    assert_eq!(q.fences().by_database, 1);
    let mine: Option<i32> = scalar(
        &pg,
        "SELECT fence_grace_ms FROM mig.lease WHERE owner = $1",
        &[&q.instance()],
    );
    assert_eq!(
        mine,
        Some(3000),
        "the owner writes its grace at every renewal"
    );
    pg.client()
        .execute("DELETE FROM mig.lease WHERE owner = 'old-1'", &[])
        .unwrap();
    assert_eq!(q.heartbeat().unwrap(), LeaseHealth::Fresh);
    assert!(c.still_mine());
    assert_eq!(
        q.fences().by_lease,
        1,
        "the last version-1 dispatcher is gone"
    );
    assert!(
        pg.client()
            .execute("UPDATE mig.lease SET fence_grace_ms = -1", &[])
            .is_err(),
        "the grace is never negative"
    );
}

#[test]
fn a_peer_with_a_shorter_lease_waits_for_the_owners_grace() {
    let Some(pg) = Pg::start() else { return };
    PgQueue::init(&pg.url(), "short").unwrap();
    // the owner: a 60 s lease, a 5 s window, so a 15 s grace; the peer: a 2 s lease
    let owner = PgQueue::connect(
        &pg.url(),
        PgOptions {
            local_fence: Duration::from_secs(5),
            ..opts("short", Duration::from_secs(60))
        },
    )
    .unwrap();
    let peer = PgQueue::connect(&pg.url(), opts("short", Duration::from_secs(2))).unwrap();
    import(&owner, &header(now(), 3, None), b"s\r\n");
    let c = owner
        .claim(1, Duration::from_secs(2))
        .unwrap()
        .pop()
        .unwrap();
    let grace: i32 = scalar(&pg, "SELECT fence_grace_ms FROM short.lease", &[]);
    assert_eq!(grace, 15_000);
    // past the peer's own lease (and with no renewal since the claim), the owner's row is
    // still within its grace: the peer takes nothing back while the owner fences locally
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        assert_eq!(peer.reclaim_expired().unwrap(), 0);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(c.still_mine());
    assert_eq!(owner.fences().by_lease, 1);
    assert_eq!(state_of(&pg, "short", c.id()).0, "active");
}
