//! Initiator-side distribution: round-robin over spools, skipping failed ones; the
//! process default and QMAIL_SPOOL. One test function: the default is process-wide state.

use std::fs;

use qmail_core::{ErrorKind, Initiator, Message, QueueState, Spool, SpoolOptions};

fn msg() -> Message {
    Message::builder()
        .from("a@example.com")
        .to("b@example.org")
        .text("x")
        .build()
        .unwrap()
}

fn count(dir: &std::path::Path) -> usize {
    fs::read_dir(Spool::open(dir).unwrap().state_dir(QueueState::Ready))
        .unwrap()
        .count()
}

#[test]
fn spreads_skips_and_defaults() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let dead = t.path().join("dead");
    fs::write(&dead, b"a file where a spool directory should be").unwrap();

    // round-robin over two good spools
    let init = Initiator::new([&a, &b], SpoolOptions::default()).unwrap();
    for _ in 0..10 {
        init.submit(&msg()).unwrap();
    }
    assert_eq!((count(&a), count(&b)), (5, 5));

    // a dead spool is skipped
    let init = Initiator::new([&dead, &a], SpoolOptions::default()).unwrap();
    for _ in 0..4 {
        init.submit(&msg()).unwrap();
    }
    assert_eq!(count(&a), 9);

    // all dead: the last error, SpoolUnavailable
    let init = Initiator::new([&dead, &dead.join("x")], SpoolOptions::default()).unwrap();
    let e = init.submit(&msg()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SpoolUnavailable);

    // a message naming its spool goes there only
    let c = t.path().join("c");
    let named = Message::builder()
        .from("a@example.com")
        .to("b@example.org")
        .spool(&c)
        .build()
        .unwrap();
    Initiator::new([&a], SpoolOptions::default())
        .unwrap()
        .submit(&named)
        .unwrap();
    assert_eq!(count(&c), 1);

    // no default and no QMAIL_SPOOL: a clear error
    assert!(
        std::env::var_os("QMAIL_SPOOL").is_none(),
        "run the tests without QMAIL_SPOOL set"
    );
    let e = qmail_core::submit(&msg()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpoolConfigured);
    assert!(e.to_string().contains("QMAIL_SPOOL"));
    assert_eq!(
        Initiator::new(Vec::<std::path::PathBuf>::new(), SpoolOptions::default())
            .unwrap_err()
            .kind(),
        ErrorKind::NoSpoolConfigured
    );

    // the default from a path list
    let list = std::env::join_paths([&dead, &b]).unwrap();
    qmail_core::set_default_spool(list.to_str().unwrap()).unwrap();
    qmail_core::submit(&msg()).unwrap();
    qmail_core::submit(&msg()).unwrap();
    assert_eq!(count(&b), 7);
}

/// QMAIL_SPOOL is read when no default was set (a child process, so the env is its own).
#[test]
fn qmail_spool_env() {
    if let Some(dir) = std::env::var_os("QMAIL_TEST_ENV_CHILD") {
        let _ = dir;
        qmail_core::submit(&msg()).unwrap();
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let list = std::env::join_paths([&a, &b]).unwrap();
    let st = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "qmail_spool_env", "--test-threads=1"])
        .env("QMAIL_TEST_ENV_CHILD", "1")
        .env("QMAIL_SPOOL", &list)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(count(&a) + count(&b), 1);
}
