//! The delivery guarantee at the engine level (issue 10): state files that do not fit their
//! envelope, leases that come back, the pid shortcut only within one PID namespace, taking a
//! claim back without replacing `ready/ID`, `tmp/` cleanup and its count in `status`, the
//! layout check. Against the recording aiosmtpd relay, with `Dispatcher::drain`.

mod dispatch_common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dispatch_common::*;
use qmail_core::{Message, Spool, SpoolOptions};
use qmail_dispatch::claim::{self, Identity, Lease};
use qmail_dispatch::clock::SpoolClock;
use qmail_dispatch::{Dispatcher, admin};

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

fn submit(spool: &Spool, to: &[&str]) -> qmail_core::QueueId {
    let mut b = Message::builder()
        .from("noreply@example.com")
        .subject("g")
        .text("hello");
    for t in to {
        b = b.to(*t);
    }
    spool.submit(&b.build().unwrap()).unwrap()
}

fn write_state(spool: &Path, id: &str, v: serde_json::Value) {
    std::fs::create_dir_all(spool.join("state")).unwrap();
    std::fs::write(
        spool.join("state").join(format!("{id}.json")),
        serde_json::to_vec(&v).unwrap(),
    )
    .unwrap();
}

#[test]
fn a_state_file_with_crlf_or_a_foreign_address_is_quarantined_never_sent() {
    let srv = SmtpServer::start(&[]);
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let crlf = submit(&spool, &["a@example.org"]);
    write_state(
        spool.path(),
        crlf.as_str(),
        serde_json::json!({"remaining": ["a@example.org>\r\nRCPT TO:<evil@example.net"]}),
    );
    let foreign = submit(&spool, &["b@example.org"]);
    write_state(
        spool.path(),
        foreign.as_str(),
        serde_json::json!({"remaining": ["evil@example.net"]}),
    );
    let delivered = submit(&spool, &["c@example.org", "d@example.org"]);
    write_state(
        spool.path(),
        delivered.as_str(),
        serde_json::json!({"remaining": ["d@example.org"], "delivered": ["x@example.net"]}),
    );
    let fine = submit(&spool, &["e@example.org", "f@example.org"]);
    write_state(
        spool.path(),
        fine.as_str(),
        serde_json::json!({"remaining": ["f@example.org"], "delivered": ["e@example.org"]}),
    );
    let sum = Dispatcher::drain(config(spool.path(), &[srv.url("tls=none")])).unwrap();
    assert_eq!((sum.delivered, sum.corrupt), (1, 3), "{sum:?}");
    let txs = srv.delivered();
    assert_eq!(txs.len(), 1);
    assert_eq!(
        txs[0].rcpt_tos,
        ["f@example.org"],
        "only the one still to do"
    );
    assert_eq!(files(spool.path(), "corrupt").len(), 3);
    for id in [&crlf, &foreign, &delivered] {
        let st: serde_json::Value = serde_json::from_slice(
            &std::fs::read(spool.path().join("state").join(format!("{id}.json"))).unwrap(),
        )
        .unwrap();
        assert!(
            st["reason"]
                .as_str()
                .unwrap_or("")
                .contains("not a recipient of the envelope"),
            "{st}"
        );
    }
}

#[test]
fn a_removed_lease_is_recreated_and_bumps_the_epoch() {
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let l = Lease::acquire(
        spool.path(),
        "host-1-abcd",
        Duration::from_secs(2),
        Arc::new(SpoolClock),
    )
    .unwrap();
    assert!(l.is_fresh());
    let e0 = l.epoch();
    std::fs::remove_file(l.path()).unwrap();
    l.renew().unwrap();
    assert!(l.path().exists());
    assert_ne!(l.epoch(), e0, "claims made before are abandoned");
    let text = std::fs::read_to_string(l.path()).unwrap();
    let me = Identity::current();
    assert_eq!(Identity::parse_lease(&text), Some(me));
    // now = the lease's own mtime (the filesystem's clock)
    let m = std::fs::metadata(l.path()).unwrap().modified().unwrap();
    let now = l.spool_now();
    assert!(now >= m && now.duration_since(m).unwrap() < Duration::from_secs(1));
}

/// Writes a lease for a dead pid with these identity fields, and a claim of it.
fn dead_owner(spool: &Path, owner: &str, pid_ns: &str) -> String {
    let me = Identity::current();
    std::fs::write(
        spool.join("leases").join(owner),
        format!(
            "instance={owner}\npid=999999\nhost={}\nboot_id={}\npid_ns={pid_ns}\nstarted=0\n",
            me.host, me.boot_id
        ),
    )
    .unwrap();
    owner.to_owned()
}

#[test]
fn the_pid_shortcut_applies_only_within_one_pid_namespace() {
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    std::fs::create_dir_all(spool.path().join("leases")).unwrap();
    let me = Identity::current();
    let same = dead_owner(spool.path(), "mail-999999-aaaa", &me.pid_ns);
    let other = dead_owner(spool.path(), "mail-999999-bbbb", "pid:[1]");
    let a = submit(&spool, &["a@example.org"]);
    let b = submit(&spool, &["b@example.org"]);
    for (id, owner) in [(&a, &same), (&b, &other)] {
        claim::claim(
            spool.path(),
            id.as_str(),
            qmail_core::QueueState::Ready,
            owner,
        )
        .unwrap()
        .unwrap();
    }
    let lease = Duration::from_secs(60);
    let r =
        claim::reclaim_expired(spool.path(), "me-1-cccc", lease, &me, SystemTime::now()).unwrap();
    assert_eq!(
        r.ids,
        [a.to_string()],
        "only the dead owner of this PID namespace"
    );
    assert_eq!(files(spool.path(), "active").len(), 1);
    // once its lease is old, the other is taken back too
    let later = SystemTime::now() + Duration::from_secs(61);
    let r = claim::reclaim_expired(spool.path(), "me-1-cccc", lease, &me, later).unwrap();
    assert_eq!(r.ids, [b.to_string()]);
}

#[test]
fn taking_a_claim_back_never_replaces_ready() {
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let id = submit(&spool, &["a@example.org"]);
    let p = claim::claim(
        spool.path(),
        id.as_str(),
        qmail_core::QueueState::Ready,
        "gone-1-aaaa",
    )
    .unwrap()
    .unwrap();
    // a second file of that id appears in ready/
    std::fs::write(spool.path().join("ready").join(id.as_str()), b"other").unwrap();
    let r = claim::reclaim_expired(
        spool.path(),
        "me-1-cccc",
        Duration::from_secs(2),
        &Identity::current(),
        SystemTime::now() + Duration::from_secs(10),
    )
    .unwrap();
    assert!(r.ids.is_empty());
    assert_eq!(r.conflicts, [id.to_string()]);
    assert_eq!(
        std::fs::read(spool.path().join("ready").join(id.as_str())).unwrap(),
        b"other"
    );
    assert!(!p.exists());
    assert_eq!(files(spool.path(), "corrupt").len(), 1);
}

#[test]
fn tmp_is_cleaned_by_drain_and_counted_by_status() {
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let old = spool.path().join("tmp").join("dead-submitter");
    std::fs::write(&old, vec![0u8; 1000]).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(37 * 3600))
        .unwrap();
    let young = spool.path().join("tmp").join("in-progress");
    std::fs::write(&young, vec![0u8; 10]).unwrap();
    let st = admin::status(spool.path());
    assert_eq!((st.tmp_files, st.tmp_bytes), (2, 1010));
    Dispatcher::drain(config(spool.path(), &[])).unwrap();
    assert!(!old.exists(), "older than 36 h: removed");
    assert!(young.exists());
    let st = admin::status(spool.path());
    assert_eq!((st.tmp_files, st.tmp_bytes), (1, 10));
    // configurable
    let mut c = config(spool.path(), &[]);
    c.tmp_max_age_secs = 0;
    std::thread::sleep(Duration::from_millis(20));
    Dispatcher::drain(c).unwrap();
    assert!(!young.exists());
}

#[test]
fn a_group_writable_dispatcher_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    std::fs::create_dir_all(spool.path().join("state")).unwrap();
    std::fs::set_permissions(
        spool.path().join("state"),
        std::fs::Permissions::from_mode(0o770),
    )
    .unwrap();
    let e = Dispatcher::new(config(spool.path(), &[])).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("/state") && msg.contains("0770") && msg.contains("spool init"),
        "{msg}"
    );
    std::fs::set_permissions(
        spool.path().join("state"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    Dispatcher::new(config(spool.path(), &[])).unwrap();
}

#[test]
fn the_directory_queue_behind_the_seam_claims_fences_and_settles() {
    use qmail_dispatch::queue::dir::DirQueue;
    use qmail_dispatch::queue::{Claim, Queue, SettleError, Settlement};
    let d = tempfile::tempdir().unwrap();
    let spool = spool_at(d.path());
    let ids: Vec<_> = (0..3).map(|_| submit(&spool, &["a@example.org"])).collect();
    let q = DirQueue::open(
        spool.path(),
        "seam-1-abcd",
        Duration::from_secs(2),
        Arc::new(SpoolClock),
        false,
    )
    .unwrap();
    let mut got = q.claim(2, Duration::from_secs(1)).unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|c| c.still_mine()));
    assert_eq!(files(spool.path(), "active").len(), 2);
    let c = got.pop().unwrap();
    let mut st = c.state().clone();
    st.delivered.push("a@example.org".into());
    c.settle(Settlement::Delivered(st)).unwrap();
    // a claim taken back (its name gone) fails its fence and settles as LostClaim
    let c = got.pop().unwrap();
    let name = files(spool.path(), "active").remove(0);
    std::fs::rename(
        spool.path().join("active").join(&name),
        spool.path().join("ready").join(c.id()),
    )
    .unwrap();
    assert!(!c.still_mine());
    assert!(matches!(
        c.settle(Settlement::Release),
        Err(SettleError::LostClaim)
    ));
    let rest = q.claim(10, Duration::from_millis(100)).unwrap();
    assert_eq!(rest.len(), 2);
    for c in rest {
        let due = qmail_core::spool::now_secs() + 3600;
        let st = qmail_dispatch::MessageState {
            next_due: due,
            remaining: Some(vec!["a@example.org".into()]),
            ..Default::default()
        };
        c.settle(Settlement::Deferred { state: st, due }).unwrap();
    }
    assert_eq!(files(spool.path(), "deferred").len(), 2);
    let again = q.claim(10, Duration::from_millis(100)).unwrap();
    let seen: Vec<(String, i64)> = again
        .iter()
        .map(|c| (c.id().to_owned(), c.state().next_due))
        .collect();
    assert!(again.is_empty(), "not due: {seen:?}");
    assert_eq!(
        q.heartbeat().unwrap(),
        qmail_dispatch::queue::LeaseHealth::Fresh
    );
    assert_eq!(q.reclaim_expired().unwrap(), 0);
    assert_eq!(ids.len(), 3);
}
