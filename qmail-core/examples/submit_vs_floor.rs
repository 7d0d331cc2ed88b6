//! Interleaved comparison of a 2 KiB submit with its raw floor (same-size file written under a
//! temporary name, fsync, rename, fsync of the directory; or the same without syncs).
//! Each round runs one submit and one floor operation back to back, so machine noise hits
//! both alike; medians and the ratio are printed. (The criterion bench `submit` measures the
//! same operations one after the other.)
//!
//! Run: `cargo run --release -p qmail-core --example submit_vs_floor -- [ROUNDS]`
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Instant;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2000);
    let text = "Thank you for your order. Your parcel leaves our warehouse today.\n".repeat(30);
    let msg = qmail_core::Message::builder()
        .from("Shop <noreply@example.com>")
        .to(("Customer", "customer@example.org"))
        .subject("Your order 12345")
        .text(&text[..1800])
        .build()?;
    let base = std::env::var("QMAIL_BENCH_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-spools").into());
    fs::create_dir_all(&base)?;
    for durable in [true, false] {
        let dir = tempfile::tempdir_in(&base)?;
        let spool = qmail_core::Spool::open_with(
            dir.path().join("spool"),
            qmail_core::SpoolOptions {
                durable,
                file_mode: 0o600,
            },
        )?;
        let id = spool.submit(&msg)?;
        let size = fs::metadata(spool.path().join("ready").join(id.as_str()))?.len() as usize;
        let bytes = vec![b'x'; size];
        let (ftmp, fready) = (dir.path().join("floor/tmp"), dir.path().join("floor/ready"));
        fs::create_dir_all(&ftmp)?;
        fs::create_dir_all(&fready)?;
        let (mut q, mut f) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
        for i in 0..rounds {
            let t = Instant::now();
            spool.submit(&msg)?;
            q.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            let name = format!("{}.{i}.floor", id.as_str());
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(ftmp.join(&name))?;
            file.write_all(&bytes)?;
            if durable {
                file.sync_all()?;
            }
            drop(file);
            fs::rename(ftmp.join(&name), fready.join(&name))?;
            if durable {
                File::open(&fready)?.sync_all()?;
            }
            f.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let (mq, mf) = (median(&mut q), median(&mut f));
        println!(
            "{}: size={size} B rounds={rounds} qmail_median_us={mq:.1} floor_median_us={mf:.1} ratio={:.2}",
            if durable { "durable" } else { "non-durable" },
            mq / mf
        );
    }
    Ok(())
}
