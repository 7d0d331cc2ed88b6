//! The delivery guarantee under faults (issue 10), with real processes on one spool and the
//! recording aiosmtpd relay: SIGSTOP/SIGCONT past the lease, clocks skewed with libfaketime,
//! same-named hosts in separate PID namespaces (`unshare`), disk full on a small tmpfs, files
//! planted by an unprivileged user (`setpriv`), SIGHUP during a slow transaction, and a
//! torture run mixing SIGKILL, SIGSTOP and a skewed clock. Every test asserts exact counts
//! from the relay's record: messages missing, deliveries per recipient.
//!
//! Tools that cannot be found (libfaketime, unshare, setpriv, root for tmpfs) make the test
//! print why and return: `scripts/test.d/25-faults.sh` installs them.

#[path = "../../qmail-dispatch/tests/dispatch_common/mod.rs"]
mod dispatch_common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dispatch_common::*;
use qmail_core::{Message, QueueId, Spool, SpoolOptions};

const BIN: &str = env!("CARGO_BIN_EXE_qmail-dispatcher");
const LEASE: u64 = 2;
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

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

fn message(i: usize, to: &[String]) -> Message {
    let mut b = Message::builder()
        .from("noreply@example.com")
        .subject(format!("fault {i}").as_str())
        .text("hello");
    for t in to {
        b = b.to(t.as_str());
    }
    b.build().unwrap()
}

fn submit_n(spool: &Spool, from: usize, n: usize) -> Vec<QueueId> {
    (from..from + n)
        .map(|i| {
            spool
                .submit(&message(i, &[format!("m{i}@example.org")]))
                .unwrap()
        })
        .collect()
}

fn write_config(dir: &Path, name: &str, spool: &Path, relays: &[String], extra: &str) -> PathBuf {
    let mut s = format!(
        "spools = [{:?}]\nworkers = 2\nehlo_name = \"dispatcher.test\"\nlease_secs = {LEASE}\nrescan_ms = 300\ndurable = false\nshutdown_grace_secs = 5\n{extra}\n[retry]\nfirst_secs = 1\njitter = 0.0\n[timeouts]\nconnect_secs = 5\ncommand_secs = 20\ndata_end_secs = 20\n",
        spool.to_string_lossy(),
    );
    for r in relays {
        s.push_str(&format!("[[relay]]\nurl = {r:?}\ncooldown_secs = 0\n"));
    }
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, s).unwrap();
    p
}

/// A dispatcher process with its stderr in a file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(dir: &Path, name: &str, config: &Path) -> Proc {
        Proc::start_with(dir, name, Command::new(BIN), config, &[])
    }

    fn start_with(
        dir: &Path,
        name: &str,
        mut cmd: Command,
        config: &Path,
        env: &[(&str, String)],
    ) -> Proc {
        let log = dir.join(format!("{name}.stderr"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        if cmd.get_program() == BIN {
            cmd.arg("--config").arg(config).arg("run");
        }
        cmd.env("QMAIL_LOG", "warn").stdin(Stdio::null()).stderr(f);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Proc { child, log }
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) {
        self.signal("TERM");
        let t0 = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                panic!("the dispatcher did not exit on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for: {what}");
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

/// Every one of `n` recipients `m{i}` delivered exactly once.
fn assert_each_once(srv: &SmtpServer, from: usize, n: usize) {
    let counts = per_rcpt(&srv.delivered());
    let missing: Vec<usize> = (from..from + n)
        .filter(|i| !counts.contains_key(&format!("m{i}@example.org")))
        .collect();
    let twice: Vec<(&String, &usize)> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert_eq!(
        (missing.len(), twice.len()),
        (0, 0),
        "missing {missing:?}, twice {twice:?}"
    );
}

fn claims_of(spool: &Path) -> Vec<String> {
    files(spool, "active")
}

fn queue_empty(spool: &Path) -> bool {
    ["ready", "active", "deferred", "scheduled"]
        .iter()
        .all(|d| files(spool, d).is_empty())
}

// --- SIGSTOP / SIGCONT ---------------------------------------------------------------------

#[test]
fn stalled_before_data_past_the_lease_sends_no_data() {
    let srv = SmtpServer::start(&["--rcpt-delay", "1.5"]);
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let a_cfg = write_config(d.path(), "a", spool.path(), &[srv.url("tls=none")], "");
    let a = Proc::start(d.path(), "a", &a_cfg);
    submit_n(&spool, 0, 1);
    // A holds the claim and waits for the RCPT reply: stop it there, past the lease
    wait_for("A's claim", Duration::from_secs(10), || {
        !claims_of(spool.path()).is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    a.signal("STOP");
    let b = Proc::start(d.path(), "b", &a_cfg);
    assert_eq!(
        srv.wait_count(1, Duration::from_secs(20)),
        1,
        "B delivered it"
    );
    a.signal("CONT");
    wait_for("A's fence", Duration::from_secs(15), || {
        a.log().contains("fence")
    });
    wait_for("queue empty", Duration::from_secs(10), || {
        queue_empty(spool.path())
    });
    assert_eq!(srv.count(), 1, "A sent no DATA after SIGCONT");
    assert_each_once(&srv, 0, 1);
    a.stop();
    b.stop();
}

/// A stall in the middle of a large body, past the lease: after SIGCONT the body is finished
/// but the final dot is never sent (the fence before end-of-data).
#[test]
fn stalled_mid_body_past_the_lease_never_sends_the_final_dot() {
    let d = tempfile::tempdir().unwrap();
    let port_file = d.path().join("slow.port");
    let record = d.path().join("slow.rec");
    let mut slow = Command::new(python())
        .arg(repo_root().join("tests/smtp/slow_reader.py"))
        .arg(&port_file)
        .arg(&record)
        .spawn()
        .unwrap();
    wait_for("the slow relay", Duration::from_secs(10), || {
        port_file.exists()
    });
    let port = std::fs::read_to_string(&port_file).unwrap();
    let srv = SmtpServer::start(&[]);
    let spool = spool_at(d.path());
    let slow_cfg = write_config(
        d.path(),
        "slow",
        spool.path(),
        &[format!("smtp://127.0.0.1:{}?tls=none", port.trim())],
        "",
    );
    let fast_cfg = write_config(d.path(), "fast", spool.path(), &[srv.url("tls=none")], "");
    let a = Proc::start(d.path(), "a", &slow_cfg);
    // 6 MB: more than the socket buffers hold, so A is still writing the body when stopped
    let line = "x".repeat(76);
    let body: String = (0..80_000).map(|_| format!("{line}\n")).collect();
    let m = Message::builder()
        .from("noreply@example.com")
        .to("big@example.org")
        .subject("big")
        .text(body.as_str())
        .build()
        .unwrap();
    spool.submit(&m).unwrap();
    let started = PathBuf::from(format!("{}.started", record.display()));
    wait_for("DATA started", Duration::from_secs(20), || started.exists());
    std::thread::sleep(Duration::from_millis(300));
    a.signal("STOP");
    let b = Proc::start(d.path(), "b", &fast_cfg);
    assert_eq!(
        srv.wait_count(1, Duration::from_secs(30)),
        1,
        "B delivered it"
    );
    a.signal("CONT");
    wait_for("A's fence", Duration::from_secs(30), || {
        a.log().contains("fence")
    });
    wait_for("the slow relay's record", Duration::from_secs(30), || {
        std::fs::read_to_string(&record).is_ok_and(|r| !r.is_empty())
    });
    let rec = std::fs::read_to_string(&record).unwrap();
    let lines: Vec<serde_json::Value> = rec
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{rec}");
    assert_eq!(
        lines[0]["dot"], false,
        "the final dot was never sent: {rec}"
    );
    assert!(lines[0]["bytes"].as_u64().unwrap() > 4_000_000, "{rec}");
    wait_for("queue empty", Duration::from_secs(10), || {
        queue_empty(spool.path())
    });
    assert_eq!(srv.count(), 1);
    a.stop();
    b.stop();
    let _ = slow.kill();
    let _ = slow.wait();
}

#[test]
fn stalled_for_many_leases_gets_its_lease_back_and_nothing_is_sent_twice() {
    let srv = SmtpServer::start(&[]);
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let cfg = write_config(d.path(), "a", spool.path(), &[srv.url("tls=none")], "");
    let a = Proc::start(d.path(), "a", &cfg);
    let b = Proc::start(d.path(), "b", &cfg);
    submit_n(&spool, 0, 10);
    assert_eq!(srv.wait_count(10, Duration::from_secs(20)), 10);
    let a_lease = spool
        .path()
        .join("leases")
        .read_dir()
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .contains(&format!("pid={}\n", a.child.id()))
        })
        .expect("A's lease");
    a.signal("STOP");
    // B removes A's lease once it is ten leases old and A holds nothing
    wait_for("B removes A's lease", Duration::from_secs(40), || {
        !a_lease.exists()
    });
    submit_n(&spool, 10, 10);
    assert_eq!(srv.wait_count(20, Duration::from_secs(20)), 20);
    a.signal("CONT");
    wait_for("A recreates its lease", Duration::from_secs(10), || {
        a_lease.exists()
    });
    assert!(a.log().contains("recreating"), "{}", a.log());
    submit_n(&spool, 20, 20);
    assert_eq!(srv.wait_count(40, Duration::from_secs(30)), 40);
    wait_for("queue empty", Duration::from_secs(10), || {
        queue_empty(spool.path())
    });
    assert_eq!(srv.count(), 40, "none twice");
    assert_each_once(&srv, 0, 40);
    a.stop();
    b.stop();
}

// --- skewed clocks (libfaketime) -----------------------------------------------------------

/// Builds the preload shim that routes utimensat/futimens to the kernel (libfaketime fakes
/// their "set to now", which a network filesystem would execute with the server's clock).
fn faketime_env(dir: &Path, offset: &str) -> Option<Vec<(&'static str, String)>> {
    if !Path::new(FAKETIME_LIB).exists() {
        eprintln!(
            "SKIP: {FAKETIME_LIB} missing (apt-get install faketime; scripts/test.d/25-faults.sh)"
        );
        return None;
    }
    let src = dir.join("utimens_shim.c");
    let so = dir.join("utimens_shim.so");
    if !so.exists() {
        std::fs::write(
            &src,
            "#define _GNU_SOURCE\n#include <sys/syscall.h>\n#include <unistd.h>\n#include <time.h>\n\
             int utimensat(int d, const char *p, const struct timespec t[2], int f) { return syscall(SYS_utimensat, d, p, t, f); }\n\
             int futimens(int fd, const struct timespec t[2]) { return syscall(SYS_utimensat, fd, NULL, t, 0); }\n",
        )
        .unwrap();
        let st = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&so)
            .arg(&src)
            .status()
            .ok()?;
        if !st.success() {
            eprintln!("SKIP: cannot build the utimensat shim with cc");
            return None;
        }
    }
    let env = vec![
        ("LD_PRELOAD", format!("{}:{FAKETIME_LIB}", so.display())),
        ("FAKETIME", offset.to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ("NO_FAKE_STAT", "1".to_owned()),
        ("FAKETIME_NO_CACHE", "1".to_owned()),
    ];
    // the skew is real: `date` under the same preload is off by the offset
    let out = Command::new("date")
        .arg("+%s")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .ok()?;
    let faked: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let real = qmail_core::spool::now_secs();
    assert!(
        (faked - real).abs() >= 25,
        "libfaketime did not skew the clock ({faked} vs {real})"
    );
    Some(env)
}

#[test]
fn skewed_clocks_cause_no_duplicate_and_leave_no_claim_stuck() {
    let d = tempfile::tempdir().unwrap();
    let (Some(behind), Some(ahead)) = (
        faketime_env(d.path(), "-200"),
        faketime_env(d.path(), "+3600"),
    ) else {
        return;
    };
    let srv = SmtpServer::start(&["--rcpt-delay", "0.05"]);
    let spool = spool_at(d.path());
    let cfg = write_config(d.path(), "c", spool.path(), &[srv.url("tls=none")], "");
    let slow = Proc::start_with(d.path(), "behind", Command::new(BIN), &cfg, &behind);
    let fast = Proc::start_with(d.path(), "ahead", Command::new(BIN), &cfg, &ahead);
    let normal = Proc::start(d.path(), "normal", &cfg);
    let n = 120;
    submit_n(&spool, 0, n);
    assert_eq!(srv.wait_count(n, Duration::from_secs(60)), n);
    wait_for("queue empty", Duration::from_secs(10), || {
        queue_empty(spool.path())
    });
    assert_eq!(
        srv.count(),
        n,
        "none twice with clocks 200 s behind and 1 h ahead"
    );
    assert_each_once(&srv, 0, n);
    assert_eq!(files(spool.path(), "leases").len(), 3, "no lease deleted");
    // 1 h ahead and crashed while holding claims: they are taken back within a few leases
    let srv2 = SmtpServer::start(&["--rcpt-delay", "3"]);
    let cfg2 = write_config(d.path(), "c2", spool.path(), &[srv2.url("tls=none")], "");
    slow.stop();
    normal.stop();
    fast.stop();
    let fast = Proc::start_with(d.path(), "ahead2", Command::new(BIN), &cfg2, &ahead);
    submit_n(&spool, n, 2);
    wait_for("the skewed one holds both", Duration::from_secs(10), || {
        claims_of(spool.path()).len() == 2
    });
    fast.kill();
    let t0 = Instant::now();
    let other = Proc::start(d.path(), "normal2", &cfg2);
    assert_eq!(srv2.wait_count(2, Duration::from_secs(30)), 2);
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "the claims of the crashed skewed dispatcher were taken back after {:?}",
        t0.elapsed()
    );
    wait_for("queue empty", Duration::from_secs(10), || {
        queue_empty(spool.path())
    });
    assert_eq!(srv2.count(), 2);
    assert_each_once(&srv2, n, 2);
    other.stop();
}

// --- PID namespaces ------------------------------------------------------------------------

#[test]
fn same_host_name_in_separate_pid_namespaces_takes_no_live_claim() {
    let uid0 = rustix_uid() == 0;
    if !uid0 || Command::new("unshare").arg("--version").output().is_err() {
        eprintln!("SKIP: needs root and util-linux unshare");
        return;
    }
    let srv = SmtpServer::start(&["--rcpt-delay", "0.3"]);
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let cfg = write_config(d.path(), "p", spool.path(), &[srv.url("tls=none")], "");
    // the same full host name in both; the dispatcher's pid differs between the namespaces
    // (2 and 4), so each looks up a pid that does not exist in its own /proc
    let ns = |pad: &str| {
        let mut c = Command::new("unshare");
        c.args([
            "--pid",
            "--uts",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
        ])
        .arg(format!(
            "hostname mail; {pad} {BIN} --config {} run",
            cfg.display()
        ));
        c
    };
    let a = Proc::start_with(d.path(), "ns-a", ns(""), &cfg, &[]);
    let b = Proc::start_with(d.path(), "ns-b", ns("/bin/true; /bin/true;"), &cfg, &[]);
    wait_for("two leases", Duration::from_secs(10), || {
        files(spool.path(), "leases").len() == 2
    });
    let n = 30;
    submit_n(&spool, 0, n);
    assert_eq!(srv.wait_count(n, Duration::from_secs(60)), n);
    wait_for("queue empty", Duration::from_secs(10), || {
        queue_empty(spool.path())
    });
    assert_eq!(srv.count(), n, "none twice");
    assert_each_once(&srv, 0, n);
    let hosts: Vec<String> = files(spool.path(), "leases")
        .iter()
        .map(|l| std::fs::read_to_string(spool.path().join("leases").join(l)).unwrap())
        .collect();
    assert!(hosts.iter().all(|h| h.contains("host=mail\n")), "{hosts:?}");
    drop(a);
    drop(b);
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn rustix_uid() -> u32 {
    // the id command, not a dependency of the test
    String::from_utf8_lossy(&Command::new("id").arg("-u").output().unwrap().stdout)
        .trim()
        .parse()
        .unwrap_or(u32::MAX)
}

// --- disk full (tmpfs) ---------------------------------------------------------------------

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Option<Tmpfs> {
        if rustix_uid() != 0 {
            eprintln!("SKIP: mounting a tmpfs needs root");
            return None;
        }
        let p = dir.join("small");
        std::fs::create_dir_all(&p).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
            .arg(&p)
            .status()
            .ok()?;
        if !st.success() {
            eprintln!("SKIP: cannot mount a tmpfs here");
            return None;
        }
        Some(Tmpfs(p))
    }

    /// Fills the filesystem up (a file that grows until ENOSPC).
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.flush();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn disk_full_after_a_partial_delivery_never_resends_to_the_accepted_recipient() {
    let d = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(d.path()) else {
        return;
    };
    let srv = SmtpServer::start(&["--rcpt-reject", "b@example.org:451", "--eod-delay", "1.5"]);
    let spool = spool_at(&fs.0);
    let cfg = write_config(d.path(), "f", spool.path(), &[srv.url("tls=none")], "");
    let p = Proc::start(d.path(), "f", &cfg);
    let id = spool
        .submit(&message(
            0,
            &["a@example.org".into(), "b@example.org".into()],
        ))
        .unwrap();
    wait_for("the claim", Duration::from_secs(10), || {
        !claims_of(spool.path()).is_empty()
    });
    let filler = fs.fill();
    assert_eq!(srv.wait_count(1, Duration::from_secs(10)), 1);
    wait_for("the state write failing", Duration::from_secs(10), || {
        p.log().contains("cannot write the spool")
    });
    // disk full for a while: the claim is kept, nothing is resent
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        assert_eq!(claims_of(spool.path()).len(), 1, "the claim is kept");
        assert!(
            files(spool.path(), "ready").is_empty(),
            "never back in ready/"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(srv.count(), 1);
    std::fs::remove_file(filler).unwrap();
    let st_path = spool.path().join("state").join(format!("{id}.json"));
    wait_for("the state written", Duration::from_secs(30), || {
        std::fs::read(&st_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["attempts"].as_u64() >= Some(2))
    });
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&st_path).unwrap()).unwrap();
    assert_eq!(v["delivered"], serde_json::json!(["a@example.org"]));
    assert_eq!(v["remaining"], serde_json::json!(["b@example.org"]));
    let counts = per_rcpt(&srv.delivered());
    assert_eq!(
        counts.get("a@example.org"),
        Some(&1),
        "a got it once: {counts:?}"
    );
    assert_eq!(counts.get("b@example.org"), None);
    p.stop();
}

#[test]
fn disk_full_on_the_outbox_backs_off_and_names_the_path() {
    let d = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(d.path()) else {
        return;
    };
    let spool = spool_at(&fs.0);
    let cfg = write_config(d.path(), "o", spool.path(), &[], "");
    let p = Proc::start(d.path(), "o", &cfg);
    wait_for("the lease", Duration::from_secs(10), || {
        files(spool.path(), "leases").len() == 1
    });
    p.signal("STOP");
    let id = submit_n(&spool, 0, 1).remove(0);
    let filler = fs.fill();
    p.signal("CONT");
    wait_for("the first outbox error", Duration::from_secs(10), || {
        p.log().contains("spool I/O error")
    });
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = p.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("spool I/O error"))
        .collect();
    assert!(
        errors.iter().all(|l| l.contains("/outbox/")),
        "the error names the path: {errors:?}"
    );
    assert!(
        (1..=7).contains(&errors.len()),
        "backoff: {} errors in ~3 s (5 a second before)",
        errors.len()
    );
    std::fs::remove_file(filler).unwrap();
    let eml = spool.path().join("outbox").join(format!("{id}.eml"));
    wait_for("the outbox file", Duration::from_secs(40), || eml.exists());
    assert_eq!(files(spool.path(), "outbox"), [format!("{id}.eml")]);
    p.stop();
}

// --- an untrusted spool --------------------------------------------------------------------

#[test]
fn an_unsafe_layout_is_refused_naming_the_directory_and_the_fix() {
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    std::fs::create_dir_all(spool.path().join("outbox")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        spool.path().join("outbox"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let cfg = write_config(d.path(), "u", spool.path(), &[], "");
    let o = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "drain"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("outbox") && err.contains("0777") && err.contains("spool init"),
        "{err}"
    );
}

#[test]
fn files_planted_by_another_user_are_never_followed_nor_sent() {
    if rustix_uid() != 0 || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP: needs root and util-linux setpriv");
        return;
    }
    let srv = SmtpServer::start(&[]);
    let d = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spool = spool_at(d.path());
    // the two-user layout: the submit directories belong to the dispatcher's user, group
    // nogroup (the submit group here), setgid + sticky, no group read
    for dir in ["tmp", "ready", "scheduled"] {
        let p = spool.path().join(dir);
        Command::new("chgrp")
            .arg("nogroup")
            .arg(&p)
            .status()
            .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o3730)).unwrap();
    }
    std::fs::set_permissions(spool.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // a file of the dispatcher's user the attacker wants to read or overwrite
    let victim = d.path().join("victim");
    std::fs::write(&victim, b"secret of the dispatcher's user\r\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ready = spool.path().join("ready");
    let planted_id = QueueId::generate();
    let as_nobody = |script: &str| {
        let st = Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "sh",
                "-c",
                script,
            ])
            .status()
            .unwrap();
        assert!(st.success(), "{script}");
    };
    as_nobody(&format!(
        "ln -s {} {}/{planted_id} && echo junk > {}/not-a-queue-id",
        victim.display(),
        ready.display(),
        ready.display()
    ));
    let good = submit_n(&spool, 0, 1).remove(0);
    let cfg = write_config(d.path(), "s", spool.path(), &[srv.url("tls=none")], "");
    let o = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "drain", "--json"])
        .env("QMAIL_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let sum: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(sum["delivered"], 1);
    assert_eq!(sum["corrupt"], 2, "the symlink and the stray name: {sum}");
    assert_eq!(srv.count(), 1);
    assert!(
        !srv.delivered()
            .iter()
            .any(|t| String::from_utf8_lossy(&t.data).contains("secret")),
        "the victim file was never sent"
    );
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"secret of the dispatcher's user\r\n"
    );
    assert!(files(spool.path(), "ready").is_empty());
    assert_eq!(files(spool.path(), "corrupt").len(), 2);
    let _ = good;
}

#[test]
fn a_planted_outbox_temporary_is_unlinked_never_written_through() {
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let cfg = write_config(d.path(), "t", spool.path(), &[], "");
    let p = Proc::start(d.path(), "t", &cfg);
    // the instance id, as anyone who can list leases/ reads it (not the lease's temporary)
    let leases = || -> Vec<String> {
        files(spool.path(), "leases")
            .into_iter()
            .filter(|n| !n.ends_with(".tmp"))
            .collect()
    };
    wait_for("the lease", Duration::from_secs(10), || leases().len() == 1);
    let instance = leases().remove(0);
    let victim = d.path().join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    p.signal("STOP");
    let id = submit_n(&spool, 0, 1).remove(0);
    std::os::unix::fs::symlink(
        &victim,
        spool
            .path()
            .join("outbox")
            .join(format!("{id}.eml+{instance}.tmp")),
    )
    .unwrap();
    p.signal("CONT");
    let eml = spool.path().join("outbox").join(format!("{id}.eml"));
    wait_for("the outbox file", Duration::from_secs(10), || eml.exists());
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert!(
        !std::fs::symlink_metadata(&eml)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(std::fs::read_to_string(&eml).unwrap().contains("fault 0"));
    assert_eq!(files(spool.path(), "outbox"), [format!("{id}.eml")]);
    p.stop();
}

// --- SIGHUP ---------------------------------------------------------------------------------

#[test]
fn sighup_during_a_transaction_longer_than_the_grace_keeps_the_claim() {
    let srv = SmtpServer::start(&["--eod-delay", "5"]);
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let cfg = write_config(d.path(), "h", spool.path(), &[srv.url("tls=none")], "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("shutdown_grace_secs = 5", "shutdown_grace_secs = 1");
    std::fs::write(&cfg, text).unwrap();
    let p = Proc::start_with(
        d.path(),
        "h",
        Command::new(BIN),
        &cfg,
        &[("QMAIL_LOG", "info".to_owned())],
    );
    submit_n(&spool, 0, 1);
    wait_for("the claim", Duration::from_secs(10), || {
        !claims_of(spool.path()).is_empty()
    });
    let claim = claims_of(spool.path()).remove(0);
    p.signal("HUP");
    wait_for("the reload", Duration::from_secs(10), || {
        p.log().contains("SIGHUP: configuration reloaded")
    });
    // the transaction outlives the grace period and two leases: the claim stays the same
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(claims_of(spool.path()), std::slice::from_ref(&claim));
    wait_for("delivered and settled", Duration::from_secs(20), || {
        srv.count() >= 1 && queue_empty(spool.path())
    });
    assert_eq!(srv.count(), 1, "sent once");
    assert_each_once(&srv, 0, 1);
    let log = p.log();
    assert!(log.contains("same instance"), "{log}");
    assert!(!log.contains("took back"), "{log}");
    p.stop();
}

// --- torture --------------------------------------------------------------------------------

/// A configuration whose EHLO name is `NAME.test`: the relay's record says which process sent
/// each copy.
fn named_config(dir: &Path, name: &str, spool: &Path, relays: &[String]) -> PathBuf {
    let p = write_config(dir, name, spool, relays, "");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("dispatcher.test", &format!("{name}.test"));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn torture_sigkill_sigstop_and_a_skewed_clock_lose_nothing() {
    let d = tempfile::tempdir().unwrap();
    let skew = faketime_env(d.path(), "-30");
    let srv = SmtpServer::start(&["--rcpt-delay", "0.1"]);
    let spool = spool_at(d.path());
    let url = [srv.url("tls=none")];
    let n = 300;
    submit_n(&spool, 0, n);
    let workers = 2;
    let start = |name: &str, env: Option<&Vec<(&'static str, String)>>| {
        let cfg = named_config(d.path(), name, spool.path(), &url);
        Proc::start_with(
            d.path(),
            name,
            Command::new(BIN),
            &cfg,
            env.map(|e| e.as_slice()).unwrap_or(&[]),
        )
    };
    let mut skewed = skew.as_ref().map(|env| start("skewed", Some(env)));
    let mut stopper = start("stopper", None);
    // (time, the process whose claims a kill or stop may have left in the end-of-DATA window)
    let mut events: Vec<(f64, String)> = Vec::new();
    let mut rng = qmail_dispatch::retry::Jitter::new();
    for round in 0..4 {
        let name = format!("killed{round}");
        let killed = start(&name, None);
        let at = n * (round + 1) / 6 + rng.below(n as u64 / 12) as usize;
        srv.wait_count(at, Duration::from_secs(60));
        events.push((unix_now(), name));
        killed.kill(); // SIGKILL
        // the stopper stalls past the lease, then resumes
        events.push((
            unix_now(),
            format!("stopper{}", if round > 2 { "2" } else { "" }),
        ));
        stopper.signal("STOP");
        std::thread::sleep(Duration::from_millis(LEASE * 1000 + 1500));
        stopper.signal("CONT");
        if round == 2 {
            events.push((unix_now(), "stopper".into()));
            stopper.kill();
            stopper = start("stopper2", None);
            if let Some(s) = skewed.take() {
                events.push((unix_now(), "skewed".into()));
                s.kill();
                skewed = skew.as_ref().map(|env| start("skewed2", Some(env)));
            }
        }
    }
    wait_for("all delivered", Duration::from_secs(90), || {
        per_rcpt(&srv.delivered()).len() >= n
    });
    wait_for("queue empty", Duration::from_secs(20), || {
        queue_empty(spool.path())
    });
    let txs = srv.delivered();
    let counts = per_rcpt(&txs);
    let missing = (0..n)
        .filter(|i| !counts.contains_key(&format!("m{i}@example.org")))
        .count();
    let dups: usize = counts.values().map(|c| c - 1).sum();
    eprintln!(
        "torture: {} kills/stops, {dups} duplicates, {missing} missing",
        events.len()
    );
    assert_eq!(missing, 0, "nothing lost");
    assert!(
        counts.values().all(|&c| c <= 2),
        "never more than one duplicate a message"
    );
    // each duplicate's first copy was sent by a process that was killed or stopped right
    // after the relay had the whole DATA: the end-of-DATA window, nothing else
    let mut per_event = vec![0usize; events.len()];
    for (rcpt, _) in counts.iter().filter(|(_, c)| **c > 1) {
        let first = txs
            .iter()
            .filter(|t| t.rcpt_tos.contains(rcpt))
            .min_by(|a, b| a.time.total_cmp(&b.time))
            .unwrap();
        let sender = first.ehlo.trim_end_matches(".test");
        let e = events
            .iter()
            .position(|(t, who)| who == sender && first.time <= t + 0.2 && first.time >= t - 0.5)
            .unwrap_or_else(|| {
                panic!(
                    "{rcpt}: duplicate whose first copy (by {sender} at {}) is in no kill/stop window of it ({events:?})",
                    first.time
                )
            });
        per_event[e] += 1;
    }
    assert!(
        per_event.iter().all(|&c| c <= workers),
        "at most one duplicate per message in flight at each kill/stop: {per_event:?}"
    );
    stopper.stop();
    if let Some(s) = skewed {
        s.stop();
    }
}
