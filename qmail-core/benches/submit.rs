//! Submit latency of a 2 KiB text message, durable and not, beside the raw floor: write a file
//! of the same size under a temporary name, (fsync,) rename into place, (fsync the directory).
//!
//! Run: `cargo bench -p qmail-core --bench submit` (figures in docs/benchmarks.md).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use qmail_core::{Message, Spool, SpoolOptions};

fn message() -> Message {
    let text = "Thank you for your order. Your parcel leaves our warehouse today.\n".repeat(30);
    Message::builder()
        .from("Shop <noreply@example.com>")
        .to(("Customer", "customer@example.org"))
        .subject("Your order 12345")
        .text(&text[..1800])
        .build()
        .expect("valid message")
}

fn floor(dir: &Path, bytes: &[u8], durable: bool) {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join("tmp").join(format!("f{n}"));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .unwrap();
    f.write_all(bytes).unwrap();
    if durable {
        f.sync_all().unwrap();
    }
    drop(f);
    let ready = dir.join("ready");
    fs::rename(&tmp, ready.join(format!("f{n}"))).unwrap();
    if durable {
        File::open(&ready).unwrap().sync_all().unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let msg = message();
    // on the project's disk (not a tmpfs /tmp, where fsync is free); QMAIL_BENCH_DIR overrides
    let base: String = std::env::var("QMAIL_BENCH_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-spools").into());
    fs::create_dir_all(&base).unwrap();
    let root = tempfile::tempdir_in(&base).unwrap();
    let size = {
        let s = Spool::open(root.path().join("probe")).unwrap();
        let id = s.submit(&msg).unwrap();
        fs::metadata(s.path().join("ready").join(id.as_str()))
            .unwrap()
            .len() as usize
    };
    let bytes = vec![b'x'; size];
    for durable in [true, false] {
        let label = if durable { "durable" } else { "non-durable" };
        let mut g = c.benchmark_group(format!("submit_2KiB_{label}"));
        let spool = Spool::open_with(
            root.path().join(label),
            SpoolOptions {
                durable,
                file_mode: 0o600,
            },
        )
        .unwrap();
        g.bench_function("qmail_submit", |b| b.iter(|| spool.submit(&msg).unwrap()));
        let fdir = root.path().join(format!("floor-{label}"));
        fs::create_dir_all(fdir.join("tmp")).unwrap();
        fs::create_dir_all(fdir.join("ready")).unwrap();
        g.bench_function("raw_floor", |b| b.iter(|| floor(&fdir, &bytes, durable)));
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(60).measurement_time(std::time::Duration::from_secs(8));
    targets = bench
}
criterion_main!(benches);
