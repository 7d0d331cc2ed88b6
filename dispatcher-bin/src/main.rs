//! `qmail-dispatcher`: serves one or more qmail spools and relays their messages over SMTP.
//! The engine is the `qmail_dispatch` crate; this binary adds the command line, the TOML
//! configuration, logging, signals and the metrics endpoint. See `docs/dispatcher.md`.

mod admin_cmd;
mod assets;
mod check;
mod forward;
mod http;
mod journal;
mod pg_run;
mod service;
mod settings;
mod spool_init;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
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
    /// (replaces the file's `[queue] url`). run, drain, check-config, status and the operator's
    /// commands then work on the queue, not on spools (see docs/scale-out.md).
    #[arg(long = "queue", global = true)]
    queue: Option<String>,
    /// A relay: smtp://[user:pass@]host:port?tls=required|opportunistic|none, or smtps://
    /// (repeatable; replaces the file's relays). None: messages go to SPOOL/outbox/.
    #[arg(long = "relay", global = true)]
    relays: Vec<String>,
    /// Serve metrics, /healthz, the JSON API and the console on this address (e.g.
    /// 127.0.0.1:9187; a bare port means 127.0.0.1). `--metrics` is the same option.
    #[arg(long, global = true, alias = "metrics", value_parser = settings::parse_listen)]
    http: Option<std::net::SocketAddr>,
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
    /// Per spool (or for the queue): messages in each state and the age of the oldest.
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
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Put failed messages back in the queue: the ids given, or every one with --all.
    RequeueFailed {
        /// Queue ids.
        ids: Vec<String>,
        /// Every failed message (5xx refusals included).
        #[arg(long)]
        all: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// The queue, message by message (mailq): id, size, age, priority, sender, recipients,
    /// attempts, last reply.
    List {
        /// Only these states (queued, scheduled, active, deferred, held, failed; comma-separated).
        #[arg(long)]
        state: Option<String>,
        /// Only messages to this recipient (`@domain` for a domain).
        #[arg(long)]
        rcpt: Option<String>,
        /// Only messages from this sender (`@domain` for a domain).
        #[arg(long)]
        from: Option<String>,
        /// Only messages older than this many seconds.
        #[arg(long)]
        older: Option<i64>,
        /// At most this many (oldest first).
        #[arg(long)]
        limit: Option<usize>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Put messages on hold: no dispatcher claims them, the lifetime does not expire them.
    Hold {
        /// Queue ids.
        ids: Vec<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Release held messages (back to ready, or deferred while their retry time is ahead).
    Release {
        /// Queue ids.
        ids: Vec<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Delete messages (never one in flight; in a queue, a tombstone stays).
    Delete {
        /// Queue ids.
        ids: Vec<String>,
        /// With --all: every message of this state (ready, scheduled, deferred, hold, failed, corrupt).
        #[arg(long)]
        state: Option<String>,
        /// Every message of --state.
        #[arg(long)]
        all: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print a message as it goes on the wire (postcat -q).
    Cat {
        /// Queue id.
        id: String,
        /// Only the header section.
        #[arg(long)]
        headers: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Where the queue is stuck: recipients by domain and age (qshape).
    Summary {
        /// Only these states (default: queued, scheduled, active, deferred, held).
        #[arg(long)]
        state: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Search the delivery log (messages already gone included).
    Find {
        /// Attempts to this recipient (`@domain` for a domain).
        #[arg(long)]
        rcpt: Option<String>,
        /// Attempts of the message with this Message-ID.
        #[arg(long)]
        message_id: Option<String>,
        /// The delivery log (default: the configuration's delivery_log).
        #[arg(long)]
        log: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Check the configuration and what `run` needs (spools, log files, TLS files, the
    /// metrics address) as this user, and exit (non-zero on a problem).
    CheckConfig,
    /// Spool administration (`spool init DIR`: the two-user layout).
    Spool {
        #[command(subcommand)]
        command: spool_init::SpoolCommand,
    },
    /// Write the man pages and shell completions into DIR (packaging).
    #[command(hide = true)]
    GenerateAssets {
        /// Output directory.
        dir: PathBuf,
    },
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
    // under systemd each line starts with its syslog priority (`journalctl -p err`)
    let journal = journal::stderr_is_journal();
    let fmt = tracing_subscriber::fmt::format;
    let _ = match format {
        LogFormat::Json => b
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(journal::Prefixed::new(
                fmt().json().flatten_event(true),
                journal,
            ))
            .try_init(),
        LogFormat::Human => b
            .event_format(journal::Prefixed::new(fmt(), journal))
            .try_init(),
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
    // commands that need no configuration
    match &cli.command {
        Command::Spool { .. } if cli.queue.is_some() => {
            anyhow::bail!(
                "--queue: `spool` works on a directory spool, not on a PostgreSQL queue \
                 (`queue init --queue URL` creates a queue's schema)"
            )
        }
        Command::Spool { command } => return spool_init::run(command).map(|()| ExitCode::SUCCESS),
        Command::GenerateAssets { dir } => {
            return assets::write(Cli::command(), dir).map(|()| ExitCode::SUCCESS);
        }
        _ => {}
    }
    // the commands that work on spools or on the queue: not both at once
    let either = matches!(
        cli.command,
        Command::Run
            | Command::Drain { .. }
            | Command::Status { .. }
            | Command::Show { .. }
            | Command::Retry { .. }
            | Command::RequeueFailed { .. }
            | Command::List { .. }
            | Command::Hold { .. }
            | Command::Release { .. }
            | Command::Delete { .. }
            | Command::Cat { .. }
            | Command::Summary { .. }
            | Command::CheckConfig
    );
    if either && cli.queue.is_some() && !cli.spools.is_empty() {
        anyhow::bail!(
            "--queue and --spool: this command works on one of them (only `forward` takes \
             both); give --queue URL for the PostgreSQL queue or --spool DIR for spools"
        );
    }
    let o = Overrides {
        config: cli.config.clone(),
        spools: cli.spools.clone(),
        relays: cli.relays.clone(),
        http: cli.http,
        workers: cli.workers,
        log_format: cli.log_format,
        queue: cli.queue.clone(),
        // a spool is required below only when the command turns out to work on spools
        queue_only: matches!(cli.command, Command::Queue { .. })
            || matches!(cli.command, Command::Find { .. })
            || (either && cli.spools.is_empty()),
    };
    let s = settings::load(&o)?;
    init_logging(s.log_format);
    let admin_id = format!("admin-{}", std::process::id());
    // run/drain serve the PostgreSQL queue with --queue, or with [queue] and no spool
    let serve_queue = s.queue.is_some() && (cli.queue.is_some() || s.dispatch.spools.is_empty());
    // the operator's commands and status work on the queue with --queue, or with [queue]
    // unless --spool is given on the command line
    let on_queue = match cli.command {
        // check-config checks what `run` would serve
        Command::Run | Command::Drain { .. } | Command::CheckConfig => serve_queue,
        _ => s.queue.is_some() && (cli.queue.is_some() || cli.spools.is_empty()),
    };
    if either && !on_queue && s.dispatch.spools.is_empty() {
        // the error `run` gives, naming both ways out
        let e = s
            .dispatch
            .clone()
            .resolve()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no spool configured".into());
        anyhow::bail!(
            "invalid configuration: {e}: give --spool DIR (or `spools` in the file, or \
             QMAIL_SPOOL), or --queue URL (or [queue] url in the file) for a PostgreSQL queue"
        );
    }
    let queue = |what: &str| -> Result<qmail_dispatch::queue::postgres::PgQueue> {
        let q = s
            .queue
            .as_ref()
            .with_context(|| format!("{what} --queue: no queue configured"))?;
        pg_run::connect_admin(q, &s)
    };
    match cli.command {
        Command::Run if serve_queue => pg_run::run(&o, s),
        Command::Drain { json } if serve_queue => pg_run::drain(s, json),
        Command::CheckConfig if on_queue => check_config_queue(&s),
        Command::Status { json } if on_queue => {
            forward::status(s.queue.as_ref().context("queue")?, json)
        }
        Command::Show { id, json } if on_queue => admin_cmd::show_queue(&queue("show")?, &id, json),
        Command::Retry { ids, json } if on_queue => {
            admin_cmd::requeue_or_retry_queue(&queue("retry")?, &ids, false, true, json)
        }
        Command::RequeueFailed { ids, all, json } if on_queue => {
            admin_cmd::requeue_or_retry_queue(&queue("requeue-failed")?, &ids, all, false, json)
        }
        Command::List {
            state,
            rcpt,
            from,
            older,
            limit,
            json,
        } if on_queue => admin_cmd::list_queue(
            &queue("list")?,
            &admin_cmd::ListArgs {
                state,
                rcpt,
                from,
                older,
                limit,
                json,
            },
        ),
        Command::Hold { ids, json } if on_queue => admin_cmd::id_action_queue(
            &queue("hold")?,
            admin_cmd::IdAction::Hold,
            &ids,
            None,
            false,
            json,
        ),
        Command::Release { ids, json } if on_queue => admin_cmd::id_action_queue(
            &queue("release")?,
            admin_cmd::IdAction::Release,
            &ids,
            None,
            false,
            json,
        ),
        Command::Delete {
            ids,
            state,
            all,
            json,
        } if on_queue => admin_cmd::id_action_queue(
            &queue("delete")?,
            admin_cmd::IdAction::Delete,
            &ids,
            state.as_deref(),
            all,
            json,
        ),
        Command::Cat { id, headers, json } if on_queue => {
            admin_cmd::cat_queue(&queue("cat")?, &id, headers, json)
        }
        Command::Summary { state, json } if on_queue => {
            admin_cmd::summary_queue(&queue("summary")?, state.as_deref(), json)
        }
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
                        ("hold", &st.held),
                    ] {
                        match c.oldest_age_secs {
                            Some(a) => println!(
                                "  {name:<10} {:>9}  oldest submitted {}",
                                c.count,
                                admin_cmd::human_time(qmail_core::spool::now_secs() - a)
                            ),
                            None => println!("  {name:<10} {:>9}", c.count),
                        }
                    }
                    println!(
                        "  {:<10} {:>9}  {} bytes",
                        "tmp", st.tmp_files, st.tmp_bytes
                    );
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
        Command::Retry { ids, json } => {
            admin_cmd::requeue_or_retry(&s.dispatch.spools, &ids, false, true, json, &admin_id)
        }
        Command::Spool { .. } | Command::GenerateAssets { .. } => Ok(ExitCode::SUCCESS),
        Command::RequeueFailed { ids, all, json } => {
            admin_cmd::requeue_or_retry(&s.dispatch.spools, &ids, all, false, json, &admin_id)
        }
        Command::List {
            state,
            rcpt,
            from,
            older,
            limit,
            json,
        } => admin_cmd::list(
            &s.dispatch.spools,
            &admin_cmd::ListArgs {
                state,
                rcpt,
                from,
                older,
                limit,
                json,
            },
        ),
        Command::Hold { ids, json } => {
            let a = admin_cmd::IdAction::Hold;
            admin_cmd::id_action(&s.dispatch.spools, a, &ids, None, false, json)
        }
        Command::Release { ids, json } => {
            let a = admin_cmd::IdAction::Release;
            admin_cmd::id_action(&s.dispatch.spools, a, &ids, None, false, json)
        }
        Command::Delete {
            ids,
            state,
            all,
            json,
        } => {
            let a = admin_cmd::IdAction::Delete;
            admin_cmd::id_action(&s.dispatch.spools, a, &ids, state.as_deref(), all, json)
        }
        Command::Cat { id, headers, json } => {
            admin_cmd::cat(&s.dispatch.spools, &id, headers, json)
        }
        Command::Summary { state, json } => {
            admin_cmd::summary(&s.dispatch.spools, state.as_deref(), json)
        }
        Command::Find {
            rcpt,
            message_id,
            log,
            json,
        } => admin_cmd::find(
            log.as_deref().or(s.dispatch.delivery_log.as_deref()),
            rcpt.as_deref(),
            message_id.as_deref(),
            json,
        ),
        Command::CheckConfig => {
            // every problem at once: the relays (TLS roots), then what check.rs looks at
            let mut findings: Vec<check::Finding> = s
                .dispatch
                .relays
                .iter()
                .filter_map(|r| RelayEndpoint::new(r.clone()).err())
                .map(|e| check::Finding::Error(e.to_string()))
                .collect();
            findings.extend(check::check(&s, true));
            if !check::report(&findings, "run") {
                return Ok(ExitCode::FAILURE);
            }
            // the keys were loaded (and checked) with the configuration; print what to publish
            let dkim = qmail_dispatch::dkim::Signer::load(&s.dispatch.dkim)?;
            for (name, txt) in dkim.dns_records() {
                println!("dkim {name} TXT \"{txt}\"");
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
    if let Some(c) = v.created {
        println!("submitted   {}", admin_cmd::human_time(c));
    }
    if let Some(t) = v.not_before {
        println!("not before  {}", admin_cmd::human_time(t));
    }
    if let (Some(p), Some(sz)) = (v.priority, v.size) {
        println!("priority    {p}   size {sz} bytes");
    }
    if let Some(st) = &v.dispatch {
        print_dispatch(st);
    }
}

/// The dispatcher state part of `show` (spools and the queue).
pub(crate) fn print_dispatch(st: &qmail_dispatch::state::MessageState) {
    {
        println!("attempts    {}", st.attempts);
        if st.next_due > 0 {
            println!("next due    {}", admin_cmd::human_time(st.next_due));
        }
        if let Some(r) = st.remaining.as_ref().filter(|r| !r.is_empty()) {
            println!("remaining   {}", r.join(", "));
        }
        let d = st.diagnosis();
        if !d.is_empty() {
            println!("diagnosis   {d}");
        }
        for a in &st.history {
            for r in &a.results {
                println!(
                    "  #{} at {} via {} in {} ms: <{}> {:?} {}",
                    a.number,
                    admin_cmd::human_time(a.at_ms.div_euclid(1000)),
                    a.relay,
                    a.duration_ms,
                    r.rcpt,
                    r.status,
                    r.reply
                );
            }
        }
    }
}

/// `check-config` for a dispatcher serving a PostgreSQL queue: what `run --queue` needs (a
/// relay, the log files and TLS files of check.rs, the metrics address) and the queue itself
/// (reachable, schema at this build's version). A spool is not needed.
fn check_config_queue(s: &settings::Settings) -> Result<ExitCode> {
    let mut findings: Vec<check::Finding> = match pg_run::resolved(s) {
        Ok(cfg) => cfg
            .relays
            .iter()
            .filter_map(|r| RelayEndpoint::new(r.clone()).err())
            .map(|e| check::Finding::Error(e.to_string()))
            .collect(),
        Err(e) => vec![check::Finding::Error(format!("invalid configuration: {e}"))],
    };
    // a queue dispatcher serves no spool
    findings.extend(check::check(s, false));
    findings.extend(pg_run::check(s));
    if !check::report(&findings, "run --queue") {
        return Ok(ExitCode::FAILURE);
    }
    let q = s.queue.as_ref().context("queue")?;
    println!(
        "configuration ok: queue {} (schema version {}), {} relay(s), {} worker(s)",
        q.schema,
        qmail_dispatch::queue::postgres::schema::SCHEMA_VERSION,
        s.dispatch.relays.len(),
        s.dispatch.workers
    );
    Ok(ExitCode::SUCCESS)
}

fn run(o: &Overrides, mut s: settings::Settings) -> Result<ExitCode> {
    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))?;
    let mut shown: Option<http::Shown> = None;
    // one set of counters for the life of the process: a reload keeps them (Dispatcher::reload)
    let metrics = Arc::new(qmail_dispatch::Metrics::default());
    let mut d = Dispatcher::with_metrics(s.dispatch.clone(), Arc::clone(&metrics))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    loop {
        service::ready(&format!("serving {} spool(s)", s.dispatch.spools.len()));
        tracing::info!(
            instance = d.instance(),
            spools = %s.dispatch.spools.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(","),
            relays = %s.dispatch.relays.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(","),
            workers = s.dispatch.workers,
            "qmail-dispatcher started"
        );
        let view = http::View {
            metrics: Arc::clone(&metrics),
            spools: s.dispatch.spools.clone(),
            queue: None,
            pending_queue: None,
            pending_error: None,
            delivery_log: s.dispatch.delivery_log.clone(),
            token: s.http_token.clone(),
            instance: format!("http-{}", d.instance()),
        };
        match (&shown, s.http) {
            (Some(sh), _) => *sh.lock().unwrap_or_else(|p| p.into_inner()) = view,
            (None, Some(addr)) => {
                let sh: http::Shown = Arc::new(std::sync::Mutex::new(view));
                http::serve(addr, Arc::clone(&sh))?;
                shown = Some(sh);
            }
            (None, None) => {}
        }
        // the engine stops on either flag; which one decides what follows
        let stop = Arc::new(AtomicBool::new(false));
        let relay_flags = {
            let (stop, term, hup) = (Arc::clone(&stop), Arc::clone(&term), Arc::clone(&hup));
            std::thread::spawn(move || {
                let mut watchdog = service::Watchdog::from_env();
                while !stop.load(Ordering::SeqCst) {
                    if term.load(Ordering::SeqCst) {
                        service::stopping();
                    } else if hup.load(Ordering::SeqCst) {
                        service::reloading();
                    }
                    if term.load(Ordering::SeqCst) || hup.load(Ordering::SeqCst) {
                        stop.store(true, Ordering::SeqCst);
                    }
                    watchdog.tick();
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let sum = d.run(&stop).map_err(|e| anyhow::anyhow!("{e}"))?;
        stop.store(true, Ordering::SeqCst);
        let _ = relay_flags.join();
        log_stopped(&sum);
        if term.load(Ordering::SeqCst) {
            return Ok(ExitCode::SUCCESS);
        }
        hup.store(false, Ordering::SeqCst);
        // the instance id and the lease stay: transactions still in flight keep their claims
        let next = settings::load(o).and_then(|new| {
            let nd = d
                .reload(new.dispatch.clone())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok((new, nd))
        });
        match next {
            Ok((new, nd)) => {
                tracing::info!(
                    instance = nd.instance(),
                    in_flight = d.in_flight(),
                    "SIGHUP: configuration reloaded; same instance and lease, transactions in flight finish under it"
                );
                s = new;
                d = nd;
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), instance = d.instance(),
                    "SIGHUP: the new configuration is invalid; serving on with the old one, same instance");
                // a stopped Dispatcher does not run again: the old configuration, rebuilt with
                // the same instance and lease
                d = d
                    .reload(s.dispatch.clone())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
    }
}

/// The one log line `run` ends with (directory spools or a PostgreSQL queue): what it did.
pub(crate) fn log_stopped(sum: &qmail_dispatch::Summary) {
    tracing::info!(
        delivered = sum.delivered,
        deferred = sum.deferred,
        failed = sum.failed,
        corrupt = sum.corrupt,
        "dispatcher stopped"
    );
}
