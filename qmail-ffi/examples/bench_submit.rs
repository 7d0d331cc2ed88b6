//! Submit latency through the Rust API (2 KiB text message): the Rust half of `bench/c/run`,
//! doing exactly what `bench/c/bench_submit.c` does through the C API.
//!
//! ```text
//! bench_submit SPOOL durable|nondurable submit|compose N OUT
//! ```
//! submit: one composed builder, N times `build()` + `qmail_core::submit` (what
//! `qmail_submit` does); compose: N times builder + setters + build + submit. The spool is the
//! default spool (`set_default_spool_with`). Writes N latencies in nanoseconds to OUT.

use std::io::Write;
use std::time::Instant;

use qmail_core::{MessageBuilder, SpoolOptions};

const FROM: &str = "Shop <noreply@example.com>";
const TO: &str = "Customer <customer@example.org>";
const SUBJECT: &str = "Your order 42 has shipped";

fn compose(text: &str) -> MessageBuilder {
    let mut b = MessageBuilder::default();
    b.set_from(FROM)
        .unwrap()
        .add_to(TO)
        .unwrap()
        .set_subject(SUBJECT)
        .unwrap()
        .set_text(text)
        .unwrap();
    b
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: bench_submit SPOOL durable|nondurable submit|compose N OUT");
        std::process::exit(2);
    }
    let line = "The quick brown fox jumps over the lazy dog, 0123456789 and back again.\n";
    let text: String = line.chars().cycle().take(2048).collect();
    let durable = args[2] == "durable";
    let composing = args[3] == "compose";
    let n: usize = args[4].parse().unwrap();
    qmail_core::set_default_spool_with(
        &args[1],
        SpoolOptions {
            durable,
            file_mode: 0o600,
        },
    )
    .unwrap();

    let mut ns = Vec::with_capacity(n);
    let prepared = compose(&text);
    for _ in 0..n {
        let t0 = Instant::now();
        let id = if composing {
            let b = compose(&text);
            qmail_core::submit(&b.build().unwrap())
        } else {
            qmail_core::submit(&prepared.build().unwrap())
        };
        ns.push(t0.elapsed().as_nanos());
        std::hint::black_box(id.unwrap());
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(&args[5]).unwrap());
    for x in ns {
        writeln!(out, "{x}").unwrap();
    }
}
