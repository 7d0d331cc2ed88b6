//! `qmail-dispatcher run --queue URL` and `drain --queue URL`: dispatchers serving the
//! PostgreSQL queue (`docs/scale-out.md`). The engine is
//! `qmail_dispatch::QueueDispatcher`; this file adds the connection, the signals and the
//! summary.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use qmail_dispatch::QueueDispatcher;
use qmail_dispatch::queue::QueueError;
use qmail_dispatch::queue::postgres::{PgOptions, PgQueue};

use crate::forward::QueueSettings;
use crate::settings::Settings;

fn pg_options(q: &QueueSettings, s: &Settings) -> PgOptions {
    PgOptions {
        schema: q.schema.clone(),
        lease: Duration::from_secs(s.dispatch.lease_secs.max(2)),
        priority_step_secs: s.dispatch.priority_step_secs,
        tombstone_horizon: Duration::from_secs(q.tombstone_secs),
        ..PgOptions::default()
    }
}

/// A queue error as the operator should read it: a bad `[queue]` field names the field.
fn qerr(e: QueueError) -> anyhow::Error {
    match e {
        QueueError::Corrupt { id, reason } if id == "queue.url" || id == "schema" => {
            anyhow::anyhow!(
                "invalid configuration: [queue] {}: {reason}",
                id.trim_start_matches("queue.")
            )
        }
        e => anyhow::anyhow!("{e}"),
    }
}

/// `drain --queue`: delivers everything due now, prints the directory drain's summary.
pub fn drain(s: Settings, json: bool) -> Result<ExitCode> {
    let q = s.queue.as_ref().context("drain --queue needs a queue")?;
    let queue = PgQueue::connect(&q.url, pg_options(q, &s)).map_err(qerr)?;
    let sum =
        QueueDispatcher::drain(s.dispatch.clone(), queue).map_err(|e| anyhow::anyhow!("{e}"))?;
    if json {
        println!("{}", serde_json::to_string(&sum)?);
    } else {
        println!(
            "delivered {}, deferred {}, failed {}, corrupt {}",
            sum.delivered, sum.deferred, sum.failed, sum.corrupt
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `run --queue`: serves the queue until SIGTERM/SIGINT. While the database cannot be
/// reached at start, retries with a backoff of up to 10 s (a bad URL or schema is an error at
/// once). SIGHUP does not reload a queue dispatcher (logged; restart it instead).
pub fn run(s: Settings) -> Result<ExitCode> {
    let q = s.queue.clone().context("run --queue needs a queue")?;
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term))?;
    }
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))?;
    let mut backoff = Duration::from_millis(200);
    let queue = loop {
        match PgQueue::connect(&q.url, pg_options(&q, &s)) {
            Ok(queue) => break queue,
            Err(QueueError::Unavailable(e)) => {
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64,
                    "the queue's database is unreachable; retrying");
                let t0 = Instant::now();
                while t0.elapsed() < backoff {
                    if term.load(Ordering::SeqCst) {
                        return Ok(ExitCode::SUCCESS);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(qerr(e)),
        }
    };
    let metrics = Arc::new(qmail_dispatch::Metrics::default());
    let d = Arc::new(
        QueueDispatcher::new(s.dispatch.clone(), queue, Some(Arc::clone(&metrics)))
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    if let Some(addr) = s.http {
        let view = crate::http::View {
            metrics: Arc::clone(&metrics),
            spools: Vec::new(),
            delivery_log: s.dispatch.delivery_log.clone(),
            token: s.http_token.clone(),
            instance: format!("http-{}", d.instance()),
        };
        crate::http::serve(addr, Arc::new(std::sync::Mutex::new(view)))?;
    }
    crate::service::ready(&format!("serving queue {}", q.schema));
    tracing::info!(
        instance = d.instance(),
        schema = %q.schema,
        relays = %s.dispatch.relays.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(","),
        workers = s.dispatch.workers,
        "qmail-dispatcher started on the PostgreSQL queue"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flags = {
        let (stop, term, hup) = (Arc::clone(&stop), Arc::clone(&term), Arc::clone(&hup));
        std::thread::spawn(move || {
            let mut watchdog = crate::service::Watchdog::from_env();
            while !stop.load(Ordering::SeqCst) {
                if term.load(Ordering::SeqCst) {
                    crate::service::stopping();
                    stop.store(true, Ordering::SeqCst);
                }
                if hup.swap(false, Ordering::SeqCst) {
                    tracing::warn!(
                        "SIGHUP: a dispatcher serving a queue does not reload its \
                         configuration; restart it (SIGTERM finishes transactions in flight)"
                    );
                }
                watchdog.tick();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let sum = d.run(&stop).map_err(|e| anyhow::anyhow!("{e}"))?;
    stop.store(true, Ordering::SeqCst);
    let _ = flags.join();
    crate::log_stopped(&sum);
    Ok(ExitCode::SUCCESS)
}
