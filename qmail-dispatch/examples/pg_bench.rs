//! Helper for `bench/postgres/run.sh` (not a test):
//!
//! ```text
//! pg_bench claim URL THREADS BATCH   claim + read body + settle Delivered (through one
//!                                    GroupSettler, as the dispatcher) until the queue is
//!                                    empty; prints "N messages in S s: R msg/s"
//! pg_bench fill URL COUNT            COUNT small rows straight into qmail.message (SQL), for
//!                                    the `status` measurement
//! ```

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use qmail_dispatch::queue::postgres::{PgOptions, PgQueue};
use qmail_dispatch::queue::{Claim, Queue, Settlement};
use qmail_dispatch::state::MessageState;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("claim") => {
            let url = a[2].clone();
            let threads: usize = a[3].parse().unwrap();
            let batch: usize = a[4].parse().unwrap();
            let q = PgQueue::connect(&url, PgOptions::default()).unwrap();
            let done = Arc::new(AtomicU64::new(0));
            let settler = Arc::new(q.group_settler(64));
            let t = Instant::now();
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    let (q, done, settler) = (q.clone(), Arc::clone(&done), Arc::clone(&settler));
                    std::thread::spawn(move || {
                        let mut buf = Vec::new();
                        loop {
                            let got = q.claim(batch, Duration::from_millis(300)).unwrap();
                            if got.is_empty() {
                                return;
                            }
                            for c in got {
                                buf.clear();
                                c.body().unwrap().read_to_end(&mut buf).unwrap();
                                settler
                                    .settle(&c, Settlement::Delivered(MessageState::default()))
                                    .unwrap();
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            // the last empty claim waited 300 ms
            let secs = (t.elapsed().as_secs_f64() - 0.3).max(0.001);
            let n = done.load(Ordering::Relaxed);
            println!("{n} messages in {secs:.2} s: {:.0} msg/s", n as f64 / secs);
        }
        Some("fill") => {
            let mut c = postgres::Client::connect(&a[2], postgres::NoTls).unwrap();
            let n: i64 = a[3].parse().unwrap();
            c.execute(
                "INSERT INTO qmail.message (id, state, rank, priority, created, due, header, \
                 header_version, body_len, body, owner) SELECT 'fill.' || g, \
                 (ARRAY['ready', 'deferred', 'failed', 'delivered'])[1 + g % 4], g, 3, \
                 extract(epoch FROM now())::bigint - g % 86400, now(), '\\x00', 1, 5, \
                 CASE WHEN g % 4 = 3 THEN NULL ELSE 'hello'::bytea END, NULL \
                 FROM generate_series(1, $1::bigint) g",
                &[&n],
            )
            .unwrap();
            c.batch_execute("VACUUM ANALYZE qmail.message").unwrap();
        }
        _ => {
            eprintln!("usage: pg_bench claim URL THREADS BATCH | pg_bench fill URL COUNT");
            std::process::exit(2);
        }
    }
}
