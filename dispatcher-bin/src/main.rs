//! `qmail-dispatcher`: serves one or more qmail spools and relays their messages over SMTP.
//! The engine is the `qmail_dispatch` crate; this binary adds the command line, the TOML
//! configuration, logging, signals and the metrics endpoint. See `docs/dispatcher.md`.

mod forward;
mod metrics_http;
mod settings;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use qmail_dispatch::{Dispatcher, admin, smtp::RelayEndpoint};

use settings::{LogFormat, Overrides};

#[derive(Debug, Parser)]
#[command(
    name = "qmail-dispatcher",
    version,
    about = "Relays the messages of qmail spools over SMTP"
)]
struct Cli {
    /// TOML configuration file (see docs/dispatcher.md).
    #[arg(long, global = true, env = "QMAIL_DISPATCHER_CONFIG")]
    config: Option<PathBuf>,
    /// A spool directory to serve (repeatable; replaces the file's `spools`). Default: the
    /// file's, else QMAIL_SPOOL (colon-separated).
    #[arg(long = "spool", global = true)]
    spools: Vec<PathBuf>,
    /// A PostgreSQL queue: postgres://user@host[,host2]/db?target_session_attrs=read-write
    /// (replaces the file's `[queue] url`; see docs/scale-out.md).
    #[arg(long = "queue", global = true)]
    queue: Option<String>,
    /// A relay: smtp://[user:pass@]host:port?tls=required|opportunistic|none, or smtps://
    /// (repeatable; replaces the file's relays). None: messages go to SPOOL/outbox/.
    #[arg(long = "relay", global = true)]
    relays: Vec<String>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9187).
    #[arg(long, global = true)]
    metrics: Option<std::net::SocketAddr>,
    /// Worker threads (concurrent SMTP transactions).
    #[arg(long, global = true)]
    workers: Option<usize>,
    /// Log format (default: the file's `log_format`, else human). Level: QMAIL_LOG or RUST_LOG.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve until SIGTERM/SIGINT (SIGHUP reloads the configuration).
    Run,
    /// Deliver every message ready or due now, print a summary, exit.
    Drain {
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Per spool: messages in each state and the age of the oldest.
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// One message: envelope, state, attempts and diagnosis.
    Show {
        /// Queue id.
        id: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Make deferred messages due now (all when no id is given).
    Retry {
        /// Queue ids.
        ids: Vec<String>,
    },
    /// Put failed messages back in the queue (all when no id is given).
    RequeueFailed {
        /// Queue ids.
        ids: Vec<String>,
    },
    /// Check the configuration and exit.
    CheckConfig,
    /// Copy the local spools' messages into the PostgreSQL queue (`--queue`), removing each
    /// local file once committed; until SIGTERM/SIGINT.
    Forward {
        /// Stop once the spools are empty (print a summary).
        #[arg(long)]
        drain: bool,
    },
    /// The PostgreSQL queue itself.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Create the queue's schema, or migrate it to this version (idempotent).
    Init,
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("QMAIL_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // colours only on a terminal: not in files or the journal
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => b.json().flatten_event(true).try_init(),
        LogFormat::Human => b.try_init(),
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qmail-dispatcher: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    let o = Overrides {
        config: cli.config.clone(),
        spools: cli.spools.clone(),
        relays: cli.relays.clone(),
        metrics: cli.metrics,
        workers: cli.workers,
        log_format: cli.log_format,
        queue: cli.queue.clone(),
        queue_only: matches!(cli.command, Command::Queue { .. })
            || (matches!(cli.command, Command::Status { .. }) && cli.queue.is_some()),
    };
    let s = settings::load(&o)?;
    init_logging(s.log_format);
    let admin_id = format!("admin-{}", std::process::id());
    match cli.command {
        Command::Run => run(&o, s),
        Command::Drain { json } => {
            let sum = Dispatcher::drain(s.dispatch).map_err(|e| anyhow::anyhow!("{e}"))?;
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
        Command::Status { json } if s.queue.is_some() => {
            forward::status(s.queue.as_ref().context("queue")?, json)
        }
        Command::Forward { drain } => {
            let queue = s
                .queue
                .clone()
                .context("forward needs a queue: --queue URL or [queue] url in the file")?;
            let term = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(sig, Arc::clone(&term))?;
            }
            let fs = forward::ForwardSettings {
                spools: s.dispatch.spools.clone(),
                queue,
                lease: Duration::from_secs(s.dispatch.lease_secs.max(1)),
                rescan: Duration::from_millis(s.dispatch.rescan_ms.max(50)),
                priority_step_secs: s.dispatch.priority_step_secs,
            };
            forward::forward(fs, term, drain)
        }
        Command::Queue {
            command: QueueCommand::Init,
        } => forward::init(
            s.queue
                .as_ref()
                .context("queue init needs --queue URL or [queue] url in the file")?,
        ),
        Command::Status { json } => {
            let all: Vec<admin::SpoolStatus> =
                s.dispatch.spools.iter().map(|p| admin::status(p)).collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "spools": all }))?
                );
            } else {
                for st in &all {
                    println!("spool {}", st.spool.display());
                    for (name, c) in [
                        ("ready", &st.ready),
                        ("scheduled", &st.scheduled),
                        ("active", &st.active),
                        ("deferred", &st.deferred),
                        ("failed", &st.failed),
                        ("corrupt", &st.corrupt),
                    ] {
                        match c.oldest_age_secs {
                            Some(a) => println!("  {name:<10} {:>9}  oldest {}", c.count, age(a)),
                            None => println!("  {name:<10} {:>9}", c.count),
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { id, json } => {
            for sp in &s.dispatch.spools {
                match admin::show(sp, &id) {
                    Ok(v) => {
                        if json {
                            println!("{}", serde_json::to_string_pretty(&v)?);
                        } else {
                            print_view(&v);
                        }
                        return Ok(ExitCode::SUCCESS);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).context(format!("show {id}")),
                }
            }
            eprintln!("qmail-dispatcher: no message {id} in any spool");
            Ok(ExitCode::FAILURE)
        }
        Command::Retry { ids } => move_ids(&s.dispatch.spools, &ids, "due now", |sp, ids| {
            admin::retry(sp, ids, &admin_id)
        }),
        Command::RequeueFailed { ids } => {
            move_ids(&s.dispatch.spools, &ids, "requeued", |sp, ids| {
                admin::requeue_failed(sp, ids, &admin_id)
            })
        }
        Command::CheckConfig => {
            for r in &s.dispatch.relays {
                RelayEndpoint::new(r.clone()).map_err(|e| anyhow::anyhow!(e))?;
            }
            println!(
                "configuration ok: {} spool(s), {} relay(s), {} worker(s){}",
                s.dispatch.spools.len(),
                s.dispatch.relays.len(),
                s.dispatch.workers,
                if s.dispatch.relays.is_empty() {
                    "; no relay: messages go to SPOOL/outbox/"
                } else {
                    ""
                }
            );
            for r in &s.dispatch.relays {
                println!(
                    "  relay {} priority {} weight {} tls {:?}{}",
                    r.name,
                    r.priority,
                    r.weight,
                    r.tls_mode(),
                    if r.dangerous_accept_invalid_certs {
                        " DANGEROUS: certificates not verified"
                    } else if r.cleartext_credentials() {
                        " WARNING: credentials without tls=required (password may go in cleartext)"
                    } else {
                        ""
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn print_view(v: &admin::MessageView) {
    println!("id          {}", v.id);
    println!(
        "state       {}{}",
        v.state,
        v.owner
            .as_ref()
            .map(|o| format!(" (claimed by {o})"))
            .unwrap_or_default()
    );
    println!("file        {}", v.path.display());
    if let Some(e) = &v.error {
        println!("error       {e}");
    }
    if let Some(f) = &v.mail_from {
        println!("from        <{f}>");
    }
    for r in &v.rcpt_to {
        println!("to          <{r}>");
    }
    if let Some(m) = &v.message_id {
        println!("message-id  {m}");
    }
    if let (Some(p), Some(sz)) = (v.priority, v.size) {
        println!("priority    {p}   size {sz} bytes");
    }
    if let Some(st) = &v.dispatch {
        println!("attempts    {}", st.attempts);
        if st.next_due > 0 {
            println!("next due    {} (unix)", st.next_due);
        }
        if let Some(r) = &st.remaining {
            println!("remaining   {}", r.join(", "));
        }
        let d = st.diagnosis();
        if !d.is_empty() {
            println!("diagnosis   {d}");
        }
        for a in &st.history {
            for r in &a.results {
                println!(
                    "  #{} at {} ms via {}: <{}> {:?} {}",
                    a.number, a.at_ms, a.relay, r.rcpt, r.status, r.reply
                );
            }
        }
    }
}

fn move_ids(
    spools: &[PathBuf],
    ids: &[String],
    what: &str,
    f: impl Fn(&std::path::Path, &[String]) -> std::io::Result<Vec<String>>,
) -> Result<ExitCode> {
    // ids are file names: refuse anything that is not a queue id (no "../", no "/")
    for id in ids {
        qmail_core::QueueId::parse(id).map_err(|e| anyhow::anyhow!("{id:?}: {e}"))?;
    }
    let mut moved: Vec<String> = Vec::new();
    for sp in spools {
        // with explicit ids, each spool is asked only for the ones it holds
        let mine: Vec<String> = if ids.is_empty() {
            Vec::new()
        } else {
            ids.iter()
                .filter(|i| admin::locate(sp, i).is_some())
                .cloned()
                .collect()
        };
        if !ids.is_empty() && mine.is_empty() {
            continue;
        }
        moved.extend(f(sp, &mine).with_context(|| format!("in {}", sp.display()))?);
    }
    for id in &moved {
        println!("{id} {what}");
    }
    println!("{} message(s) {what}", moved.len());
    let missing: Vec<&String> = ids.iter().filter(|i| !moved.contains(i)).collect();
    if !missing.is_empty() {
        for m in &missing {
            eprintln!("qmail-dispatcher: {m}: not found in the expected state");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn run(o: &Overrides, mut s: settings::Settings) -> Result<ExitCode> {
    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))?;
    let mut shown: Option<metrics_http::Shown> = None;
    loop {
        let d = Dispatcher::new(s.dispatch.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::info!(
            instance = d.instance(),
            spools = ?s.dispatch.spools,
            relays = ?s.dispatch.relays.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            workers = s.dispatch.workers,
            "qmail-dispatcher started"
        );
        match (&shown, s.metrics) {
            (Some(sh), _) => {
                *sh.lock().unwrap_or_else(|p| p.into_inner()) =
                    (d.metrics(), s.dispatch.spools.clone())
            }
            (None, Some(addr)) => {
                let sh: metrics_http::Shown = Arc::new(std::sync::Mutex::new((
                    d.metrics(),
                    s.dispatch.spools.clone(),
                )));
                metrics_http::serve(addr, Arc::clone(&sh))?;
                shown = Some(sh);
            }
            (None, None) => {}
        }
        // the engine stops on either flag; which one decides what follows
        let stop = Arc::new(AtomicBool::new(false));
        let relay_flags = {
            let (stop, term, hup) = (Arc::clone(&stop), Arc::clone(&term), Arc::clone(&hup));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if term.load(Ordering::SeqCst) || hup.load(Ordering::SeqCst) {
                        stop.store(true, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let sum = d.run(&stop).map_err(|e| anyhow::anyhow!("{e}"))?;
        stop.store(true, Ordering::SeqCst);
        let _ = relay_flags.join();
        tracing::info!(
            delivered = sum.delivered,
            deferred = sum.deferred,
            failed = sum.failed,
            corrupt = sum.corrupt,
            "dispatcher stopped"
        );
        if term.load(Ordering::SeqCst) {
            return Ok(ExitCode::SUCCESS);
        }
        hup.store(false, Ordering::SeqCst);
        match settings::load(o) {
            Ok(new) => {
                tracing::info!("SIGHUP: configuration reloaded");
                s = new;
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "SIGHUP: the new configuration is invalid; keeping the old one")
            }
        }
    }
}
