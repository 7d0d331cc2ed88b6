//! Failover across hosts: three network-namespace hosts (a primary and two synchronous
//! standbys, `synchronous_standby_names = 'ANY 2 (s2, s3)'`) on a bridge; two dispatcher hosts
//! running `qmail-dispatcher run --queue` with a multi-host connection string and
//! `target_session_attrs=read-write` (one URL, one `key=value` form), each relaying to the
//! recording aiosmtpd relay on its own loopback; two web hosts, each a spool fed while the run
//! goes on and a `forward` process. Mid-run the primary is SIGKILLed and a standby promoted
//! (the other one re-pointed to it, as Patroni would): every message whose forward committed
//! is on the new primary and delivered, both dispatchers follow the promotion by themselves,
//! and a recipient reached twice only when its first copy was at the relay in the end-of-DATA
//! window of the primary's death (`pg_common/window.rs`, the rule of `faults.rs`).
//!
//! Needs root (network namespaces) and PostgreSQL; skips (printed) otherwise.

#[path = "../../qmail-dispatch/tests/pg_common/mod.rs"]
mod pg_common;

#[path = "../../qmail-dispatch/tests/pg_common/window.rs"]
mod window;

#[path = "../../qmail-dispatch/tests/dispatch_common/mod.rs"]
mod dispatch_common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pg_common::{bin_dir, chown_pg, is_root, template, wait_for};
use qmail_core::{Message, Spool, SpoolOptions};
use window::{Event, accepted_copies, judge, unix_now};

const BIN: &str = env!("CARGO_BIN_EXE_qmail-dispatcher");
const NET: &str = "10.77.0";
/// h1-h3: the database hosts; h4, h5: dispatchers; h6, h7: web hosts (spool + forwarder).
const HOSTS: usize = 7;
/// The dispatcher hosts.
const DISPATCHERS: [usize; 2] = [4, 5];
/// The web hosts.
const WEB: [usize; 2] = [6, 7];
/// Worker threads of each dispatcher.
const WORKERS: usize = 2;

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The namespaces of one test run; removed on drop (after the processes in them).
struct Net {
    tag: String,
    procs: Vec<Child>,
}

impl Net {
    fn ns(&self, name: &str) -> String {
        format!("qpg{}{name}", self.tag)
    }

    /// The namespaces of run `run` (a letter: runs in one test process do not share them).
    fn new(run: &str) -> Net {
        let net = Net {
            tag: format!("{}{run}", std::process::id() % 100_000),
            procs: Vec::new(),
        };
        let lan = net.ns("lan");
        ip(&["netns", "add", &lan]);
        ip(&["-n", &lan, "link", "set", "lo", "up"]);
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &lan,
            "addr",
            "add",
            &format!("{NET}.100/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &lan, "link", "set", "br0", "up"]);
        for h in 1..=HOSTS {
            let ns = net.ns(&format!("h{h}"));
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            // the pair is made inside the host namespace, one end moved to the lan
            ip(&[
                "-n",
                &ns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &format!("p{h}"),
            ]);
            ip(&["-n", &ns, "link", "set", &format!("p{h}"), "netns", &lan]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{NET}.{h}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &lan, "link", "set", &format!("p{h}"), "master", "br0"]);
            ip(&["-n", &lan, "link", "set", &format!("p{h}"), "up"]);
        }
        net
    }

    /// A command run inside namespace `name`, as the postgres user when `pg`.
    fn cmd(&self, name: &str, prog: &Path, pg: bool) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(name), "setpriv"]);
        if pg {
            c.args(["--reuid=postgres", "--regid=postgres", "--clear-groups"]);
        }
        c.args(["--pdeathsig", "KILL", "--"]).arg(prog);
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        let names = (1..=HOSTS)
            .map(|h| format!("h{h}"))
            .chain(["lan".to_owned()]);
        for n in names {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(&n)])
                .status();
        }
    }
}

struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    /// The postmaster of each host (index 0 = h1).
    pm: Vec<Option<usize>>,
}

fn data(c: &Cluster, h: usize) -> PathBuf {
    c.dir.as_path().join(format!("h{h}"))
}

fn start_pg(net: &mut Net, c: &mut Cluster, h: usize) {
    let log = std::fs::File::create(c.dir.as_path().join(format!("h{h}.log"))).unwrap();
    let child = net
        .cmd(&format!("h{h}"), &c.bin.join("postgres"), true)
        .arg("-D")
        .arg(data(c, h))
        .args(["-p", "5432", "-c", &format!("listen_addresses={NET}.{h}")])
        .args([
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=100",
        ])
        .args(["-c", "shared_buffers=32MB", "-c", "wal_keep_size=256MB"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    net.procs.push(child);
    c.pm[h - 1] = Some(net.procs.len() - 1);
}

fn psql(net: &Net, c: &Cluster, h: usize, sql: &str) -> Result<String, String> {
    let o = net
        .cmd("lan", &c.bin.join("psql"), false)
        .args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &format!("{NET}.{h}"),
        ])
        .args(["-U", "qmail", "-d", "postgres", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// [`psql`] retried for up to 30 s (a busy machine may miss one connect timeout).
fn psql_ok(net: &Net, c: &Cluster, h: usize, sql: &str) -> String {
    let t0 = Instant::now();
    loop {
        match psql(net, c, h, sql) {
            Ok(out) => return out,
            Err(e) if t0.elapsed() > Duration::from_secs(30) => panic!("psql {sql}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Polls `f` every 200 ms (each poll may start processes) until true, or panics after `secs`.
fn poll(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn url() -> String {
    format!(
        "postgres://qmail@{NET}.1:5432,{NET}.2:5432,{NET}.3:5432/postgres?target_session_attrs=read-write&connect_timeout=2"
    )
}

/// The same three hosts in the `key=value` form (the other dispatcher and forwarder use it).
fn kv_url() -> String {
    format!(
        "host={NET}.1,{NET}.2,{NET}.3 port=5432 user=qmail dbname=postgres \
         target_session_attrs=read-write connect_timeout=2"
    )
}

/// The recording relay (`tests/smtp/smtp_server.py`) on the loopback of host `h`, each RCPT
/// answered after 50 ms (transactions in flight when the primary dies): (port, record dir).
fn start_relay(net: &mut Net, dir: &Path, h: usize) -> (u16, PathBuf) {
    let ready = dir.join(format!("relay{h}.ready"));
    let record = dir.join(format!("relay{h}.rec"));
    let child = net
        .cmd(&format!("h{h}"), &dispatch_common::python(), false)
        .arg(dispatch_common::repo_root().join("tests/smtp/smtp_server.py"))
        .arg("--ready-file")
        .arg(&ready)
        .arg("--record")
        .arg(&record)
        .args(["--rcpt-delay", "0.05"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    net.procs.push(child);
    wait_for(20, "the relay on its host", || ready.exists());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ready).unwrap()).unwrap();
    (v["port"].as_u64().unwrap() as u16, record)
}

/// `qmail-dispatcher run --queue` on host `h`, EHLO `d{h}.test`, relaying to its local relay;
/// stderr in `DIR/d{h}.log`. Returns its index in `net.procs`.
fn start_dispatcher(net: &mut Net, dir: &Path, h: usize, relay: u16, url: &str) -> usize {
    let cfg = dir.join(format!("d{h}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "workers = {WORKERS}\nehlo_name = \"d{h}.test\"\nlease_secs = 3\ndurable = false\n\
             shutdown_grace_secs = 30\n[retry]\nfirst_secs = 1\nmax_secs = 1\njitter = 0.0\n\
             [[relay]]\nurl = \"smtp://127.0.0.1:{relay}?tls=none\"\ncooldown_secs = 0\n"
        ),
    )
    .unwrap();
    let child = net
        .cmd(&format!("h{h}"), Path::new(BIN), false)
        .arg("--config")
        .arg(&cfg)
        .args(["--queue", url, "run"])
        .env("QMAIL_LOG", "info")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("d{h}.log"))).unwrap())
        .spawn()
        .unwrap();
    net.procs.push(child);
    net.procs.len() - 1
}

/// `qmail-dispatcher forward` on web host `h` for the spool `DIR/spool{h}`.
fn start_forwarder(net: &mut Net, dir: &Path, h: usize, url: &str) {
    let cfg = dir.join(format!("fwd{h}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "spools = [{:?}]\nlease_secs = 3\nrescan_ms = 200\n[queue]\nurl = {url:?}\n",
            dir.join(format!("spool{h}")).to_string_lossy(),
        ),
    )
    .unwrap();
    let child = net
        .cmd(&format!("h{h}"), Path::new(BIN), false)
        .arg("--config")
        .arg(&cfg)
        .arg("forward")
        .env("QMAIL_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("fwd{h}.log"))).unwrap())
        .spawn()
        .unwrap();
    net.procs.push(child);
}

fn open_spool(dir: &Path) -> Spool {
    Spool::open_with(
        dir,
        SpoolOptions {
            durable: false,
            ..Default::default()
        },
    )
    .unwrap()
}

fn rcpt(i: usize) -> String {
    format!("w{}-{i}@example.org", WEB[i % WEB.len()])
}

fn submit(spool: &Spool, i: usize) {
    let m = Message::builder()
        .from("noreply@example.com")
        .to(rcpt(i).as_str())
        .subject(format!("failover {i}").as_str())
        .text("hello")
        .build()
        .unwrap();
    spool.submit(&m).unwrap();
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

/// SIGTERM, then the exit status; `None` when it still runs after 90 s (the exit of the last
/// process of an `ip netns exec` mount namespace waits for an expedited RCU grace period,
/// which a loaded machine may take seconds to grant).
fn term(c: &mut Child) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// What a process's threads are doing: name, state and kernel wait channel of each.
fn threads(pid: u32) -> String {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = t.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let state = read("stat")
            .split_whitespace()
            .nth(2)
            .unwrap_or("?")
            .to_owned();
        out.push(format!(
            "{} {state} {}",
            read("comm").trim(),
            read("wchan").trim()
        ));
    }
    out.join("; ")
}

/// How the primary dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Death {
    /// The postmaster SIGKILLed: its backends exit, the clients' connections are closed and
    /// new ones refused (RST).
    Process,
    /// The host's link goes down first, then the postmaster is SIGKILLed: no FIN, no RST,
    /// packets to it are lost (a power cut, a kernel panic, a partition).
    Host,
}

#[test]
fn failover_to_a_promoted_synchronous_standby_loses_nothing() {
    failover(Death::Process);
}

/// The primary's host vanishes (no FIN, no RST): the dispatchers and forwarders leave their
/// dead connections after `tcp_user_timeout` and the keepalives (`queue/postgres/db.rs`: 10 s,
/// 2 s × 3 unless the URL says otherwise) instead of TCP's ~15 minutes of retransmissions, and
/// follow the promotion.
#[test]
fn failover_when_the_primary_host_vanishes_loses_nothing() {
    failover(Death::Host);
}

fn failover(death: Death) {
    let Some(bin) = bin_dir() else {
        eprintln!("SKIPPED: PostgreSQL is not installed (scripts/setup-postgres)");
        return;
    };
    if !is_root() || Command::new("ip").arg("-V").output().is_err() {
        eprintln!("SKIPPED: network namespaces need root and iproute2");
        return;
    }
    let t = template(&bin);
    // made before the namespaces: dropped after the processes in them are gone
    let guard = tempfile::Builder::new()
        .prefix("qmail-failover-")
        .tempdir()
        .unwrap();
    let dir = guard.path().to_owned();
    let mut net = Net::new(if death == Death::Host { "v" } else { "k" });
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut c = Cluster {
        bin: bin.clone(),
        dir: dir.clone(),
        pm: vec![None; 3],
    };
    // the primary: the template plus the lan in pg_hba and synchronous replication
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(t.join("data"))
            .arg(data(&c, 1))
            .status()
            .unwrap()
            .success()
    );
    let mut hba = std::fs::OpenOptions::new()
        .append(true)
        .open(data(&c, 1).join("pg_hba.conf"))
        .unwrap();
    writeln!(
        hba,
        "host all all {NET}.0/24 trust\nhost replication all {NET}.0/24 trust"
    )
    .unwrap();
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data(&c, 1).join("postgresql.conf"))
        .unwrap();
    writeln!(
        conf,
        "synchronous_standby_names = 'ANY 2 (s2, s3)'\nsynchronous_commit = on"
    )
    .unwrap();
    chown_pg(c.dir.as_path());
    start_pg(&mut net, &mut c, 1);
    wait_for(30, "the primary up", || {
        psql(&net, &c, 1, "SELECT 1").is_ok()
    });
    for h in 2..=3 {
        let o = net
            .cmd(&format!("h{h}"), &bin.join("pg_basebackup"), true)
            .args([
                "-h",
                &format!("{NET}.1"),
                "-U",
                "qmail",
                "-X",
                "stream",
                "-R",
                "-D",
            ])
            .arg(data(&c, h))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let mut auto = std::fs::OpenOptions::new()
            .append(true)
            .open(data(&c, h).join("postgresql.auto.conf"))
            .unwrap();
        writeln!(
            auto,
            "primary_conninfo = 'host={NET}.1 port=5432 user=qmail application_name=s{h}'"
        )
        .unwrap();
        chown_pg(&data(&c, h));
        start_pg(&mut net, &mut c, h);
    }
    wait_for(60, "two synchronous standbys", || {
        psql(
            &net,
            &c,
            1,
            "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum'",
        )
        .is_ok_and(|n| n == "2")
    });
    let o = net
        .cmd("lan", Path::new(BIN), false)
        .args(["queue", "init", "--queue", &url()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // two dispatcher hosts, each with its relay; two web hosts, each a spool and a forwarder
    let urls = [url(), kv_url()];
    let mut records = Vec::new();
    let mut dispatchers = Vec::new();
    for (k, &h) in DISPATCHERS.iter().enumerate() {
        let (port, record) = start_relay(&mut net, &dir, h);
        records.push(record);
        dispatchers.push(start_dispatcher(&mut net, &dir, h, port, &urls[k]));
    }
    for (k, &h) in WEB.iter().enumerate() {
        open_spool(&dir.join(format!("spool{h}")));
        start_forwarder(&mut net, &dir, h, &urls[k]);
    }
    let copies =
        || -> Vec<window::Copy> { records.iter().flat_map(|r| accepted_copies(r)).collect() };
    let delivered = || window::per_rcpt(&copies()).len();

    // the applications submit all along: before, during and after the failover
    let n = 400;
    let submitted = Arc::new(AtomicUsize::new(0));
    let go_on = Arc::new(AtomicBool::new(true));
    let submitter = {
        let (submitted, go_on, dir) = (submitted.clone(), go_on.clone(), dir.clone());
        std::thread::spawn(move || {
            let spools: Vec<Spool> = WEB
                .iter()
                .map(|h| open_spool(&dir.join(format!("spool{h}"))))
                .collect();
            for i in 0..n {
                if !go_on.load(Ordering::SeqCst) {
                    return;
                }
                submit(&spools[i % spools.len()], i);
                submitted.store(i + 1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    wait_for(60, "some forwarded and delivered", || delivered() >= 60);
    // the primary dies mid-run (its host is gone: postmaster SIGKILLed, backends follow)
    let pm = c.pm[0].take().unwrap();
    let killed_at = unix_now();
    if death == Death::Host {
        ip(&["-n", &net.ns("h1"), "link", "set", "eth0", "down"]);
    }
    net.procs[pm].kill().unwrap();
    net.procs[pm].wait().unwrap();
    let at_kill = (submitted.load(Ordering::SeqCst), delivered());
    let t_kill = Instant::now();
    // promote s2, re-point s3 at it, and require s3 alone as its synchronous standby
    psql_ok(&net, &c, 2, "SELECT pg_promote()");
    poll(30, "s2 promoted", || {
        psql(&net, &c, 2, "SELECT pg_is_in_recovery()").is_ok_and(|r| r == "f")
    });
    let promoted_at = unix_now();
    psql_ok(
        &net,
        &c,
        2,
        "ALTER SYSTEM SET synchronous_standby_names = 's3'",
    );
    psql_ok(&net, &c, 2, "SELECT pg_reload_conf()");
    psql_ok(
        &net,
        &c,
        3,
        &format!(
            "ALTER SYSTEM SET primary_conninfo = 'host={NET}.2 port=5432 user=qmail application_name=s3'"
        ),
    );
    psql_ok(&net, &c, 3, "SELECT pg_reload_conf()");
    eprintln!(
        "primary killed ({death:?}) with {} of {n} submitted and {} delivered; promoted after {:?}",
        at_kill.0,
        at_kill.1,
        t_kill.elapsed()
    );
    let t0 = Instant::now();
    loop {
        let done = submitted.load(Ordering::SeqCst) == n
            && WEB
                .iter()
                .all(|h| local_files(&dir.join(format!("spool{h}"))) == 0)
            && delivered() >= n;
        if done {
            break;
        }
        if t0.elapsed() > Duration::from_secs(if death == Death::Host { 180 } else { 120 }) {
            go_on.store(false, Ordering::SeqCst);
            let logs: Vec<String> = DISPATCHERS
                .iter()
                .map(|h| {
                    let l =
                        std::fs::read_to_string(dir.join(format!("d{h}.log"))).unwrap_or_default();
                    // what it said that is not a delivery (the claims it gave back, the errors)
                    let said: Vec<&str> = l
                        .lines()
                        .filter(|x| !x.contains("qmail::delivery"))
                        .take(60)
                        .collect();
                    format!("--- d{h}.log:\n{}", said.join("\n"))
                })
                .collect();
            panic!(
                "{} submitted, {} of {n} delivered, {:?} local files; on the new primary: {:?}; \
                 rows not delivered: {:?}; leases: {:?}\n{}",
                submitted.load(Ordering::SeqCst),
                delivered(),
                WEB.map(|h| local_files(&dir.join(format!("spool{h}")))),
                psql(
                    &net,
                    &c,
                    2,
                    "SELECT state, count(*) FROM qmail.message GROUP BY 1"
                ),
                psql(
                    &net,
                    &c,
                    2,
                    "SELECT id, state, owner, claims, claimed_at FROM qmail.message \
                     WHERE state <> 'delivered'"
                ),
                psql(
                    &net,
                    &c,
                    2,
                    "SELECT owner, lock_key, pid, renewed, now() FROM qmail.lease"
                ),
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    submitter.join().unwrap();
    let caught_up = t_kill.elapsed();
    poll(30, "every row settled on the new primary", || {
        psql(
            &net,
            &c,
            2,
            "SELECT count(*) FROM qmail.message WHERE state <> 'delivered'",
        )
        .is_ok_and(|r| r == "0")
    });
    // both dispatchers followed the promotion by themselves: each sent after it, and each
    // holds its lease (row and session lock) on the new primary
    let all = copies();
    for h in DISPATCHERS {
        let after = all
            .iter()
            .filter(|cp| cp.sender == format!("d{h}") && cp.time > promoted_at)
            .count();
        assert!(
            after > 0,
            "d{h} delivered nothing after the promotion:\n{}",
            std::fs::read_to_string(dir.join(format!("d{h}.log"))).unwrap_or_default()
        );
    }
    let locked = psql_ok(
        &net,
        &c,
        2,
        "SELECT count(*) FROM qmail.lease l JOIN pg_locks p ON p.locktype = 'advisory' \
         AND p.granted AND p.objid = l.lock_key::oid AND p.objsubid = 2",
    );
    assert_eq!(locked, "2", "both leases held on the new primary");
    for (&p, h) in dispatchers.iter().zip(DISPATCHERS) {
        let pid = net.procs[p].id();
        match term(&mut net.procs[p]) {
            Some(st) => assert!(st.success(), "d{h}: clean exit at SIGTERM: {st:?}"),
            None => panic!(
                "d{h} did not stop on SIGTERM within 90 s; threads: {}; on the new primary: \
                 {:?} {:?}\n{}",
                threads(pid),
                psql(
                    &net,
                    &c,
                    2,
                    "SELECT pid, application_name, state, wait_event_type, wait_event, \
                     left(query, 60) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                ),
                psql(
                    &net,
                    &c,
                    2,
                    "SELECT application_name, state, sync_state FROM pg_stat_replication"
                ),
                std::fs::read_to_string(dir.join(format!("d{h}.log")))
                    .unwrap_or_default()
                    .lines()
                    .filter(|x| !x.contains("qmail::delivery"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }
    let leases = psql_ok(&net, &c, 2, "SELECT count(*) FROM qmail.lease");
    assert_eq!(leases, "0", "leases given back at SIGTERM");
    let rows = psql_ok(&net, &c, 2, "SELECT count(*) FROM qmail.message");
    assert_eq!(
        rows,
        n.to_string(),
        "every committed forward is on the new primary"
    );

    let expected: Vec<String> = (0..n).map(rcpt).collect();
    let events = [Event {
        time: killed_at,
        who: "*".into(),
        what: "primary SIGKILLed".into(),
    }];
    let v = judge(&expected, &copies(), &events);
    eprintln!(
        "failover ({death:?}): {n} submitted, {n} rows and tombstones on the new primary, {} missing, {} \
         duplicate(s) from the end-of-DATA window of the primary's death; every message \
         delivered {caught_up:?} after the primary's death",
        v.missing.len(),
        v.duplicates
    );
    assert!(v.missing.is_empty(), "missing: {:?}", v.missing);
    assert!(v.over_twice.is_empty(), "{:?}", v.over_twice);
    assert!(
        v.unexplained.is_empty(),
        "duplicates beyond the end-of-DATA window: {:?}",
        v.unexplained
    );
    // at most one per transaction in flight when the primary died
    assert!(
        v.per_event[0] <= DISPATCHERS.len() * WORKERS,
        "{:?}",
        v.per_event
    );
}
