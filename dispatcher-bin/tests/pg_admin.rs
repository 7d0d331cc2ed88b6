//! The operator's commands over a PostgreSQL queue (`list`, `show`, `cat`, `summary`, `hold`,
//! `release`, `delete`, `retry`, `requeue-failed` with `--queue URL`), human and `--json`
//! output, against a real PostgreSQL filled by `forward --drain` from a real spool; and a
//! running `run --queue` dispatcher with the recording aiosmtpd relay: a held message is
//! never claimed until released, an active row is neither held nor deleted, a failed message
//! requeued is delivered, and SIGHUP reloads the configuration (a new relay) or, when the
//! new one is invalid, serves on with the old.

#[path = "../../qmail-dispatch/tests/child_guard/mod.rs"]
mod child_guard;
#[path = "../../qmail-dispatch/tests/pg_common/mod.rs"]
mod pg_common;

#[path = "../../qmail-dispatch/tests/dispatch_common/mod.rs"]
mod dispatch_common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use child_guard::{Guarded, run_queue};
use dispatch_common::{SmtpServer, free_port, http};
use pg_common::{Pg, wait_for};
use qmail_core::spool::SpoolFile;
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

fn submit(spool: &Spool, from: &str, to: &[&str], subject: &str, text: &str) -> QueueId {
    let mut b = Message::builder().from(from).subject(subject).text(text);
    for t in to {
        b = b.to(*t);
    }
    spool.submit(&b.build().unwrap()).unwrap()
}

/// The message bytes of a spool file in `ready/` (what `cat` must print).
fn body_of(spool: &Spool, id: &QueueId) -> Vec<u8> {
    SpoolFile::open(&spool.path().join("ready").join(id.as_str()))
        .unwrap()
        .read_body()
        .unwrap()
}

fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("QMAIL_LOG", "warn")
        .env_remove("QMAIL_SPOOL")
        .output()
        .unwrap()
}

/// `cli` with `--queue URL` first.
fn q(pg: &Pg, args: &[&str]) -> Output {
    let url = pg.uri();
    let mut v = vec!["--queue", url.as_str()];
    v.extend_from_slice(args);
    cli(&v)
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exit 1 with this on stderr.
fn fails(o: &Output, needle: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout {} stderr {err}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(err.contains(needle), "{needle:?} not in {err}");
    err
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn forward(pg: &Pg, dir: &Path) -> String {
    let sp = dir.join("spool");
    ok(&cli(&[
        "forward",
        "--drain",
        "--spool",
        sp.to_str().unwrap(),
        "--queue",
        &pg.uri(),
    ]))
}

/// The row state of `id` (`show --json`).
fn state_of(pg: &Pg, id: &str) -> String {
    let v = json(&q(pg, &["show", id, "--json"]));
    v["state"].as_str().unwrap().to_owned()
}

/// Rows per state (`status --queue --json`).
fn counts(pg: &Pg) -> (HashMap<String, i64>, i64) {
    let v = json(&q(pg, &["status", "--json"]));
    let m = v["queue"]["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["state"].as_str().unwrap().to_owned(),
                s["count"].as_i64().unwrap(),
            )
        })
        .collect();
    (m, v["queue"]["leases"].as_i64().unwrap())
}

#[test]
fn every_operator_command_works_on_the_queue_never_on_a_spool() {
    let Some(pg) = Pg::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_at(dir.path());
    let a = submit(
        &spool,
        "shop@example.com",
        &["ann@example.org", "bob@example.net"],
        "a",
        "héllo wörld: not ASCII",
    );
    let b = submit(&spool, "news@example.com", &["cat@example.org"], "b", "b");
    // larger than the 1 MiB inline limit: stored in chunks
    let big_text: String = (0..80_000)
        .map(|i| format!("line {i:06} of a message stored in chunks\n"))
        .collect();
    let big = submit(
        &spool,
        "shop@example.com",
        &["dan@example.net"],
        "big",
        &big_text,
    );
    let bodies: HashMap<String, Vec<u8>> = [&a, &b, &big]
        .iter()
        .map(|id| (id.to_string(), body_of(&spool, id)))
        .collect();
    assert!(
        bodies[big.as_str()].len() > 1 << 21,
        "the big one is chunked"
    );
    // a copy of b's spool file, to forward it again after its deletion
    let b_copy = dir.path().join("b.copy");
    std::fs::copy(spool.path().join("ready").join(b.as_str()), &b_copy).unwrap();
    ok(&cli(&["queue", "init", "--queue", &pg.uri()]));
    assert!(forward(&pg, dir.path()).contains("forwarded 3"));

    // a spool with a message of its own in QMAIL_SPOOL: --queue must never list it instead
    let other = tempfile::tempdir().unwrap();
    let other_spool = spool_at(other.path());
    let decoy = submit(&other_spool, "x@example.com", &["y@example.org"], "d", "d");
    let o = Command::new(BIN)
        .args(["--queue", &pg.uri(), "list", "--json"])
        .env("QMAIL_SPOOL", other_spool.path())
        .env("QMAIL_LOG", "warn")
        .output()
        .unwrap();
    let v = json(&o);
    let ids: Vec<&str> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{v}");
    assert!(
        !ids.contains(&decoy.as_str()),
        "listed the spool, not the queue"
    );

    // list, human and JSON, with filters
    let out = ok(&q(&pg, &["list"]));
    assert!(out.starts_with("queue id"), "{out}");
    for id in [&a, &b, &big] {
        assert!(out.contains(id.as_str()), "{out}");
    }
    assert!(out.contains("<ann@example.org>") && out.contains("<shop@example.com>"));
    assert!(out.contains("in 3 message(s)"), "{out}");
    let v = json(&q(&pg, &["list", "--json"]));
    let m = &v["messages"][0];
    assert_eq!(m["id"], a.as_str(), "oldest first: {v}");
    assert_eq!(m["queue"], "qmail");
    assert_eq!(m["state"], "queued");
    assert_eq!(m["dir"], "ready");
    assert_eq!(m["sender"], "shop@example.com");
    assert_eq!(m["recipients"][1], "bob@example.net");
    assert_eq!(m["size"], bodies[a.as_str()].len() as u64);
    assert_eq!(m["attempts"], 0);
    let v = json(&q(&pg, &["list", "--json", "--rcpt", "@example.net"]));
    assert_eq!(v["messages"].as_array().unwrap().len(), 2, "{v}");
    let v = json(&q(&pg, &["list", "--json", "--from", "news@EXAMPLE.com"]));
    assert_eq!(v["messages"][0]["id"], b.as_str(), "{v}");
    let v = json(&q(&pg, &["list", "--json", "--limit", "1"]));
    assert_eq!(v["messages"].as_array().unwrap().len(), 1);
    let v = json(&q(&pg, &["list", "--json", "--older", "3600"]));
    assert!(v["messages"].as_array().unwrap().is_empty(), "{v}");
    // 0 rows
    let out = ok(&q(&pg, &["list", "--state", "held"]));
    assert!(out.contains("0 KiB in 0 message(s)"), "{out}");
    let v = json(&q(&pg, &["list", "--state", "failed", "--json"]));
    assert_eq!(v["messages"], serde_json::json!([]));
    let o = q(&pg, &["list", "--state", "lost"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--state"));

    // show
    let out = ok(&q(&pg, &["show", a.as_str()]));
    assert!(out.contains("state       ready"), "{out}");
    assert!(out.contains("queue       qmail"), "{out}");
    assert!(out.contains("to          <bob@example.net>"), "{out}");
    let v = json(&q(&pg, &["show", big.as_str(), "--json"]));
    assert_eq!(v["state"], "ready");
    assert_eq!(v["rcpt_to"][0], "dan@example.net");
    assert_eq!(v["size"], bodies[big.as_str()].len() as u64);
    assert_eq!(v["claims"], 0);
    fails(&q(&pg, &["show", "20261201T000000-nosuch"]), "no message");
    fails(&q(&pg, &["show", "../etc/passwd"]), "not a queue id");

    // cat: the bytes, the header section, JSON; a chunked body streamed
    for id in [&a, &big] {
        let o = q(&pg, &["cat", id.as_str()]);
        ok(&o);
        assert!(o.stdout == bodies[id.as_str()], "cat {id} differs");
    }
    let o = q(&pg, &["cat", big.as_str(), "--headers"]);
    ok(&o);
    let body = &bodies[big.as_str()];
    let end = body.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(o.stdout, body[..end].to_vec());
    for id in [&a, &big] {
        let v = json(&q(&pg, &["cat", id.as_str(), "--json"]));
        assert_eq!(v["id"], id.as_str());
        assert_eq!(v["queue"], "qmail");
        assert_eq!(v["size"], bodies[id.as_str()].len() as u64);
        assert_eq!(
            v["message"].as_str().unwrap(),
            String::from_utf8_lossy(&bodies[id.as_str()])
        );
    }
    fails(&q(&pg, &["cat", "20261201T000000-nosuch"]), "no message");
    let o = q(&pg, &["cat", "20261201T000000-nosuch", "--json"]);
    fails(&o, "no message");
    assert!(o.stdout.is_empty(), "no half-written JSON");

    // summary (qshape)
    let out = ok(&q(&pg, &["summary"]));
    assert!(out.contains("TOTAL"), "{out}");
    assert!(out.contains("example.net"), "{out}");
    let v = json(&q(&pg, &["summary", "--json"]));
    assert_eq!(v["rows"][0]["domain"], "TOTAL");
    assert_eq!(v["rows"][0]["total"], 4, "{v}");
    assert_eq!(v["rows"][0]["buckets"][0], 4, "all younger than 5 min: {v}");
    let doms: HashMap<String, u64> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["domain"].as_str().unwrap().to_owned(),
                r["total"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(doms["example.org"], 2);
    assert_eq!(doms["example.net"], 2);
    let v = json(&q(&pg, &["summary", "--json", "--state", "deferred"]));
    assert_eq!(v["rows"][0]["total"], 0);

    // hold / release: human, JSON, idempotent, a missing and a bad id
    let out = ok(&q(&pg, &["hold", a.as_str()]));
    assert!(out.contains(&format!("{a} held (ready -> held)")), "{out}");
    assert!(out.contains("1 message(s) held"));
    assert_eq!(counts(&pg).0.get("held"), Some(&1));
    let o = q(&pg, &["hold", a.as_str(), "--json"]);
    assert_eq!(o.status.code(), Some(1), "holding twice changes nothing");
    let v = json(&o);
    assert_eq!(v["results"][0]["outcome"], "wrong_state");
    assert_eq!(v["results"][0]["dir"], "held");
    let v = json(&q(&pg, &["list", "--state", "held", "--json"]));
    assert_eq!(v["messages"][0]["id"], a.as_str());
    assert_eq!(v["messages"][0]["state"], "held");
    let o = q(
        &pg,
        &["release", a.as_str(), "20261201T000000-nosuch", "--json"],
    );
    assert_eq!(o.status.code(), Some(1));
    let v = json(&o);
    assert_eq!(v["results"][0]["outcome"], "done");
    assert_eq!(v["results"][0]["from"], "held");
    assert_eq!(v["results"][0]["to"], "ready");
    assert_eq!(v["results"][1]["outcome"], "not_found");
    let e = fails(
        &q(&pg, &["release", a.as_str()]),
        "is in ready, not released",
    );
    assert!(e.contains(a.as_str()));
    let o = q(&pg, &["hold", "bad/id"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad/id"));
    assert_eq!(counts(&pg).0.get("held"), None, "a bad id changes nothing");

    // retry / requeue-failed with nothing to do (0 rows), and a wrong state
    let out = ok(&q(&pg, &["retry"]));
    assert!(out.contains("0 message(s) due now"), "{out}");
    let v = json(&q(&pg, &["retry", "--json"]));
    assert_eq!(v["moved"], serde_json::json!([]));
    let o = q(&pg, &["retry", a.as_str(), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v = json(&o);
    assert_eq!(v["not_moved"][0], a.as_str());
    assert_eq!(v["results"][0]["dir"], "ready");
    fails(&q(&pg, &["retry", a.as_str()]), "is ready, not deferred");
    let out = ok(&q(&pg, &["requeue-failed", "--all"]));
    assert!(out.contains("0 message(s) requeued"), "{out}");
    fails(
        &q(&pg, &["requeue-failed", b.as_str()]),
        "is ready, not failed",
    );
    let o = q(&pg, &["requeue-failed"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--all"));

    // delete: a tombstone that a second forward of the same file does not bring back
    let out = ok(&q(&pg, &["delete", b.as_str()]));
    assert!(
        out.contains(&format!("{b} deleted (was in ready)")),
        "{out}"
    );
    assert_eq!(state_of(&pg, b.as_str()), "deleted");
    let out = ok(&q(&pg, &["show", b.as_str()]));
    assert!(out.contains("reason      deleted by an operator"), "{out}");
    fails(&q(&pg, &["cat", b.as_str()]), "its body is gone");
    let v = json(&q(&pg, &["list", "--json"]));
    assert_eq!(
        v["messages"].as_array().unwrap().len(),
        2,
        "a tombstone is not listed"
    );
    let v = json(&q(&pg, &["list", "--json", "--state", "unknown"]));
    assert_eq!(v["messages"][0]["id"], b.as_str(), "{v}");
    assert_eq!(v["messages"][0]["dir"], "deleted");
    fails(
        &q(&pg, &["delete", b.as_str()]),
        "is in deleted, not deleted",
    );
    std::fs::copy(&b_copy, spool.path().join("ready").join(b.as_str())).unwrap();
    let out = forward(&pg, dir.path());
    assert!(out.contains("forwarded 0, duplicates 1"), "{out}");
    assert_eq!(state_of(&pg, b.as_str()), "deleted", "not resurrected");
    // delete --state S --all: the held ones only, in one transaction
    ok(&q(&pg, &["hold", big.as_str()]));
    let v = json(&q(&pg, &["delete", "--state", "hold", "--all", "--json"]));
    assert_eq!(v["results"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["results"][0]["id"], big.as_str());
    assert_eq!(v["results"][0]["from"], "held");
    let n: i64 = pg
        .client()
        .query_one("SELECT count(*) FROM qmail.chunk", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the deleted message's chunks are gone");
    let out = ok(&q(&pg, &["delete", "--state", "failed", "--all"]));
    assert!(out.contains("0 message(s) deleted"), "{out}");
    let o = q(&pg, &["delete", "--state", "active", "--all"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("never deleted"));
    assert!(!o.status.success());

    // what cannot work on a queue says which option
    let o = q(
        &pg,
        &["spool", "init", dir.path().join("x").to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--queue"));
    let o = q(
        &pg,
        &["list", "--spool", other_spool.path().to_str().unwrap()],
    );
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--queue") && e.contains("--spool"), "{e}");
    let o = q(&pg, &["find", "--rcpt", "ann@example.org"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("delivery_log"));
    // the queue's own check-config: no spool needed, a relay is
    let o = q(&pg, &["check-config"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no relay"));
    let out = ok(&q(
        &pg,
        &["--relay", "smtp://127.0.0.1:25?tls=none", "check-config"],
    ));
    assert!(out.contains("configuration ok: queue qmail"), "{out}");
}

/// A dispatcher configuration with no spool (the queue comes from `--queue`).
fn write_config(p: &Path, relay: &str, log: &Path) {
    std::fs::write(
        p,
        format!(
            "workers = 2\nehlo_name = \"dispatcher.test\"\nlease_secs = 3\ndurable = false\n\
             shutdown_grace_secs = 10\ndelivery_log = {log:?}\n[retry]\nfirst_secs = 1\n\
             max_secs = 1\njitter = 0.0\n[[relay]]\nurl = {relay:?}\ncooldown_secs = 0\n"
        ),
    )
    .unwrap();
}

fn start_run(cfg: &Path, pg: &Pg, log: &Path) -> Guarded {
    run_queue(BIN, cfg, &pg.uri(), log)
}

fn signal(c: &Child, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &c.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn wait_exit(c: &mut Child) -> std::process::ExitStatus {
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

fn rcpts(srv: &SmtpServer) -> Vec<String> {
    srv.delivered()
        .into_iter()
        .flat_map(|t| t.rcpt_tos)
        .collect()
}

fn leases(pg: &Pg) -> Vec<String> {
    pg.client()
        .query("SELECT owner FROM qmail.lease ORDER BY owner", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn hold_release_delete_and_requeue_against_a_running_dispatcher_and_sighup() {
    let Some(pg) = Pg::start() else { return };
    // relay A refuses one recipient for good; relay B accepts all, each RCPT taking 3 s (a
    // window in which the row is active)
    let srv_a = SmtpServer::start(&["--rcpt-reject", "bad@example.org:550"]);
    let srv_b = SmtpServer::start(&["--rcpt-delay", "3"]);
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_at(dir.path());
    let held = submit(&spool, "s@example.com", &["held@example.org"], "h", "h");
    let failed = submit(&spool, "s@example.com", &["bad@example.org"], "f", "f");
    let plain = submit(&spool, "s@example.com", &["plain@example.org"], "p", "p");
    ok(&cli(&["queue", "init", "--queue", &pg.uri()]));
    assert!(forward(&pg, dir.path()).contains("forwarded 3"));
    ok(&q(&pg, &["hold", held.as_str()]));

    let cfg: PathBuf = dir.path().join("run.toml");
    let dlog = dir.path().join("delivery.log");
    write_config(&cfg, &srv_a.url("tls=none"), &dlog);
    let log = dir.path().join("run.log");
    let mut run = start_run(&cfg, &pg, &log);
    wait_for(30, "plain delivered and bad failed", || {
        state_of(&pg, plain.as_str()) == "delivered" && state_of(&pg, failed.as_str()) == "failed"
    });
    // the held one stays held while the dispatcher serves (claims poll every second)
    let first_leases = leases(&pg);
    assert_eq!(first_leases.len(), 1);
    // two more seconds of serving (claims poll every second), told by the lease renewals in
    // database time
    let t0: i64 = pg
        .client()
        .query_one("SELECT extract(epoch FROM now())::bigint", &[])
        .unwrap()
        .get(0);
    wait_for(20, "the dispatcher served two more seconds", || {
        pg.client()
            .query_one(
                "SELECT count(*) FROM qmail.lease WHERE renewed > to_timestamp($1::bigint + 2)",
                &[&t0],
            )
            .unwrap()
            .get::<_, i64>(0)
            == 1
    });
    assert_eq!(state_of(&pg, held.as_str()), "held");
    assert!(!rcpts(&srv_a).contains(&"held@example.org".to_owned()));
    let v = json(&q(&pg, &["show", failed.as_str(), "--json"]));
    assert_eq!(v["dispatch"]["failed"][0]["rcpt"], "bad@example.org");
    let out = ok(&q(&pg, &["list", "--state", "failed"]));
    assert!(out.contains("failed: <bad@example.org>: 550"), "{out}");
    // find over the delivery log the queue dispatcher writes
    let out = ok(&q(
        &pg,
        &[
            "find",
            "--rcpt",
            "plain@example.org",
            "--log",
            dlog.to_str().unwrap(),
        ],
    ));
    assert!(
        out.contains(plain.as_str()) && out.contains("1 attempt(s)"),
        "{out}"
    );

    // SIGHUP with relay B: a new dispatcher (a new lease) serves, the old one gives its back
    write_config(&cfg, &srv_b.url("tls=none"), &dlog);
    signal(&run, "-HUP");
    wait_for(20, "the reload logged", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("SIGHUP: configuration reloaded")
    });
    wait_for(20, "one lease, the new dispatcher's", || {
        let l = leases(&pg);
        l.len() == 1 && l != first_leases
    });
    assert!(run.try_wait().unwrap().is_none(), "SIGHUP does not stop it");

    // requeue-failed: the failed recipient goes again, now through B, and is delivered
    let out = ok(&q(&pg, &["requeue-failed", failed.as_str()]));
    assert!(out.contains(&format!("{failed} requeued")), "{out}");
    wait_for(30, "the requeued message delivered through B", || {
        state_of(&pg, failed.as_str()) == "delivered"
    });
    assert_eq!(rcpts(&srv_b), vec!["bad@example.org".to_owned()]);
    let v = json(&q(&pg, &["show", failed.as_str(), "--json"]));
    assert!(v["dispatch"]["requeued_at"].as_i64().is_some(), "{v}");
    // the tombstone's state names nothing left to do (it once listed the requeued recipient)
    assert_eq!(v["dispatch"]["remaining"], serde_json::json!([]), "{v}");
    assert_eq!(v["dispatch"]["delivered"][0], "bad@example.org", "{v}");
    let text = ok(&q(&pg, &["show", failed.as_str()]));
    assert!(!text.contains("remaining"), "{text}");

    // release: claimed and delivered; while it is active, hold and delete refuse it
    let out = ok(&q(&pg, &["release", held.as_str()]));
    assert!(out.contains("(held -> ready)"), "{out}");
    wait_for(20, "the released message claimed", || {
        state_of(&pg, held.as_str()) == "active"
    });
    let o = q(&pg, &["delete", held.as_str(), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(json(&o)["results"][0]["outcome"], "in_flight");
    fails(&q(&pg, &["hold", held.as_str()]), "in flight (active)");
    wait_for(30, "the released message delivered", || {
        state_of(&pg, held.as_str()) == "delivered"
    });
    assert!(rcpts(&srv_b).contains(&"held@example.org".to_owned()));
    assert_eq!(
        rcpts(&srv_b)
            .iter()
            .filter(|r| *r == "held@example.org")
            .count(),
        1,
        "delivered once"
    );
    fails(
        &q(&pg, &["delete", held.as_str()]),
        "is in delivered, not deleted",
    );

    // SIGHUP with an invalid file: logged, the old configuration (relay B) serves on
    std::fs::write(&cfg, "workers = \"many\"\n").unwrap();
    signal(&run, "-HUP");
    wait_for(20, "the refused reload logged", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("the new configuration is invalid")
    });
    let late = submit(&spool, "s@example.com", &["late@example.org"], "l", "l");
    assert!(forward(&pg, dir.path()).contains("forwarded 1"));
    wait_for(30, "a message after the refused reload delivered", || {
        state_of(&pg, late.as_str()) == "delivered"
    });
    assert!(rcpts(&srv_b).contains(&"late@example.org".to_owned()));
    assert!(!rcpts(&srv_a).contains(&"late@example.org".to_owned()));
    signal(&run, "-TERM");
    assert!(wait_exit(&mut run).success());
    let (st, leases) = counts(&pg);
    assert_eq!(st.get("delivered"), Some(&4), "{st:?}");
    assert_eq!(leases, 0, "every lease given back");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("dispatcher stopped"), "{text}");
}

fn http_json(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let (code, body) = http(port, method, path, token);
    let v = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: {code} {body:?} is not JSON: {e}"));
    (code, v)
}

/// The sum of the samples of `metric` whose labels contain `labels` in `/metrics` text.
fn sample(text: &str, metric: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

#[test]
fn the_http_api_console_and_metrics_of_a_queue_dispatcher_read_and_act_on_the_queue() {
    let Some(mut pg) = Pg::start() else { return };
    // every RCPT of defer@ is refused with 451 (it stays deferred: the next retry is an
    // hour away); ok@ is accepted
    let srv = SmtpServer::start(&["--rcpt-reject", "defer@example.org:451"]);
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_at(dir.path());
    let okm = submit(&spool, "s@example.com", &["ok@example.org"], "ok", "ok");
    let deferred = submit(&spool, "s@example.com", &["defer@example.org"], "d", "d");
    ok(&cli(&["queue", "init", "--queue", &pg.uri()]));
    assert!(forward(&pg, dir.path()).contains("forwarded 2"));

    let port = free_port();
    let token = "queue-http-token-0123456789";
    let cfg = dir.path().join("run.toml");
    let dlog = dir.path().join("delivery.log");
    std::fs::write(
        &cfg,
        format!(
            "workers = 2\nehlo_name = \"dispatcher.test\"\nlease_secs = 3\ndurable = false\n\
             delivery_log = {dlog:?}\n[retry]\nfirst_secs = 3600\nmax_secs = 3600\njitter = 0.0\n\
             [[relay]]\nurl = {:?}\ncooldown_secs = 0\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
             token = \"{token}\"\n",
            srv.url("tls=none")
        ),
    )
    .unwrap();
    let log = dir.path().join("run.log");
    let run = start_run(&cfg, &pg, &log);
    wait_for(30, "ok delivered and defer deferred", || {
        state_of(&pg, okm.as_str()) == "delivered" && state_of(&pg, deferred.as_str()) == "deferred"
    });
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(15, "the http listener", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    // health: the database answers
    let (code, h) = http_json(port, "GET", "/healthz", None);
    assert_eq!((code, h["status"].as_str()), (200, Some("ok")), "{h}");
    assert_eq!(h["queue"], "qmail");

    // status: the queue's counts, not a spool's
    let (code, s) = http_json(port, "GET", "/api/v1/status", None);
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["spools"].as_array().map(Vec::len), Some(0), "{s}");
    let qs = &s["queues"][0];
    assert_eq!(qs["queue"], "qmail", "{s}");
    assert_eq!(qs["states"]["deferred"]["count"], 1, "{s}");
    assert_eq!(qs["states"]["delivered"]["count"], 1, "{s}");
    assert!(qs["leases"].as_i64().unwrap_or(0) >= 1, "{s}");
    assert_eq!(s["actions"], true);

    // the list and one message
    let (code, l) = http_json(port, "GET", "/api/v1/messages?state=deferred", None);
    assert_eq!(code, 200, "{l}");
    let rows = l["messages"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{l}");
    assert_eq!(rows[0]["id"], deferred.as_str());
    assert_eq!(rows[0]["queue"], "qmail");
    assert!(
        rows[0]["last_reply"]
            .as_str()
            .unwrap_or("")
            .starts_with("451"),
        "{l}"
    );
    let (code, m) = http_json(
        port,
        "GET",
        &format!("/api/v1/messages/{}", deferred.as_str()),
        None,
    );
    assert_eq!(code, 200, "{m}");
    assert_eq!(m["queue"], "qmail");
    assert_eq!(m["status"]["state"], "deferred", "{m}");
    assert_eq!(m["status"]["dir"], "deferred", "{m}");
    assert_eq!(m["status"]["attempts"], 1, "{m}");
    assert!(m["status"]["next_attempt"].as_i64().is_some(), "{m}");
    assert_eq!(m["message"]["rcpt_to"][0], "defer@example.org", "{m}");
    assert_eq!(
        m["message"]["dispatch"]["history"].as_array().map(Vec::len),
        Some(1)
    );
    let (code, m) = http_json(
        port,
        "GET",
        &format!("/api/v1/messages/{}", okm.as_str()),
        None,
    );
    assert_eq!(code, 200, "{m}");
    assert_eq!(m["status"]["state"], "delivered", "{m}");
    assert!(m["status"]["delivered_at"].as_i64().is_some(), "{m}");
    assert_eq!(
        http(port, "GET", "/api/v1/messages/..%2F..%2Fetc", None).0,
        400
    );
    // one answer is built in memory: a limit is bounded
    let (code, e) = http_json(port, "GET", "/api/v1/messages?limit=5001", None);
    assert_eq!(code, 400, "{e}");
    assert!(e["error"].as_str().unwrap_or("").contains("5000"), "{e}");
    assert_eq!(
        http(port, "GET", "/api/v1/messages?limit=5000", None).0,
        200
    );
    let nobody = QueueId::generate();
    assert_eq!(
        http(
            port,
            "GET",
            &format!("/api/v1/messages/{}", nobody.as_str()),
            None
        )
        .0,
        404
    );
    // the delivery log search works as for a spool
    let (code, f) = http_json(port, "GET", "/api/v1/find?rcpt=ok@example.org", None);
    assert_eq!(code, 200, "{f}");
    assert_eq!(f["attempts"][0]["id"], okm.as_str(), "{f}");

    // actions: a token is needed; each one is a transaction on the row
    let hold = format!("/api/v1/messages/{}/hold", deferred.as_str());
    assert_eq!(http(port, "POST", &hold, None).0, 401);
    assert_eq!(
        http(port, "POST", &hold, Some("not-the-token-0123456789")).0,
        401
    );
    assert_eq!(state_of(&pg, deferred.as_str()), "deferred");
    let (code, o) = http_json(port, "POST", &hold, Some(token));
    assert_eq!(code, 200, "{o}");
    assert_eq!(state_of(&pg, deferred.as_str()), "held");
    let (code, o) = http_json(port, "POST", &hold, Some(token));
    assert_eq!(code, 409, "holding a held message: {o}");
    let release = format!("/api/v1/messages/{}/release", deferred.as_str());
    assert_eq!(http(port, "POST", &release, Some(token)).0, 200);
    // released while its retry time is ahead: deferred again, not due
    assert_eq!(state_of(&pg, deferred.as_str()), "deferred");
    // retry: due now, so a dispatcher attempts it again (refused again, deferred again)
    let retry = format!("/api/v1/messages/{}/retry", deferred.as_str());
    assert_eq!(http(port, "POST", &retry, Some(token)).0, 200);
    wait_for(30, "the second attempt", || {
        let (_, m) = http_json(
            port,
            "GET",
            &format!("/api/v1/messages/{}", deferred.as_str()),
            None,
        );
        m["status"]["attempts"] == 2 && m["status"]["state"] == "deferred"
    });
    // a delivered message cannot be requeued, held or deleted: its row is a tombstone
    for a in ["requeue", "hold"] {
        let p = format!("/api/v1/messages/{}/{a}", okm.as_str());
        assert_eq!(http(port, "POST", &p, Some(token)).0, 409, "{a}");
    }
    assert_eq!(
        http(
            port,
            "POST",
            &format!("/api/v1/messages/{}/nope", okm.as_str()),
            Some(token)
        )
        .0,
        404
    );
    let del = format!("/api/v1/messages/{}", deferred.as_str());
    assert_eq!(http(port, "DELETE", &del, None).0, 401);
    let (code, o) = http_json(port, "DELETE", &del, Some(token));
    assert_eq!(code, 200, "{o}");
    let (code, m) = http_json(port, "GET", &del, None);
    assert_eq!(code, 200, "{m}");
    assert_eq!(m["status"]["dir"], "deleted", "a tombstone stays: {m}");
    assert_eq!(m["status"]["state"], "unknown", "{m}");
    assert_eq!(http(port, "DELETE", &del, Some(token)).0, 409);
    assert_eq!(srv.delivered().len(), 1, "only ok@ reached the relay");

    // the console page is served, and its script reads `queues`
    let (code, page) = http(port, "GET", "/", None);
    assert_eq!(code, 200);
    assert!(page.contains("console.js"), "{page}");
    let (_, js) = http(port, "GET", "/console.js", None);
    assert!(
        js.contains("s.queues"),
        "the console totals the queue's counts"
    );

    // metrics: the queue's gauges (two tombstones: ok@ delivered, defer@ deleted) and the fence
    // counter (ok@ went through one fence)
    let (code, text) = http(port, "GET", "/metrics", None);
    assert_eq!(code, 200);
    assert_eq!(
        sample(
            &text,
            "qmail_queue_messages",
            "spool=\"queue:qmail\",state=\"delivered\""
        ),
        Some(2.0),
        "{text}"
    );
    let lease = sample(&text, "qmail_queue_fences_total", "answer=\"lease\"");
    let database = sample(&text, "qmail_queue_fences_total", "answer=\"database\"");
    assert!(
        lease.is_some() && database.is_some(),
        "both answers are exported: {text}"
    );
    assert_eq!(
        lease.unwrap_or(0.0) + database.unwrap_or(0.0),
        1.0,
        "{text}"
    );
    assert!(!text.contains(&pg.uri()), "the URL is never a label");

    // the database stops answering but keeps its connections (SIGSTOP): the listener answers
    // within the deadline, 503 for what needs the database, the rest at once
    pg.freeze(true);
    let t0 = Instant::now();
    let (code, h) = http_json(port, "GET", "/healthz", None);
    assert_eq!(code, 503, "{h}");
    assert!(
        h["error"].as_str().unwrap_or("").contains("did not answer"),
        "{h}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "healthz took {:?}",
        t0.elapsed()
    );
    let probes: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || http(port, "GET", "/api/v1/status", None).0))
        .collect();
    assert_eq!(
        http(port, "GET", "/console.css", None).0,
        200,
        "static files never wait"
    );
    let (code, text) = http(port, "GET", "/metrics", None);
    assert_eq!(code, 200, "{text}");
    assert!(
        text.contains("qmail_queue_fences_total"),
        "the process counters are served"
    );
    for p in probes {
        assert_eq!(p.join().unwrap(), 503);
    }
    pg.freeze(false);
    wait_for(30, "healthz 200 with the database thawed", || {
        http(port, "GET", "/healthz", None).0 == 200
    });

    // the database goes away: health and reads say 503, and come back with it
    pg.kill();
    wait_for(30, "healthz 503 while the database is down", || {
        http(port, "GET", "/healthz", None).0 == 503
    });
    let (code, s) = http_json(port, "GET", "/api/v1/status", None);
    assert_eq!(code, 503, "{s}");
    assert!(
        s["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("queue qmail:"),
        "{s}"
    );
    assert_eq!(http(port, "POST", &hold, Some(token)).0, 503);
    // a second dispatcher started while the database is down: its listener answers at once,
    // 503 naming the queue, until the database is reached
    let port2 = free_port();
    let cfg2 = dir.path().join("run2.toml");
    let text2 = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{port2}"));
    std::fs::write(&cfg2, text2).unwrap();
    let run2 = start_run(&cfg2, &pg, &dir.path().join("run2.log"));
    wait_for(15, "the second listener", || {
        std::net::TcpStream::connect(("127.0.0.1", port2)).is_ok()
    });
    let (code, h) = http_json(port2, "GET", "/healthz", None);
    assert_eq!(code, 503, "{h}");
    assert_eq!(h["queue"], "qmail", "{h}");
    assert!(
        h["error"]
            .as_str()
            .unwrap_or("")
            .contains("not been reached"),
        "{h}"
    );
    assert_eq!(http(port2, "GET", "/api/v1/messages", None).0, 503);
    assert_eq!(
        http(port2, "GET", "/", None).0,
        200,
        "the console page is served"
    );
    // SIGHUP while it waits: the file is read again (a new token), and it waits on with it
    let log2 = dir.path().join("run2.log");
    let text2 = std::fs::read_to_string(&cfg2)
        .unwrap()
        .replace(token, "queue-http-token-after-sighup-01");
    std::fs::write(&cfg2, text2).unwrap();
    signal(&run2, "-HUP");
    wait_for(15, "the reload while waiting logged", || {
        std::fs::read_to_string(&log2)
            .unwrap_or_default()
            .contains("SIGHUP while waiting for the database: configuration reloaded")
    });
    pg.restart();
    wait_for(30, "the second dispatcher reached the database", || {
        http(port2, "GET", "/healthz", None).0 == 200
    });
    let hold2 = format!("/api/v1/messages/{}/hold", okm.as_str());
    assert_eq!(
        http(port2, "POST", &hold2, Some(token)).0,
        401,
        "the old token is gone"
    );
    assert_eq!(
        http(
            port2,
            "POST",
            &hold2,
            Some("queue-http-token-after-sighup-01")
        )
        .0,
        409,
        "the new token acts (a tombstone cannot be held)"
    );
    drop(run2);
    wait_for(30, "healthz 200 with the database back", || {
        http(port, "GET", "/healthz", None).0 == 200
    });
    let (code, s) = http_json(port, "GET", "/api/v1/status", None);
    assert_eq!(code, 200, "{s}");
    assert!(!logged().contains(token), "the token is never logged");
    drop(run);
}
