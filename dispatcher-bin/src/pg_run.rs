//! `qmail-dispatcher run --queue URL` and `drain --queue URL`: dispatchers serving the
//! PostgreSQL queue (`docs/scale-out.md`). The engine is
//! `qmail_dispatch::QueueDispatcher`; this file adds the connection, the signals (SIGHUP
//! reloads, see [`run`]) and the summary.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
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

/// Runs `f` on a thread of its own and hands back its answer: the caller polls it, so that
/// SIGTERM, SIGHUP and the watchdog are served while a database that stopped answering (a
/// SIGSTOPped server accepts connections and never replies) holds a connect.
fn in_background<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<mpsc::Receiver<T>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .context("cannot start a thread")?;
    Ok(rx)
}

/// How [`connect_waiting`] ended.
enum Waited {
    Connected(PgQueue),
    /// SIGTERM/SIGINT.
    Stopped,
    /// SIGHUP: read the configuration again, then wait with it.
    Reload,
}

/// Connects to the queue; while the database cannot be reached, retries with a backoff of up
/// to 10 s until it can, SIGTERM ([`Waited::Stopped`]) or SIGHUP ([`Waited::Reload`]). A bad
/// URL or schema is an error at once. The last error goes to `why` (the listener's 503).
fn connect_waiting(
    q: &QueueSettings,
    s: &Settings,
    term: &AtomicBool,
    hup: &AtomicBool,
    why: &Mutex<Option<String>>,
) -> Result<Waited> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let rx = {
            let (url, opts) = (q.url.clone(), pg_options(q, s));
            in_background("qmail-pg-connect", move || PgQueue::connect(&url, opts))?
        };
        let res = loop {
            if term.load(Ordering::SeqCst) {
                return Ok(Waited::Stopped);
            }
            if hup.swap(false, Ordering::SeqCst) {
                return Ok(Waited::Reload);
            }
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(r) => break r,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the connecting thread died"),
            }
        };
        match res {
            Ok(queue) => return Ok(Waited::Connected(queue)),
            Err(QueueError::Unavailable(e)) => {
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64,
                    "the queue's database is unreachable; retrying");
                *why.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                let t0 = Instant::now();
                while t0.elapsed() < backoff {
                    if term.load(Ordering::SeqCst) {
                        return Ok(Waited::Stopped);
                    }
                    if hup.swap(false, Ordering::SeqCst) {
                        return Ok(Waited::Reload);
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

/// How long a SIGHUP reload may take to reach its queue before it is given up.
const RELOAD_DEADLINE: Duration = Duration::from_secs(30);

/// What a reload gives: the settings, their queue and a dispatcher serving it.
type ReloadResult = Result<(Settings, QueueSettings, Arc<QueueDispatcher>)>;

/// The dispatcher a SIGHUP asks for: the configuration read again with the same command
/// line, checked as at start, and a new connection to its queue (which may be another one).
fn reloaded(o: &Overrides, metrics: &Arc<qmail_dispatch::Metrics>) -> ReloadResult {
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
    // start gets a 503 naming the queue and the last error, not a refused connection
    let why: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let pending = |s: &Settings, q: &QueueSettings| crate::http::View {
        metrics: Arc::clone(&metrics),
        spools: Vec::new(),
        queue: None,
        pending_queue: Some(q.schema.clone()),
        pending_error: Some(Arc::clone(&why)),
        delivery_log: s.dispatch.delivery_log.clone(),
        token: s.http_token.clone(),
        instance: "http-starting".into(),
    };
    let shown: Option<crate::http::Shown> = match s.http {
        Some(addr) => {
            let sh: crate::http::Shown = Arc::new(Mutex::new(pending(&s, &q)));
            crate::http::serve(addr, Arc::clone(&sh))?;
            Some(sh)
        }
        None => None,
    };
    let queue = loop {
        match connect_waiting(&q, &s, &term, &hup, &why)? {
            Waited::Connected(queue) => break queue,
            Waited::Stopped => return Ok(ExitCode::SUCCESS),
            Waited::Reload => match crate::settings::load(o).and_then(|new| {
                let nq = new
                    .queue
                    .clone()
                    .context("the new configuration has no queue ([queue] url or --queue)")?;
                Ok((new, nq))
            }) {
                Ok((new, nq)) => {
                    tracing::info!(schema = %nq.schema,
                        "SIGHUP while waiting for the database: configuration reloaded; \
                         connecting with it");
                    s = new;
                    q = nq;
                    if let Some(sh) = &shown {
                        *sh.lock().unwrap_or_else(|p| p.into_inner()) = pending(&s, &q);
                    }
                }
                Err(e) => tracing::error!(error = %format!("{e:#}"),
                    "SIGHUP: the new configuration is invalid; waiting on with the old one"),
            },
        }
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
        pending_error: None,
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
    // a reload connects to its queue on a thread of its own (see `in_background`); a SIGHUP
    // that comes meanwhile is served after it
    let mut reload: Option<(mpsc::Receiver<ReloadResult>, Instant)> = None;
    while !term.load(Ordering::SeqCst) {
        if reload.is_none() && hup.swap(false, Ordering::SeqCst) {
            crate::service::reloading();
            let (o2, m2) = (o.clone(), Arc::clone(&metrics));
            let rx = in_background("qmail-reload", move || reloaded(&o2, &m2))?;
            reload = Some((rx, Instant::now()));
        }
        let done = match &reload {
            Some((rx, since)) => match rx.try_recv() {
                Ok(r) => Some(r),
                // a database that accepts and never answers: give the reload up (what it
                // builds later is dropped) and serve on with the old configuration
                Err(mpsc::TryRecvError::Empty) if since.elapsed() > RELOAD_DEADLINE => {
                    Some(Err(anyhow::anyhow!(
                        "the new queue's database did not answer within {} s",
                        RELOAD_DEADLINE.as_secs()
                    )))
                }
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => {
                    Some(Err(anyhow::anyhow!("the reloading thread died")))
                }
            },
            None => None,
        };
        if let Some(result) = done {
            reload = None;
            match result {
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
