//! The operator's commands (`list`, `hold`, `release`, `delete`, `cat`, `summary`, `find`,
//! `requeue-failed`): argument checks, every configured spool, human or `--json` output.
//! The engine side is `qmail_dispatch::admin`.
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
    let now = now_secs();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<28} {:<9} {:>9} {:>12} {:>3} {:>4}  sender / recipients / last reply",
        "queue id", "state", "size", "age", "pri", "att"
    )?;
    for (_, e) in &all {
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
    let bytes: u64 = all.iter().filter_map(|(_, e)| e.size).sum();
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
    check_ids(ids)?;
    let bulk = match (action, state, all) {
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
    };
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
        for r in &results {
            match &r.outcome {
                ops::Outcome::Done { from, to } => {
                    n += 1;
                    match to {
                        Some(to) => println!("{} {verb} ({from}/ -> {to}/)", r.id),
                        None => println!("{} {verb} (was in {from}/)", r.id),
                    }
                }
                ops::Outcome::NotFound => eprintln!("qmail-dispatcher: {}: not found", r.id),
                ops::Outcome::InFlight => eprintln!(
                    "qmail-dispatcher: {}: in flight (active/): try again after the attempt",
                    r.id
                ),
                ops::Outcome::WrongState { dir } => {
                    eprintln!("qmail-dispatcher: {}: is in {dir}/, not {verb}", r.id)
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

/// `summary`: qshape.
pub fn summary(spools: &[PathBuf], state: Option<&str>, json: bool) -> Result<ExitCode> {
    let f = ListFilter {
        states: states(state)?,
        ..ListFilter::default()
    };
    let sp: Vec<&Path> = spools.iter().map(PathBuf::as_path).collect();
    let shape = ops::summary(&sp, &f)?;
    if json {
        json_line(&shape)?;
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

/// `requeue-failed ID... | --all` and `retry [ID...]` with `--json`.
pub fn requeue_or_retry(
    spools: &[PathBuf],
    ids: &[String],
    all: bool,
    retry: bool,
    json: bool,
    instance: &str,
) -> Result<ExitCode> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_for_people() {
        assert_eq!(relative(1000, 1000), "just now");
        assert_eq!(relative(1180, 1000), "in 3 min");
        assert_eq!(relative(1000, 1180), "3 min ago");
        assert_eq!(relative(0, 3 * 86400), "3 d ago");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
