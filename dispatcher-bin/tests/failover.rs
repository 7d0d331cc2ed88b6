//! Failover across hosts: three network-namespace hosts (a primary and two synchronous
//! standbys, `synchronous_standby_names = 'ANY 2 (s2, s3)'`) on a bridge in a fourth
//! namespace where a forwarder and a claimer (standing in for `run --queue`, which needs the
//! generic worker) run with a multi-host URL and `target_session_attrs=read-write`. Halfway
//! through, the primary is SIGKILLed and a standby promoted (the other one re-pointed to it,
//! as Patroni would): every message whose forward committed is on the new primary and
//! delivered; none twice beyond the claims in flight at the failover.
//!
//! Needs root (network namespaces) and PostgreSQL; skips (printed) otherwise.

#[path = "../../qmail-dispatch/tests/pg_common/mod.rs"]
mod pg_common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pg_common::{bin_dir, chown_pg, is_root, template, wait_for};
use qmail_core::{Message, Spool, SpoolOptions};

const BIN: &str = env!("CARGO_BIN_EXE_qmail-dispatcher");
const NET: &str = "10.77.0";

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

    fn new() -> Net {
        let net = Net {
            tag: format!("{}", std::process::id() % 100_000),
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
        for h in 1..=3 {
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
        for n in ["h1", "h2", "h3", "lan"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(n)])
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
        .env("PGCONNECT_TIMEOUT", "2")
        .output()
        .unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

fn url() -> String {
    format!(
        "postgres://qmail@{NET}.1:5432,{NET}.2:5432,{NET}.3:5432/postgres?target_session_attrs=read-write&connect_timeout=2"
    )
}

/// The claimer: this test binary re-run in the lan namespace with `QMAIL_FAILOVER_CHILD`;
/// claims, settles Delivered, prints `delivered ID` per settle; stops at EOF on stdin.
#[test]
fn failover_child() {
    use qmail_dispatch::queue::postgres::{PgOptions, PgQueue};
    use qmail_dispatch::queue::{Claim, Queue, SettleError, Settlement};
    let Ok(url) = std::env::var("QMAIL_FAILOVER_CHILD") else {
        return;
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    let mut out = std::io::stdout();
    let opts = || PgOptions {
        lease: Duration::from_secs(4),
        poll: Duration::from_millis(200),
        ..PgOptions::default()
    };
    let mut q: Option<PgQueue> = None;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let Some(queue) = q.as_ref() else {
            match PgQueue::connect(&url, opts()) {
                Ok(x) => q = Some(x),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
            continue;
        };
        let _ = queue.reclaim_expired();
        match queue.claim(20, Duration::from_millis(300)) {
            Ok(got) => {
                for c in got {
                    let id = c.id().to_owned();
                    // as a relay would: the body is read, the fence checked before "DATA"
                    let _ = c
                        .body()
                        .map(|mut b| std::io::copy(&mut b, &mut std::io::sink()));
                    // the fence is down (the lease could not be renewed during the
                    // failover): nothing is sent, the claim is given back
                    let mine = c.still_mine();
                    if mine {
                        writeln!(out, "sent {id}").unwrap();
                    }
                    let outcome = || {
                        if mine {
                            Settlement::Delivered(Default::default())
                        } else {
                            Settlement::Release
                        }
                    };
                    for _ in 0..100 {
                        // a settle that cannot be written is retried, never dropped
                        match c.settle_ref(outcome()) {
                            Ok(()) => {
                                if mine {
                                    writeln!(out, "delivered {id}").unwrap();
                                }
                                break;
                            }
                            Err(SettleError::LostClaim) => break, // another owner decides
                            Err(SettleError::Queue(_)) => {
                                std::thread::sleep(Duration::from_millis(200))
                            }
                        }
                    }
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
        out.flush().unwrap();
    }
}

fn submit(spool: &Spool, i: usize) {
    let m = Message::builder()
        .from("noreply@example.com")
        .to(format!("f{i}@example.org").as_str())
        .subject("failover")
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

#[test]
fn failover_to_a_promoted_synchronous_standby_loses_nothing() {
    if std::env::var_os("QMAIL_FAILOVER_CHILD").is_some() {
        return;
    }
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
    let mut net = Net::new();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut c = Cluster {
        bin: bin.clone(),
        dir,
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

    // the web host: a spool and a forwarder; the claimer
    let spool = Spool::open_with(
        c.dir.as_path().join("spool"),
        SpoolOptions {
            durable: false,
            ..Default::default()
        },
    )
    .unwrap();
    let sp = c.dir.as_path().join("spool");
    std::fs::write(
        c.dir.as_path().join("fwd.toml"),
        format!(
            "spools = [{:?}]\nlease_secs = 3\nrescan_ms = 200\n[queue]\nurl = {:?}\n",
            sp.to_string_lossy(),
            url()
        ),
    )
    .unwrap();
    let fwd = net
        .cmd("lan", Path::new(BIN), false)
        .arg("--config")
        .arg(c.dir.as_path().join("fwd.toml"))
        .arg("forward")
        .env("QMAIL_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    net.procs.push(fwd);
    let mut claimer = net
        .cmd("lan", &std::env::current_exe().unwrap(), false)
        .args(["--exact", "failover_child", "--nocapture", "--quiet"])
        .env("QMAIL_FAILOVER_CHILD", url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let cout = BufReader::new(claimer.stdout.take().unwrap());
    let cin = claimer.stdin.take().unwrap();
    net.procs.push(claimer);
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for l in cout.lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        })
    };
    // per queue id, how many times it went to the "relay"
    let delivered = |lines: &std::sync::Mutex<Vec<String>>| {
        let mut m: HashMap<String, usize> = HashMap::new();
        for l in lines.lock().unwrap().iter() {
            // "sent" is what a relay receives: a settle whose COMMIT reply was lost in the
            // failover took effect but is retried into LostClaim, so settles undercount
            if let Some(id) = l.strip_prefix("sent ") {
                *m.entry(id.to_owned()).or_default() += 1;
            }
        }
        m
    };

    let n = 400;
    for i in 0..n / 2 {
        submit(&spool, i);
    }
    wait_for(60, "some forwarded and delivered", || {
        delivered(&lines).len() >= 50
    });
    // the primary dies mid-run (its host is gone: postmaster SIGKILLed, backends follow)
    let pm = c.pm[0].take().unwrap();
    net.procs[pm].kill().unwrap();
    net.procs[pm].wait().unwrap();
    let killed_at = Instant::now();
    for i in n / 2..n {
        submit(&spool, i);
    }
    // promote s2, re-point s3 at it, and require s3 alone as its synchronous standby
    psql(&net, &c, 2, "SELECT pg_promote()").unwrap();
    wait_for(30, "s2 promoted", || {
        psql(&net, &c, 2, "SELECT pg_is_in_recovery()").is_ok_and(|r| r == "f")
    });
    psql(
        &net,
        &c,
        2,
        "ALTER SYSTEM SET synchronous_standby_names = 's3'",
    )
    .unwrap();
    psql(&net, &c, 2, "SELECT pg_reload_conf()").unwrap();
    psql(
        &net,
        &c,
        3,
        &format!(
            "ALTER SYSTEM SET primary_conninfo = 'host={NET}.2 port=5432 user=qmail application_name=s3'"
        ),
    )
    .unwrap();
    psql(&net, &c, 3, "SELECT pg_reload_conf()").unwrap();
    eprintln!("failover done in {:?}", killed_at.elapsed());
    wait_for(120, "every message forwarded after the failover", || {
        local_files(&sp) == 0
    });
    let t0 = Instant::now();
    while delivered(&lines).len() < n {
        if t0.elapsed() > Duration::from_secs(120) {
            panic!(
                "{} of {n} delivered; on the new primary: {:?}",
                delivered(&lines).len(),
                psql(
                    &net,
                    &c,
                    2,
                    "SELECT state, count(*) FROM qmail.message GROUP BY 1"
                )
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(cin); // the claimer stops
    let _ = reader.join();
    let d = delivered(&lines);
    let twice: Vec<_> = d.iter().filter(|(_, k)| **k > 1).collect();
    let rows = psql(&net, &c, 2, "SELECT count(*) FROM qmail.message").unwrap();
    let done = psql(
        &net,
        &c,
        2,
        "SELECT count(*) FROM qmail.message WHERE state = 'delivered'",
    )
    .unwrap();
    eprintln!(
        "{n} submitted; on the new primary {rows} rows, {done} delivered; delivered twice: {}",
        twice.len()
    );
    assert_eq!(
        rows,
        n.to_string(),
        "every committed forward is on the new primary"
    );
    assert_eq!(done, n.to_string());
    assert_eq!(d.len(), n);
    // claims in flight at the failover (a batch of at most 20) may be delivered again
    assert!(
        twice.len() <= 20,
        "duplicates beyond the in-flight window: {twice:?}"
    );
}
