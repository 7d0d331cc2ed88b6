//! Helper for `bench/dispatcher/run.sh` (not a test):
//!
//! ```text
//! bench_tool fill SPOOL COUNT SIZE [durable]   COUNT messages of ~SIZE bytes into ready/
//! bench_tool big SPOOL BYTES                   one message with a BYTES attachment (sparse file)
//! bench_tool latency SPOOL DELIVERY_LOG N      N idle submits; prints submit→250 times (ms)
//! ```

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qmail_core::{Message, Spool, SpoolOptions};

fn msg(i: usize, size: usize) -> Message {
    let line = "The quick brown fox jumps over the lazy dog 0123456789 abcdefghij\n";
    let text: String =
        line.repeat(size / line.len() + 1)[..size.saturating_sub(400).max(1)].to_owned();
    Message::builder()
        .from("bench@example.com")
        .to(format!("rcpt{i}@example.org").as_str())
        .subject("bench")
        .text(&text)
        .build()
        .unwrap()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("fill") => {
            let durable = a.get(5).is_some_and(|s| s == "durable");
            let spool = Spool::open_with(
                &a[2],
                SpoolOptions {
                    durable,
                    ..Default::default()
                },
            )
            .unwrap();
            let (n, size): (usize, usize) = (a[3].parse().unwrap(), a[4].parse().unwrap());
            let m = msg(0, size);
            let t0 = Instant::now();
            for i in 0..n {
                // one rendered template is enough for the throughput figures; ids differ
                let m = if i % 1000 == 0 {
                    msg(i, size)
                } else {
                    m.clone()
                };
                spool.submit(&m).unwrap();
            }
            eprintln!("filled {n} messages in {:.1} s", t0.elapsed().as_secs_f64());
        }
        Some("big") => {
            let bytes: u64 = a[3].parse().unwrap();
            let dir = std::path::Path::new(&a[2])
                .parent()
                .unwrap()
                .join("big.bin");
            let f = std::fs::File::create(&dir).unwrap();
            f.set_len(bytes).unwrap();
            let m = Message::builder()
                .from("bench@example.com")
                .to("big@example.org")
                .subject("big")
                .text("attached")
                .attach(&dir, Some("big.bin"), Some("application/octet-stream"))
                .build()
                .unwrap();
            let t0 = Instant::now();
            Spool::open(&a[2]).unwrap().submit(&m).unwrap();
            std::fs::remove_file(&dir).unwrap();
            eprintln!(
                "spooled a {bytes}-byte attachment in {:.1} s",
                t0.elapsed().as_secs_f64()
            );
        }
        Some("latency") => {
            let spool = Spool::open(&a[2]).unwrap();
            let log = std::path::PathBuf::from(&a[3]);
            let n: usize = a[4].parse().unwrap();
            let mut out = Vec::new();
            for i in 0..n {
                let m = msg(i, 2048);
                let before = std::fs::read_to_string(&log)
                    .map(|s| s.lines().count())
                    .unwrap_or(0);
                let t = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64;
                spool.submit(&m).unwrap();
                let t0 = Instant::now();
                loop {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.lines().count() > before {
                        let v: serde_json::Value =
                            serde_json::from_str(text.lines().nth(before).unwrap()).unwrap();
                        let done =
                            v["ts_ms"].as_i64().unwrap() + v["duration_ms"].as_i64().unwrap();
                        out.push(done - t);
                        break;
                    }
                    assert!(t0.elapsed() < Duration::from_secs(10), "no delivery");
                    std::thread::sleep(Duration::from_millis(1));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            out.sort();
            let mut so = std::io::stdout();
            writeln!(
                so,
                "p50_ms={} p90_ms={} max_ms={}",
                out[n / 2],
                out[n * 9 / 10],
                out[n - 1]
            )
            .unwrap();
        }
        _ => {
            eprintln!("usage: bench_tool fill|big|latency ...");
            std::process::exit(2);
        }
    }
}
