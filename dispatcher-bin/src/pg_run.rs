//! `qmail-dispatcher run --queue URL` and `drain --queue URL`: dispatchers serving the
//! PostgreSQL queue (`docs/scale-out.md`). The engine is
//! `qmail_dispatch::QueueDispatcher`; this file adds the connection, the signals (SIGHUP
//! reloads, see [`run`]) and the summary.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use qmail_dispatch::QueueDispatcher;
use qmail_dispatch::queue::QueueError;
use qmail_dispatch::queue::postgres::{PgOptions, PgQueue};

use crate::check::Finding;
use crate::forward::QueueSettings;
use crate::settings::{Overrides, Settings};

pub(crate) fn pg_options(q: &QueueSettings, s: &Settings) -> PgOptions {
    PgOptions {
        schema: q.schema.clone(),
        lease: Duration::from_secs(s.dispatch.lease_secs.max(2)),
        priority_step_secs: s.dispatch.priority_step_secs,
        tombstone_horizon: Duration::from_secs(q.tombstone_secs),
        local_fence: Duration::from_millis(q.local_fence_ms),
        ..PgOptions::default()
    }
}

/// A queue error as the operator should read it: a bad `[queue]` field names the field.
pub(crate) fn qerr(e: QueueError) -> anyhow::Error {
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

/// A connection for the operator's commands (no lease is taken: they only read and change
/// rows, never claim).
pub(crate) fn connect_admin(q: &QueueSettings, s: &Settings) -> Result<PgQueue> {
    PgQueue::connect(&q.url, pg_options(q, s)).map_err(qerr)
}

/// The configuration as `run --queue` resolves it (no spool needed).
///
/// # Errors
/// The configuration's own rules (`DispatchConfig::resolve`).
pub(crate) fn resolved(s: &Settings) -> qmail_core::error::Result<qmail_dispatch::DispatchConfig> {
    let mut cfg = s.dispatch.clone();
    let spoolless = cfg.spools.is_empty();
    if spoolless {
        cfg.spools.push("(queue)".into());
    }
    let mut cfg = cfg.resolve()?;
    if spoolless {
        cfg.spools.clear();
    }
    Ok(cfg)
}

/// What `check-config` adds for a dispatcher serving the queue: a relay, and the queue
/// reachable at this build's schema version.
pub(crate) fn check(s: &Settings) -> Vec<Finding> {
    let mut out = Vec::new();
    if s.dispatch.relays.is_empty() {
        out.push(Finding::Error(
            "no relay: serving a PostgreSQL queue needs at least one (--relay, or [[relay]] \
             in the file): there is no local outbox"
                .into(),
        ));
    }
    match &s.queue {
        None => out.push(Finding::Error(
            "no queue: --queue URL or [queue] url".into(),
        )),
        Some(q) => {
            if let Err(e) = connect_admin(q, s) {
                out.push(Finding::Error(format!("queue {}: {e:#}", q.schema)));
            }
        }
    }
    out
}

/// Connects to the queue; while the database cannot be reached, retries with a backoff of up
/// to 10 s until it can or `term` is set (`None`). A bad URL or schema is an error at once.
fn connect_waiting(q: &QueueSettings, s: &Settings, term: &AtomicBool) -> Result<Option<PgQueue>> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match PgQueue::connect(&q.url, pg_options(q, s)) {
            Ok(queue) => return Ok(Some(queue)),
            Err(QueueError::Unavailable(e)) => {
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64,
                    "the queue's database is unreachable; retrying");
                let t0 = Instant::now();
                while t0.elapsed() < backoff {
                    if term.load(Ordering::SeqCst) {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(qerr(e)),
        }
    }
}

/// One serving dispatcher: its stop flag and the thread running it.
struct Serving {
    d: Arc<QueueDispatcher>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<qmail_core::error::Result<qmail_dispatch::Summary>>,
}

fn serve(d: Arc<QueueDispatcher>) -> Result<Serving> {
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (d, stop) = (Arc::clone(&d), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("qmail-queue-run".into())
            .spawn(move || d.run(&stop))?
    };
    Ok(Serving { d, stop, thread })
}

fn started(d: &QueueDispatcher, q: &QueueSettings, s: &Settings) {
    // the names as the dispatcher resolved them (host:port when the file gives none)
    let relays = resolved(s)
        .map(|c| c.relays)
        .unwrap_or_else(|_| s.dispatch.relays.clone());
    tracing::info!(
        instance = d.instance(),
        schema = %q.schema,
        relays = %relays.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(","),
        workers = s.dispatch.workers,
        "qmail-dispatcher started on the PostgreSQL queue"
    );
}

/// The dispatcher a SIGHUP asks for: the configuration read again with the same command
/// line, checked as at start, and a new connection to its queue (which may be another one).
fn reloaded(
    o: &Overrides,
    metrics: &Arc<qmail_dispatch::Metrics>,
) -> Result<(Settings, QueueSettings, Arc<QueueDispatcher>)> {
    let new = crate::settings::load(o)?;
    let q = new
        .queue
        .clone()
        .context("the new configuration has no queue ([queue] url or --queue)")?;
    let queue = PgQueue::connect(&q.url, pg_options(&q, &new)).map_err(qerr)?;
    let d = QueueDispatcher::new(new.dispatch.clone(), queue, Some(Arc::clone(metrics)))
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    Ok((new, q, Arc::new(d)))
}

/// `run --queue`: serves the queue until SIGTERM/SIGINT. While the database cannot be
/// reached at start, retries with a backoff of up to 10 s (a bad URL or schema is an error at
/// once).
///
/// SIGHUP reloads the configuration as the directory dispatcher does (`Dispatcher::reload`):
/// the file is read again with the same command line and checked as at start; when it is
/// invalid (or its queue cannot be reached) the error is logged and the old configuration
/// serves on. When it is valid, a new dispatcher (a new instance id, so a new lease and new
/// claims) starts serving under it at once, and the old one stops claiming, finishes its
/// transactions in flight under its own lease (up to `shutdown_grace_secs`, each settled,
/// a claim made after the stop released) and gives its lease back. The counters (metrics)
/// carry on across the reload. While the two overlap (the old one's transactions in flight),
/// the process may hold up to twice `workers` SMTP transactions; fleet-wide relay limits are
/// kept (each holds its own slots in the database).
pub fn run(o: &Overrides, s: Settings) -> Result<ExitCode> {
    let mut s = s;
    let mut q = s.queue.clone().context("run --queue needs a queue")?;
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term))?;
    }
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))?;
    let metrics = Arc::new(qmail_dispatch::Metrics::default());
    // the listener first, so that a probe of a dispatcher still waiting for its database at
    // start gets a 503 naming the queue, not a refused connection
    let shown: Option<crate::http::Shown> = match s.http {
        Some(addr) => {
            let sh: crate::http::Shown = Arc::new(std::sync::Mutex::new(crate::http::View {
                metrics: Arc::clone(&metrics),
                spools: Vec::new(),
                queue: None,
                pending_queue: Some(q.schema.clone()),
                delivery_log: s.dispatch.delivery_log.clone(),
                token: s.http_token.clone(),
                instance: "http-starting".into(),
            }));
            crate::http::serve(addr, Arc::clone(&sh))?;
            Some(sh)
        }
        None => None,
    };
    let Some(queue) = connect_waiting(&q, &s, &term)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let d = Arc::new(
        QueueDispatcher::new(s.dispatch.clone(), queue, Some(Arc::clone(&metrics)))
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let view = |s: &Settings, d: &QueueDispatcher| crate::http::View {
        metrics: Arc::clone(&metrics),
        spools: Vec::new(),
        queue: Some(d.queue().clone()),
        pending_queue: None,
        delivery_log: s.dispatch.delivery_log.clone(),
        token: s.http_token.clone(),
        instance: format!("http-{}", d.instance()),
    };
    if let Some(sh) = &shown {
        *sh.lock().unwrap_or_else(|p| p.into_inner()) = view(&s, &d);
    }
    crate::service::ready(&format!("serving queue {}", q.schema));
    started(&d, &q, &s);
    let mut current = serve(d)?;
    // dispatchers of an older configuration finishing their transactions in flight
    let mut retiring: Vec<Serving> = Vec::new();
    let mut watchdog = crate::service::Watchdog::from_env();
    while !term.load(Ordering::SeqCst) {
        if hup.swap(false, Ordering::SeqCst) {
            crate::service::reloading();
            match reloaded(o, &metrics) {
                Ok((new, nq, nd)) => {
                    if new.http != s.http {
                        tracing::warn!(
                            "SIGHUP: the http listen address changes at the next start, not \
                             at a reload"
                        );
                    }
                    tracing::info!(
                        old_instance = current.d.instance(),
                        instance = nd.instance(),
                        in_flight = current.d.in_flight(),
                        "SIGHUP: configuration reloaded; a new dispatcher serves under it, the \
                         old one finishes its transactions in flight under its own lease"
                    );
                    if let Some(sh) = &shown {
                        *sh.lock().unwrap_or_else(|p| p.into_inner()) = view(&new, &nd);
                    }
                    current.stop.store(true, Ordering::SeqCst);
                    let old = std::mem::replace(&mut current, serve(Arc::clone(&nd))?);
                    retiring.push(old);
                    s = new;
                    q = nq;
                    started(&nd, &q, &s);
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), instance = current.d.instance(),
                        "SIGHUP: the new configuration is invalid (or its queue unreachable); \
                         serving on with the old one");
                }
            }
            crate::service::ready(&format!("serving queue {}", q.schema));
        }
        retiring.retain(|r| {
            if r.thread.is_finished() {
                tracing::info!(
                    instance = r.d.instance(),
                    "the dispatcher of the previous configuration has finished"
                );
                false
            } else {
                true
            }
        });
        if current.thread.is_finished() {
            // run() returns only after its stop flag: an error ends the process
            break;
        }
        watchdog.tick();
        std::thread::sleep(Duration::from_millis(20));
    }
    crate::service::stopping();
    current.stop.store(true, Ordering::SeqCst);
    let mut result = Ok(());
    for r in retiring.into_iter().chain(std::iter::once(current)) {
        r.stop.store(true, Ordering::SeqCst);
        match r.thread.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => result = Err(anyhow::anyhow!("{e}")),
            Err(_) => result = Err(anyhow::anyhow!("a dispatcher thread panicked")),
        }
    }
    result?;
    // one set of counters for the life of the process (every configuration's)
    crate::log_stopped(&metrics.summary());
    Ok(ExitCode::SUCCESS)
}
