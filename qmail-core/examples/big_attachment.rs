//! Submits a message with one large file attachment and reports the peak anonymous memory
//! (RssAnon, sampled every 5 ms from /proc/self/status) and the encoding throughput.
//!
//! Run: `cargo run --release -p qmail-core --example big_attachment -- [SIZE_MIB] [DIR]`
//! (default 1024 MiB in ./target). Used by bench/core/run.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

fn rss_anon_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("RssAnon:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1024);
    let dir = std::env::args().nth(2).unwrap_or_else(|| "target".into());
    let work = tempfile::tempdir_in(dir)?;
    let path = work.path().join("big.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut block = vec![0u8; 1 << 20];
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..mib {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            f.write_all(&block)?;
        }
    }
    let spool = qmail_core::Spool::open_with(
        work.path().join("spool"),
        qmail_core::SpoolOptions {
            durable: true,
            file_mode: 0o600,
        },
    )?;
    let msg = qmail_core::Message::builder()
        .from("a@example.com")
        .to("b@example.org")
        .text("the big file")
        .attach(&path, None, Some("application/octet-stream"))
        .build()?;
    let before = rss_anon_kib();
    let peak = Arc::new(AtomicU64::new(before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_anon_kib(), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    let t = Instant::now();
    let id = spool.submit(&msg)?;
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sampler.join().ok();
    let size = std::fs::metadata(spool.path().join("ready").join(id.as_str()))?.len();
    println!(
        "attachment_mib={mib} spool_file_bytes={size} seconds={secs:.2} throughput_mib_s={:.0} rss_anon_before_kib={before} rss_anon_peak_kib={} rss_anon_peak_mib={:.1}",
        mib as f64 / secs,
        peak.load(Ordering::Relaxed),
        peak.load(Ordering::Relaxed) as f64 / 1024.0
    );
    Ok(())
}
