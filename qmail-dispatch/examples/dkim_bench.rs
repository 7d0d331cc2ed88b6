//! The signer alone, in memory (run by `bench/dkim/run.sh`; not a test):
//!
//!     dkim_bench RSA_KEY.pem ED25519_KEY.pem
//!
//! Prints µs per 2 KiB message (rsa-sha256 2048, ed25519-sha256, relaxed/relaxed) and the body
//! hash throughput in MiB/s (relaxed, simple) beside plain SHA-256 of the same bytes.

use std::time::Instant;

/// This thread's CPU time in seconds (`/proc/thread-self/schedstat`, ns on the CPU): the
/// figures below divide by it, not by wall time, so a busy machine does not skew them.
fn cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |ns| ns / 1e9)
}

struct Clock(Instant, f64);

impl Clock {
    fn start() -> Clock {
        Clock(Instant::now(), cpu())
    }
    /// (wall, cpu) seconds.
    fn stop(&self) -> (f64, f64) {
        (self.0.elapsed().as_secs_f64(), cpu() - self.1)
    }
}

use qmail_dispatch::dkim::{BodyHasher, Canon, DkimConfig, Outcome, Signer, resolve};
use sha2::{Digest, Sha256};

fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: Bench <bench@example.com>\r\nTo: sink@example.org\r\nSubject: bench\r\n\
        Date: Tue, 01 Dec 2026 21:00:00 +0000\r\nMessage-ID: <bench@example.com>\r\n\
        MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        .to_vec();
    let line = b"The quick brown fox jumps over the lazy dog, again and again.  \r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m
}

fn signer(key: &str) -> Signer {
    let mut e = [DkimConfig {
        domain: "example.com".into(),
        selector: "bench".into(),
        key_file: key.into(),
        ..DkimConfig::default()
    }];
    resolve(&mut e).expect("key");
    Signer::load(&e).expect("key")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(rsa), Some(ed)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: dkim_bench RSA_KEY.pem ED25519_KEY.pem");
        std::process::exit(2);
    };
    let small = message(2048);
    for (name, key) in [("rsa-sha256 (2048)", rsa), ("ed25519-sha256", ed)] {
        let s = signer(key);
        let n = 2000;
        let c = Clock::start();
        for i in 0..n {
            let out = s.sign(small.as_slice(), 1_700_000_000 + i).expect("sign");
            assert!(matches!(out, Outcome::Signed { .. }));
        }
        let (wall, cpu) = c.stop();
        println!(
            "sign one 2 KiB message, {name}: {:.1} µs CPU ({:.1} µs wall)",
            cpu * 1e6 / n as f64,
            wall * 1e6 / n as f64
        );
    }
    let chunk = message(1 << 20);
    let total_mib = 512;
    let c = Clock::start();
    let mut h = Sha256::new();
    for _ in 0..total_mib {
        h.update(&chunk);
    }
    std::hint::black_box(h.finalize());
    let sha = total_mib as f64 / c.stop().1;
    println!("SHA-256 alone (the floor): {sha:.0} MiB/s of CPU time");
    for canon in [Canon::Relaxed, Canon::Simple] {
        let c = Clock::start();
        let mut h = BodyHasher::new(canon);
        for _ in 0..total_mib {
            for part in chunk.chunks(64 * 1024) {
                h.update(part);
            }
        }
        std::hint::black_box(h.finish());
        let r = total_mib as f64 / c.stop().1;
        println!(
            "body hash, {} canonicalization, 64 KiB chunks: {r:.0} MiB/s of CPU time ({:.2}x SHA-256 alone)",
            canon.as_str(),
            r / sha
        );
    }
}
