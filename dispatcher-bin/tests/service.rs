//! The binary as a service manager and an administrator see it: sd_notify(3) messages on a
//! real notification socket (READY=1, WATCHDOG=1, STOPPING=1), journal priorities when stderr
//! is the stream JOURNAL_STREAM names, `check-config` naming what `run` would trip on, and
//! `spool init` creating and repairing the two-user layout (contract C2) without following
//! symbolic links.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qmail-dispatcher");

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args(["-s", sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -s {sig}");
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the dispatcher did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Notification datagrams until `until` is among them or the deadline passes.
fn collect(sock: &UnixDatagram, until: &str, timeout: Duration, got: &mut Vec<String>) -> bool {
    let end = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.lines().any(|l| l == until);
            got.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

#[test]
fn notify_socket_gets_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut child = Command::new(BIN)
        .args(["--spool"])
        .arg(dir.path().join("spool"))
        .arg("run")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "300000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    assert!(
        collect(&sock, "READY=1", Duration::from_secs(60), &mut got),
        "no READY=1: {got:?}"
    );
    assert!(
        got.iter().any(|m| m.contains("STATUS=serving 1 spool(s)")),
        "{got:?}"
    );
    // half of WATCHDOG_USEC: a ping every 150 ms
    let mut pings = Vec::new();
    for _ in 0..2 {
        assert!(
            collect(&sock, "WATCHDOG=1", Duration::from_secs(10), &mut pings),
            "no WATCHDOG=1: {pings:?}"
        );
    }
    signal(&child, "TERM");
    let mut stop = Vec::new();
    assert!(
        collect(&sock, "STOPPING=1", Duration::from_secs(30), &mut stop),
        "no STOPPING=1: {stop:?}"
    );
    assert!(wait_exit(&mut child, Duration::from_secs(60)).success());
}

fn stderr_of_run(dir: &Path, journal: bool) -> String {
    let err = dir.join(if journal { "journal.log" } else { "plain.log" });
    let f = std::fs::File::create(&err).unwrap();
    let m = f.metadata().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--spool")
        .arg(dir.join("spool"))
        // credentials without tls=required: a warning at start-up (nothing is sent: no mail)
        .args(["--relay", "smtp://u:p@127.0.0.1:9?tls=opportunistic", "run"])
        .stdout(Stdio::null())
        .stderr(f);
    if journal {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
    } else {
        // inherited from a parent whose stderr it named: not ours, no prefix
        cmd.env("JOURNAL_STREAM", "1:1");
    }
    let mut child = cmd.spawn().unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&err)
        .unwrap()
        .contains("qmail-dispatcher started")
    {
        assert!(Instant::now() < end, "no start-up line");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(60)).success());
    std::fs::read_to_string(&err).unwrap()
}

#[test]
fn journal_stream_lines_start_with_their_priority() {
    let dir = tempfile::tempdir().unwrap();
    let log = stderr_of_run(dir.path(), true);
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>") && l.contains("qmail-dispatcher started")),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("cleartext")),
        "{log}"
    );
    assert!(lines.iter().all(|l| l.starts_with('<')), "{log}");
    let plain = stderr_of_run(dir.path(), false);
    assert!(plain.contains("qmail-dispatcher started"), "{plain}");
    assert!(!plain.lines().any(|l| l.starts_with('<')), "{plain}");
}

#[test]
fn check_config_names_what_run_would_trip_on() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let ok = dir.path().join("ok.toml");
    std::fs::write(
        &ok,
        format!(
            "spools = [{:?}]\ndelivery_log = {:?}\n",
            spool,
            dir.path().join("delivery.log")
        ),
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["--config"])
        .arg(&ok)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("configuration ok"));
    assert!(
        !dir.path().join("delivery.log").exists(),
        "check-config creates nothing"
    );

    // a log in a directory that does not exist, a CA file that does not exist
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "spools = [{:?}]\ndelivery_log = {:?}\n[[relay]]\nurl = \"smtp://127.0.0.1:9?tls=required\"\nca_file = {:?}\n",
            spool,
            dir.path().join("no/such/dir/delivery.log"),
            dir.path().join("missing-ca.pem")
        ),
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["--config"])
        .arg(&bad)
        .arg("check-config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("delivery_log") && err.contains("no/such/dir"),
        "{err}"
    );
    assert!(err.contains("missing-ca.pem"), "{err}");

    // the listener's address (--metrics is --http's old name) taken: a warning (a running dispatcher holds it), not an error
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let o = Command::new(BIN)
        .args(["--config"])
        .arg(&ok)
        .args(["--metrics", &addr, "check-config"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning: http") && err.contains("in use"),
        "{err}"
    );
}

fn id(flag: &str) -> String {
    let o = Command::new("id").arg(flag).output().unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn spool_init_makes_and_repairs_the_two_user_layout() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("var/spool/qmail");
    // this user and its primary group stand for qmail and qmail-submit (the deployment suite,
    // scripts/test.d/80-deploy.sh, runs it with the real users)
    let (user, group) = (id("-un"), id("-gn"));
    let init = || {
        let o = Command::new(BIN)
            .args(["spool", "init"])
            .arg(&spool)
            .args(["--user", &user, "--submit-group", &group])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    init();
    assert_eq!(mode(&spool), 0o750);
    for d in ["tmp", "ready", "scheduled"] {
        assert_eq!(mode(&spool.join(d)), 0o3730, "{d}");
    }
    for d in [
        "active", "deferred", "failed", "corrupt", "hold", "state", "leases", "outbox", "sent",
    ] {
        assert_eq!(mode(&spool.join(d)), 0o700, "{d}");
    }
    // a second run changes nothing
    assert!(init().contains("(0 change(s))"));

    // repair: a 0600 spool file of an older qmail, a directory made 0777, and a symbolic link
    // a web user planted, pointing at a file outside the spool
    let old = spool.join("ready/old");
    std::fs::write(&old, b"x").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(
        spool.join("deferred"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let outside = dir.path().join("outside");
    std::fs::write(&outside, b"secret").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&outside, spool.join("ready/link")).unwrap();
    let out = init();
    assert!(out.contains("ready/old: mode 600 -> 640"), "{out}");
    assert_eq!(mode(&old), 0o640);
    assert_eq!(mode(&spool.join("deferred")), 0o700);
    assert_eq!(mode(&outside), 0o600, "the link was followed");

    // a spool file path is not a directory: refused, naming it
    std::fs::remove_dir(spool.join("hold")).unwrap();
    std::fs::write(spool.join("hold"), b"").unwrap();
    let o = Command::new(BIN)
        .args(["spool", "init"])
        .arg(&spool)
        .args(["--user", &user, "--submit-group", &group])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("hold"));

    // unknown users and groups are named with the command that creates them
    let o = Command::new(BIN)
        .args(["spool", "init"])
        .arg(dir.path().join("x"))
        .args(["--user", "no-such-user-qm"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("useradd"));
}
