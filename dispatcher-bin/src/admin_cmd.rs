//! The operator's commands (`list`, `hold`, `release`, `delete`, `cat`, `summary`, `find`,
//! `show`, `retry`, `requeue-failed`): argument checks, every configured spool or the
//! PostgreSQL queue (`--queue URL`, `[queue] url`), human or `--json` output in the same
//! shapes for both. The engine side is `qmail_dispatch::admin` (spools) and
//! `qmail_dispatch::queue::postgres::admin` (the queue).
//!
//! Human output shows times as RFC 3339 plus a relative age ("2026-12-01T21:40:00Z, 3 min
//! ago"); JSON carries the raw values (Unix seconds, bytes).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use qmail_core::QueueState;
use qmail_core::spool::now_secs;
use qmail_core::spool::status::{ListEntry, ListFilter, State};
use qmail_dispatch::admin::{self, ops};
use qmail_dispatch::queue::postgres::PgQueue;
use qmail_dispatch::queue::postgres::admin as pg;

/// "3 min ago", "in 2 h", "just now".
pub fn relative(secs: i64, now: i64) -> String {
    let d = now - secs;
    let a = d.unsigned_abs();
    let amount = match a {
        0..=9 => return "just now".into(),
        10..=119 => format!("{a} s"),
        120..=7199 => format!("{} min", a / 60),
        7200..=172_799 => format!("{} h", a / 3600),
        _ => format!("{} d", a / 86400),
    };
    if d >= 0 {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// RFC 3339 in UTC, seconds precision (`2026-12-01T21:40:00Z`).
pub fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| format!("@{secs}"))
}

/// A time for people: RFC 3339 and how long ago (or ahead) it is.
pub fn human_time(secs: i64) -> String {
    format!("{} ({})", rfc3339(secs), relative(secs, now_secs()))
}

/// Parses `--state` for `list`/`summary` (queued/ready, scheduled, active, deferred,
/// held/hold, failed/corrupt, comma-separated).
fn states(s: Option<&str>) -> Result<Vec<State>> {
    let Some(s) = s else { return Ok(Vec::new()) };
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| State::parse(x.trim()).map_err(|e| anyhow::anyhow!("--state: {e}")))
        .collect()
}

/// Parses a directory name for `delete --state`.
fn dir_state(s: &str) -> Result<QueueState> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "ready" | "queued" => QueueState::Ready,
        "scheduled" => QueueState::Scheduled,
        "deferred" => QueueState::Deferred,
        "hold" | "held" => QueueState::Held,
        "failed" => QueueState::Failed,
        "corrupt" => QueueState::Corrupt,
        "active" => bail!("--state active: messages in flight are never deleted"),
        _ => bail!("--state {s:?} is not ready, scheduled, deferred, hold, failed or corrupt"),
    })
}

fn check_ids(ids: &[String]) -> Result<()> {
    for id in ids {
        qmail_core::QueueId::parse(id).map_err(|e| anyhow::anyhow!("{id:?}: {e}"))?;
    }
    Ok(())
}

fn json_line(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Arguments of `list`.
#[derive(Debug, Clone, Default)]
pub struct ListArgs {
    /// `--state`.
    pub state: Option<String>,
    /// `--rcpt`.
    pub rcpt: Option<String>,
    /// `--from`.
    pub from: Option<String>,
    /// `--older SECS`.
    pub older: Option<i64>,
    /// `--limit N`.
    pub limit: Option<usize>,
    /// `--json`.
    pub json: bool,
}

fn filter(a: &ListArgs) -> Result<ListFilter> {
    if a.older.is_some_and(|o| o < 0) {
        bail!("--older must be a number of seconds, 0 or more");
    }
    Ok(ListFilter {
        states: states(a.state.as_deref())?,
        rcpt: a.rcpt.clone(),
        from: a.from.clone(),
        older_secs: a.older,
        limit: a.limit,
    })
}

/// `list`: mailq for every spool.
pub fn list(spools: &[PathBuf], a: &ListArgs) -> Result<ExitCode> {
    let f = filter(a)?;
    let mut all: Vec<(PathBuf, ListEntry)> = Vec::new();
    for sp in spools {
        for e in ops::list(sp, &f).with_context(|| format!("in {}", sp.display()))? {
            all.push((sp.clone(), e));
        }
    }
    if a.json {
        #[derive(serde::Serialize)]
        struct Row<'a> {
            spool: &'a Path,
            #[serde(flatten)]
            e: &'a ListEntry,
        }
        let rows: Vec<Row<'_>> = all.iter().map(|(s, e)| Row { spool: s, e }).collect();
        json_line(&serde_json::json!({ "messages": rows }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let entries: Vec<ListEntry> = all.into_iter().map(|(_, e)| e).collect();
    print_list(&entries)
}

/// `list --queue`: mailq over the PostgreSQL queue; the JSON rows carry `queue` (the
/// schema) where a spool's carry `spool`.
pub fn list_queue(q: &PgQueue, a: &ListArgs) -> Result<ExitCode> {
    let f = filter(a)?;
    let all = pg::list(q, &f).map_err(pg_err)?;
    if a.json {
        #[derive(serde::Serialize)]
        struct Row<'a> {
            queue: &'a str,
            #[serde(flatten)]
            e: &'a ListEntry,
        }
        let rows: Vec<Row<'_>> = all
            .iter()
            .map(|e| Row {
                queue: q.schema(),
                e,
            })
            .collect();
        json_line(&serde_json::json!({ "messages": rows }))?;
        return Ok(ExitCode::SUCCESS);
    }
    print_list(&all)
}

/// An error of the queue's commands as the operator reads it.
pub fn pg_err(e: pg::PgAdminError) -> anyhow::Error {
    match e {
        pg::PgAdminError::Queue(e) => crate::pg_run::qerr(e),
        e => anyhow::anyhow!("{e}"),
    }
}

fn print_list(all: &[ListEntry]) -> Result<ExitCode> {
    let now = now_secs();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<28} {:<9} {:>9} {:>12} {:>3} {:>4}  sender / recipients / last reply",
        "queue id", "state", "size", "age", "pri", "att"
    )?;
    for e in all {
        let age = e
            .created
            .map(|c| relative(c, now))
            .unwrap_or_else(|| "?".into());
        writeln!(
            out,
            "{:<28} {:<9} {:>9} {:>12} {:>3} {:>4}  <{}>",
            e.id,
            e.state.as_str(),
            e.size.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
            age,
            e.priority.map(|p| p.to_string()).unwrap_or_default(),
            e.attempts,
            e.sender.as_deref().unwrap_or("?"),
        )?;
        for r in &e.recipients {
            writeln!(out, "{:>72}<{r}>", "")?;
        }
        if let Some(c) = e.created {
            writeln!(out, "{:>72}submitted {}", "", human_time(c))?;
        }
        if let Some(t) = e.next_attempt {
            writeln!(out, "{:>72}next attempt {}", "", human_time(t))?;
        }
        if let Some(r) = &e.last_reply {
            writeln!(out, "{:>72}({r})", "")?;
        }
        for r in &e.reasons {
            writeln!(out, "{:>72}failed: {r}", "")?;
        }
        if let Some(err) = &e.error {
            writeln!(out, "{:>72}unreadable: {err}", "")?;
        }
    }
    let bytes: u64 = all.iter().filter_map(|e| e.size).sum();
    writeln!(
        out,
        "-- {} KiB in {} message(s)",
        bytes.div_ceil(1024),
        all.len()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Which id command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdAction {
    /// `hold`.
    Hold,
    /// `release`.
    Release,
    /// `delete`.
    Delete,
}

/// `hold ID...`, `release ID...`, `delete ID...` / `delete --state S --all`.
pub fn id_action(
    spools: &[PathBuf],
    action: IdAction,
    ids: &[String],
    state: Option<&str>,
    all: bool,
    json: bool,
) -> Result<ExitCode> {
    let bulk = bulk_of(action, ids, state, all)?;
    let mut results: Vec<ops::IdOutcome> = Vec::new();
    for sp in spools {
        let r = match (action, bulk) {
            (IdAction::Delete, Some(dir)) => ops::delete_all(sp, dir),
            (IdAction::Hold, _) => ops::hold(sp, ids),
            (IdAction::Release, _) => ops::release(sp, ids),
            (IdAction::Delete, None) => ops::delete(sp, ids),
        }
        .with_context(|| format!("in {}", sp.display()))?;
        for o in r {
            // with several spools an id is found in one: keep its answer over the others'
            // NotFound
            match results.iter_mut().find(|x| x.id == o.id) {
                Some(x) if x.outcome == ops::Outcome::NotFound => *x = o,
                Some(_) => {}
                None => results.push(o),
            }
        }
    }
    print_outcomes(action, &results, json, "/")
}

/// The checks shared by spools and the queue: the ids, and `delete --state S --all`.
fn bulk_of(
    action: IdAction,
    ids: &[String],
    state: Option<&str>,
    all: bool,
) -> Result<Option<QueueState>> {
    check_ids(ids)?;
    Ok(match (action, state, all) {
        (IdAction::Delete, Some(s), true) => {
            if !ids.is_empty() {
                bail!("delete --state S --all takes no ids");
            }
            Some(dir_state(s)?)
        }
        (IdAction::Delete, _, true) => bail!("delete --all needs --state S (e.g. --state failed)"),
        (IdAction::Delete, Some(_), false) => {
            bail!("delete --state S deletes every message of a state: add --all to mean it")
        }
        _ if ids.is_empty() => bail!("give one or more queue ids"),
        _ => None,
    })
}

/// The row state of the queue for a `delete --state` directory.
fn row_state(d: QueueState) -> &'static str {
    match d {
        QueueState::Ready => "ready",
        QueueState::Scheduled => "scheduled",
        QueueState::Deferred => "deferred",
        QueueState::Held => "held",
        QueueState::Failed => "failed",
        QueueState::Corrupt => "corrupt",
        QueueState::Active => "active",
        QueueState::Tmp => "tmp",
    }
}

/// `hold`, `release`, `delete` over the PostgreSQL queue: one transaction per command.
pub fn id_action_queue(
    q: &PgQueue,
    action: IdAction,
    ids: &[String],
    state: Option<&str>,
    all: bool,
    json: bool,
) -> Result<ExitCode> {
    let bulk = bulk_of(action, ids, state, all)?;
    let results = match (action, bulk) {
        (IdAction::Delete, Some(dir)) => pg::delete_all(q, row_state(dir)),
        (IdAction::Hold, _) => pg::hold(q, ids),
        (IdAction::Release, _) => pg::release(q, ids),
        (IdAction::Delete, None) => pg::delete(q, ids),
    }
    .map_err(pg_err)?;
    print_outcomes(action, &results, json, "")
}

/// Prints the per-id results (`sep`: `/` after a spool's directory names, nothing after a
/// queue's states); exit 1 unless every id was done.
fn print_outcomes(
    action: IdAction,
    results: &[ops::IdOutcome],
    json: bool,
    sep: &str,
) -> Result<ExitCode> {
    let ok = results.iter().all(ops::IdOutcome::done);
    if json {
        json_line(&serde_json::json!({ "results": results }))?;
    } else {
        let verb = match action {
            IdAction::Hold => "held",
            IdAction::Release => "released",
            IdAction::Delete => "deleted",
        };
        let mut n = 0;
        for r in results {
            match &r.outcome {
                ops::Outcome::Done { from, to } => {
                    n += 1;
                    match to {
                        Some(to) => println!("{} {verb} ({from}{sep} -> {to}{sep})", r.id),
                        None => println!("{} {verb} (was in {from}{sep})", r.id),
                    }
                }
                ops::Outcome::NotFound => eprintln!("qmail-dispatcher: {}: not found", r.id),
                ops::Outcome::InFlight => eprintln!(
                    "qmail-dispatcher: {}: in flight (active{sep}): try again after the attempt",
                    r.id
                ),
                ops::Outcome::WrongState { dir } => {
                    eprintln!("qmail-dispatcher: {}: is in {dir}{sep}, not {verb}", r.id)
                }
            }
        }
        println!("{n} message(s) {verb}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `cat ID [--headers]`.
pub fn cat(spools: &[PathBuf], id: &str, headers: bool, json: bool) -> Result<ExitCode> {
    check_ids(&[id.to_owned()])?;
    for sp in spools {
        match ops::cat(sp, id, headers) {
            Ok(bytes) => {
                if json {
                    json_line(&serde_json::json!({
                        "id": id,
                        "spool": sp,
                        "size": bytes.len(),
                        "message": String::from_utf8_lossy(&bytes),
                    }))?;
                } else {
                    std::io::stdout().lock().write_all(&bytes)?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).context(format!("cat {id}")),
        }
    }
    eprintln!("qmail-dispatcher: no message {id} in any spool");
    Ok(ExitCode::FAILURE)
}

/// A JSON string written as it streams: the bytes are decoded as UTF-8 as
/// `String::from_utf8_lossy` would (an invalid sequence becomes U+FFFD; a sequence cut by a
/// write boundary waits for the next write) and escaped as `serde_json` does.
/// `prefix` (the JSON before the string) is written with the first byte, so nothing is
/// printed for a message that is not there.
struct JsonString<W: Write> {
    out: W,
    pending: Vec<u8>,
    prefix: Option<String>,
}

impl<W: Write> JsonString<W> {
    fn new(out: W, prefix: String) -> JsonString<W> {
        JsonString {
            out,
            pending: Vec::new(),
            prefix: Some(prefix),
        }
    }

    /// Writes the prefix if it was not yet.
    fn begin(&mut self) -> std::io::Result<()> {
        match self.prefix.take() {
            Some(p) => self.out.write_all(p.as_bytes()),
            None => Ok(()),
        }
    }

    fn put(&mut self, text: &str) -> std::io::Result<()> {
        self.begin()?;
        let quoted = serde_json::to_string(text).map_err(std::io::Error::other)?;
        self.out.write_all(&quoted.as_bytes()[1..quoted.len() - 1])
    }

    /// Decodes what is pending; keeps an incomplete sequence at the end unless `last`.
    fn drain(&mut self, last: bool) -> std::io::Result<()> {
        let buf = std::mem::take(&mut self.pending);
        let mut rest: &[u8] = &buf;
        loop {
            match std::str::from_utf8(rest) {
                Ok(t) => {
                    self.put(t)?;
                    return Ok(());
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    self.put(std::str::from_utf8(good).unwrap_or_default())?;
                    match e.error_len() {
                        Some(n) => {
                            self.put("\u{FFFD}")?;
                            rest = &bad[n..];
                        }
                        None if !last => {
                            self.pending = bad.to_vec();
                            return Ok(());
                        }
                        None => {
                            self.put("\u{FFFD}")?;
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

impl<W: Write> Write for JsonString<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        self.drain(false)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// `cat ID --queue [--headers]`: the message streamed from the queue to stdout (with
/// `--json`, streamed into the `message` string of the directory's shape, `queue` in place
/// of `spool`).
pub fn cat_queue(q: &PgQueue, id: &str, headers: bool, json: bool) -> Result<ExitCode> {
    check_ids(&[id.to_owned()])?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let r = if json {
        // the keys in serde_json's (sorted) order, as `json_line` prints the directory's
        let prefix = format!(
            "{{\n  \"id\": {},\n  \"message\": \"",
            serde_json::to_string(id)?
        );
        let mut js = JsonString::new(&mut out, prefix);
        let r = pg::cat(q, id, headers, &mut js);
        if matches!(r, Ok(pg::CatOutcome::Written { .. })) {
            js.drain(true)?;
            js.begin()?;
        }
        r
    } else {
        pg::cat(q, id, headers, &mut out)
    };
    match r.map_err(pg_err)? {
        pg::CatOutcome::Written { bytes } => {
            if json {
                writeln!(
                    out,
                    "\",\n  \"queue\": {},\n  \"size\": {bytes}\n}}",
                    serde_json::to_string(q.schema())?
                )?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        pg::CatOutcome::NotFound => {
            drop(out);
            eprintln!("qmail-dispatcher: no message {id} in queue {}", q.schema());
            Ok(ExitCode::FAILURE)
        }
        pg::CatOutcome::NoBody { state } => {
            drop(out);
            eprintln!(
                "qmail-dispatcher: {id} is {state} (a tombstone in queue {}): its body is gone",
                q.schema()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `summary`: qshape.
pub fn summary(spools: &[PathBuf], state: Option<&str>, json: bool) -> Result<ExitCode> {
    let f = ListFilter {
        states: states(state)?,
        ..ListFilter::default()
    };
    let sp: Vec<&Path> = spools.iter().map(PathBuf::as_path).collect();
    let shape = ops::summary(&sp, &f)?;
    print_shape(&shape, json)
}

/// `summary --queue`: qshape over the PostgreSQL queue.
pub fn summary_queue(q: &PgQueue, state: Option<&str>, json: bool) -> Result<ExitCode> {
    let f = ListFilter {
        states: states(state)?,
        ..ListFilter::default()
    };
    let shape = pg::summary(q, &f).map_err(pg_err)?;
    print_shape(&shape, json)
}

fn print_shape(shape: &ops::Shape, json: bool) -> Result<ExitCode> {
    if json {
        json_line(shape)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    write!(out, "{:>32} {:>6}", "", "T")?;
    for b in &shape.bucket_minutes {
        write!(out, " {b:>5}")?;
    }
    writeln!(
        out,
        " {:>5}+",
        shape.bucket_minutes.last().copied().unwrap_or(0)
    )?;
    for r in &shape.rows {
        write!(out, "{:>32} {:>6}", r.domain, r.total)?;
        for c in &r.buckets {
            write!(out, " {c:>5}")?;
        }
        writeln!(out)?;
    }
    writeln!(out, "(recipients by domain and age in minutes)")?;
    Ok(ExitCode::SUCCESS)
}

/// `find --rcpt ADDR / --message-id ID` over the delivery log.
pub fn find(
    log: Option<&Path>,
    rcpt: Option<&str>,
    message_id: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let Some(log) = log else {
        bail!("find reads the delivery log: set delivery_log in the configuration (or --log FILE)")
    };
    if rcpt.is_none() && message_id.is_none() {
        bail!("find needs --rcpt ADDR or --message-id ID");
    }
    let recs = ops::find(log, rcpt, message_id)
        .with_context(|| format!("cannot read the delivery log {}", log.display()))?;
    if json {
        json_line(&serde_json::json!({ "attempts": recs }))?;
    } else {
        for r in &recs {
            println!(
                "{} {} attempt {} via {} {}: {}{}",
                human_time(r.ts_ms.div_euclid(1000)),
                r.id,
                r.attempt,
                r.relay,
                if r.all_delivered {
                    "delivered"
                } else {
                    "not delivered"
                },
                r.code.map(|c| format!("{c} ")).unwrap_or_default(),
                r.reply
            );
            println!(
                "    to {}{}",
                r.recipients.join(", "),
                r.message_id
                    .as_deref()
                    .map(|m| format!("  message-id {m}"))
                    .unwrap_or_default()
            );
        }
        println!("{} attempt(s)", recs.len());
    }
    Ok(if recs.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The ids are queue ids, and `requeue-failed` has ids or `--all`, never both nor neither
/// (with no id it would requeue 5xx refusals too: that must be asked for).
fn check_requeue_args(ids: &[String], all: bool, retry: bool) -> Result<()> {
    check_ids(ids)?;
    if !retry {
        match (ids.is_empty(), all) {
            (true, false) => bail!(
                "requeue-failed needs queue ids, or --all to requeue every failed message \
                 (5xx refusals included)"
            ),
            (false, true) => bail!("requeue-failed takes ids or --all, not both"),
            _ => {}
        }
    }
    Ok(())
}

/// `requeue-failed ID... | --all` and `retry [ID...]` with `--json`.
pub fn requeue_or_retry(
    spools: &[PathBuf],
    ids: &[String],
    all: bool,
    retry: bool,
    json: bool,
    instance: &str,
) -> Result<ExitCode> {
    check_requeue_args(ids, all, retry)?;
    let what = if retry { "due now" } else { "requeued" };
    let mut moved: Vec<String> = Vec::new();
    for sp in spools {
        let mine: Vec<String> = ids
            .iter()
            .filter(|i| admin::locate(sp, i).is_some())
            .cloned()
            .collect();
        if !ids.is_empty() && mine.is_empty() {
            continue;
        }
        let r = if retry {
            admin::retry(sp, &mine, instance)
        } else {
            admin::requeue_failed(sp, &mine, instance)
        };
        moved.extend(r.with_context(|| format!("in {}", sp.display()))?);
    }
    let missing: Vec<&String> = ids.iter().filter(|i| !moved.contains(i)).collect();
    if json {
        json_line(&serde_json::json!({ "moved": moved, "not_moved": missing }))?;
    } else {
        for id in &moved {
            println!("{id} {what}");
        }
        println!("{} message(s) {what}", moved.len());
        for m in &missing {
            eprintln!("qmail-dispatcher: {m}: not found in the expected state");
        }
    }
    Ok(if missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `requeue-failed ID... | --all` and `retry [ID...]` over the PostgreSQL queue: one
/// transaction; the directory's JSON (`moved`, `not_moved`) plus `results`, one outcome per
/// id (why an id was not moved).
pub fn requeue_or_retry_queue(
    q: &PgQueue,
    ids: &[String],
    all: bool,
    retry: bool,
    json: bool,
) -> Result<ExitCode> {
    check_requeue_args(ids, all, retry)?;
    let what = if retry { "due now" } else { "requeued" };
    let results = if retry {
        pg::retry(q, ids)
    } else {
        pg::requeue_failed(q, ids)
    }
    .map_err(pg_err)?;
    let moved: Vec<&str> = results
        .iter()
        .filter(|r| r.done())
        .map(|r| r.id.as_str())
        .collect();
    let missing: Vec<&ops::IdOutcome> = results.iter().filter(|r| !r.done()).collect();
    if json {
        let not_moved: Vec<&str> = missing.iter().map(|r| r.id.as_str()).collect();
        json_line(&serde_json::json!({
            "moved": moved,
            "not_moved": not_moved,
            "results": results,
        }))?;
    } else {
        for id in &moved {
            println!("{id} {what}");
        }
        println!("{} message(s) {what}", moved.len());
        let want = if retry { "deferred" } else { "failed" };
        for m in &missing {
            match &m.outcome {
                ops::Outcome::NotFound => eprintln!("qmail-dispatcher: {}: not found", m.id),
                ops::Outcome::InFlight => eprintln!(
                    "qmail-dispatcher: {}: in flight (active): try again after the attempt",
                    m.id
                ),
                ops::Outcome::WrongState { dir } => {
                    eprintln!("qmail-dispatcher: {}: is {dir}, not {want}", m.id)
                }
                ops::Outcome::Done { .. } => {}
            }
        }
    }
    Ok(if missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `show ID --queue`.
pub fn show_queue(q: &PgQueue, id: &str, json: bool) -> Result<ExitCode> {
    check_ids(&[id.to_owned()])?;
    let Some(v) = pg::show(q, id).map_err(pg_err)? else {
        eprintln!("qmail-dispatcher: no message {id} in queue {}", q.schema());
        return Ok(ExitCode::FAILURE);
    };
    if json {
        json_line(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("id          {}", v.id);
    println!(
        "state       {}{}",
        v.state,
        v.owner
            .as_ref()
            .map(|o| format!(" (claimed by {o}, claim {})", v.claims))
            .unwrap_or_default()
    );
    println!("queue       {}", v.queue);
    if let Some(e) = &v.error {
        println!("error       {e}");
    }
    if let Some(r) = &v.reason {
        println!("reason      {r}");
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
        println!("submitted   {}", human_time(c));
    }
    if let Some(t) = v.not_before {
        println!("not before  {}", human_time(t));
    }
    if matches!(v.state.as_str(), "deferred" | "scheduled") {
        println!("due         {}", human_time(v.due));
    }
    if let Some(t) = v.settled_at {
        println!("settled     {}", human_time(t));
    }
    match (v.priority, v.size) {
        (Some(p), Some(sz)) => println!("priority    {p}   size {sz} bytes"),
        (Some(p), None) => println!("priority    {p}   body gone (tombstone)"),
        _ => {}
    }
    if let Some(st) = &v.dispatch {
        crate::print_dispatch(st);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_stream_across_utf8_boundaries() {
        let text = "é€ ok \"quoted\"\r\n\u{1F600}";
        let bytes = text.as_bytes();
        for split in 0..bytes.len() {
            let mut out = Vec::new();
            let mut js = JsonString::new(&mut out, String::new());
            js.write_all(&bytes[..split]).unwrap();
            js.write_all(&bytes[split..]).unwrap();
            js.drain(true).unwrap();
            let whole = serde_json::to_string(text).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                whole[1..whole.len() - 1],
                "split at {split}"
            );
        }
        let mut out = Vec::new();
        let mut js = JsonString::new(&mut out, String::new());
        js.write_all(b"a\xffb\xe2\x82").unwrap();
        js.drain(true).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a\u{FFFD}b\u{FFFD}");
    }

    #[test]
    fn times_for_people() {
        assert_eq!(relative(1000, 1000), "just now");
        assert_eq!(relative(1180, 1000), "in 3 min");
        assert_eq!(relative(1000, 1180), "3 min ago");
        assert_eq!(relative(0, 3 * 86400), "3 d ago");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
