//! The directory spool's per-message file work (issue 11, "How fast"): a small message is read
//! whole when claimed and sent from memory, a large one streamed; a delivered message's file
//! is unlinked by the worker and closed by the closer threads, never left open.

mod dispatch_common;

use std::path::Path;
use std::time::{Duration, Instant};

use dispatch_common::*;
use qmail_core::{Message, Spool, SpoolFile};
use qmail_dispatch::Dispatcher;

const T: Duration = Duration::from_secs(20);

/// This process's descriptors open on a file under `dir` (deleted or not).
fn open_under(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| t.starts_with(dir))
        .count()
}

#[test]
fn small_and_large_messages_go_out_whole_and_no_spool_file_stays_open() {
    let srv = SmtpServer::start(&[]);
    let d = tempfile::tempdir().unwrap();
    let spool = Spool::open(d.path().join("spool")).unwrap();
    // small ones (read whole at the claim) around the 64 KiB line, and one streamed
    let sizes = [10usize, 2000, 60_000, 66_000, 300_000];
    let mut bodies = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let line = format!("line {i} ..leading dot after stuffing\r\n");
        let text: String = line.repeat(n / line.len() + 1);
        let m = Message::builder()
            .from("noreply@example.com")
            .to(format!("r{i}@example.org").as_str())
            .subject("s")
            .text(text.as_str())
            .build()
            .unwrap();
        let id = spool.submit(&m).unwrap();
        let body = SpoolFile::open(&spool.path().join("ready").join(id.as_str()))
            .unwrap()
            .read_body()
            .unwrap();
        bodies.push((format!("r{i}@example.org"), body));
    }
    let mut cfg = config(spool.path(), &[srv.url("tls=none")]);
    cfg.workers = 2;
    let s = Dispatcher::drain(cfg).unwrap();
    assert_eq!(s.delivered, sizes.len() as u64);
    let got = srv.wait_delivered(sizes.len(), T);
    for (rcpt, body) in &bodies {
        let tx = got
            .iter()
            .find(|t| t.rcpt_tos.iter().any(|r| r == rcpt))
            .unwrap_or_else(|| panic!("{rcpt} not delivered"));
        assert_eq!(&tx.data, body, "{rcpt}: the relay got the spooled bytes");
    }
    assert_eq!(files(spool.path(), "active"), Vec::<String>::new());
    // the closer threads close the unlinked files: none stays open in this process
    let t0 = Instant::now();
    while open_under(spool.path()) > 0 && t0.elapsed() < T {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(open_under(spool.path()), 0, "spool files left open");
}
