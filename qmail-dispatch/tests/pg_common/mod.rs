//! A private PostgreSQL for tests: Debian's `postgresql` binaries (`scripts/setup-postgres`),
//! `initdb` into a temporary directory, `postgres` on a free port of 127.0.0.1 only (no Unix
//! socket), run as the unprivileged `postgres` user when the test runs as root (PostgreSQL
//! refuses root), stopped when the handle drops (and, through `setpriv --pdeathsig`, when
//! the test process dies).
//!
//! `Pg::start()` returns `None` (after printing why) when the binaries are missing, unless
//! `QMAIL_PG_REQUIRED=1` (set by `scripts/test.d/70-postgres.sh`), where it panics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running private PostgreSQL.
pub struct Pg {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    child: Option<Child>,
    /// More `postgres` arguments (`-c name=value`), kept across restarts.
    args: Vec<String>,
}

/// The newest installed PostgreSQL's `bin` directory (`/usr/lib/postgresql/N/bin`), if any.
///
/// `QMAIL_PG_LATER=1` (set by `scripts/test.d/20-dispatcher.sh`) answers `None` as if
/// PostgreSQL were missing: `70-postgres.sh` runs these tests with `QMAIL_PG_REQUIRED=1`, so
/// a machine that has PostgreSQL does not run them twice.
pub fn bin_dir() -> Option<PathBuf> {
    if std::env::var("QMAIL_PG_LATER").as_deref() == Ok("1") {
        eprintln!("SKIPPED here: QMAIL_PG_LATER=1 (scripts/test.d/70-postgres.sh runs this test)");
        return None;
    }
    let mut best: Option<(u32, PathBuf)> = None;
    for e in std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let v: u32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
        let b = e.path().join("bin");
        if b.join("postgres").exists() && best.as_ref().is_none_or(|(bv, _)| v > *bv) {
            best = Some((v, b));
        }
    }
    best.map(|(_, b)| b)
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// `setpriv` to the postgres user (as root) and a death signal tied to the spawning thread.
pub fn as_pg(prog: &Path) -> Command {
    let mut c = Command::new("setpriv");
    if is_root() {
        c.args(["--reuid=postgres", "--regid=postgres", "--clear-groups"]);
    }
    c.args(["--pdeathsig", "INT", "--"]).arg(prog);
    c
}

pub fn chown_pg(p: &Path) {
    if is_root() {
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success(), "chown postgres {}", p.display());
    }
}

/// One initdb per machine and version (`/tmp/qmail-pg-template-V`, made atomically by a
/// rename); each instance copies it (cp -a, a fraction of a second).
pub fn template(bin: &Path) -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let v = bin
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let d = std::env::temp_dir().join(format!("qmail-pg-template-{v}"));
        if d.join("data/PG_VERSION").exists() {
            return d;
        }
        let stage = std::env::temp_dir().join(format!("qmail-pg-stage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&stage);
        std::fs::create_dir_all(&stage).unwrap();
        chown_pg(&stage);
        let out = as_pg(&bin.join("initdb"))
            .args(["-D"])
            .arg(stage.join("data"))
            .args([
                "-U",
                "qmail",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if std::fs::rename(&stage, &d).is_err() {
            // another test process was first
            let _ = std::fs::remove_dir_all(&stage);
        }
        d
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pg {
    /// Starts an instance, or `None` (printed) when PostgreSQL is not installed.
    pub fn start() -> Option<Pg> {
        Pg::start_with(&[], |_| {})
    }

    /// As [`Pg::start`], with more `postgres` arguments, after `prepare` has put files into
    /// the data directory (it is then given to the postgres user).
    pub fn start_with(args: &[&str], prepare: impl FnOnce(&Path)) -> Option<Pg> {
        let Some(bin) = bin_dir() else {
            if std::env::var("QMAIL_PG_REQUIRED").as_deref() == Ok("1") {
                panic!("QMAIL_PG_REQUIRED=1 but no /usr/lib/postgresql/*/bin/postgres");
            }
            eprintln!(
                "SKIPPED: PostgreSQL is not installed (run scripts/setup-postgres; \
                 scripts/test.d/70-postgres.sh does)"
            );
            return None;
        };
        let t = template(&bin);
        let dir = tempfile::Builder::new()
            .prefix("qmail-pg-")
            .tempdir()
            .unwrap();
        let st = Command::new("cp")
            .arg("-a")
            .arg(t.join("data"))
            .arg(dir.path().join("data"))
            .status()
            .unwrap();
        assert!(st.success());
        prepare(&dir.path().join("data"));
        chown_pg(dir.path());
        let mut pg = Pg {
            dir,
            port: free_port(),
            bin,
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        pg.launch();
        Some(pg)
    }

    fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("postgres.log")).unwrap();
        let child = as_pg(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=64MB"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if postgres::Client::connect(&self.url(), postgres::NoTls).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A connection string (key=value form).
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=qmail dbname=postgres connect_timeout=2",
            self.port
        )
    }

    /// The same as a URL.
    pub fn uri(&self) -> String {
        format!(
            "postgres://qmail@127.0.0.1:{}/postgres?connect_timeout=2",
            self.port
        )
    }

    /// A connection for assertions.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).unwrap()
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// Freezes (`true`: SIGSTOP) or thaws (`false`: SIGCONT) the postmaster and every backend:
    /// a database that keeps its connections open and never answers.
    pub fn freeze(&self, stop: bool) {
        let sig = if stop { "-STOP" } else { "-CONT" };
        if let Some(c) = &self.child {
            let pid = c.id().to_string();
            // the backends first, so that none is forked after the postmaster stopped
            let _ = Command::new("pkill").args([sig, "-P", &pid]).status();
            let _ = Command::new("kill").args([sig, &pid]).status();
            if !stop {
                let _ = Command::new("pkill").args([sig, "-P", &pid]).status();
            }
        }
    }

    /// Immediate shutdown (SIGQUIT: no checkpoint, every backend killed, WAL recovery at the
    /// next start: what a crash looks like to clients).
    pub fn kill(&mut self) {
        self.signal("-QUIT");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Starts again on the same data directory and port.
    pub fn restart(&mut self) {
        self.launch();
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.signal("-INT");
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` until it is true or `secs` pass.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// RssAnon of a process in KiB (`/proc/PID/status`).
pub fn rss_anon_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("RssAnon:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Size of the large-message tests in MiB: `QMAIL_PG_BIG_MIB`, else 1024 (1 GiB) under
/// `scripts/test.d/70-postgres.sh` (`QMAIL_PG_REQUIRED=1`) and 64 in a plain `cargo test`.
pub fn big_mib() -> u64 {
    std::env::var("QMAIL_PG_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(
            if std::env::var("QMAIL_PG_REQUIRED").as_deref() == Ok("1") {
                1024
            } else {
                64
            },
        )
}
