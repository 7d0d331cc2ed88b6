//! The operator's commands over a directory spool, after Postfix's tools: `list` (mailq,
//! `postqueue -j`), `hold`/`release`/`delete` (`postsuper -h/-H/-d`), `cat` (`postcat -q`),
//! `summary` (qshape), `find` (grep over the maillog), and retention of `failed/` and
//! `corrupt/`.
//!
//! Every change is one `rename(2)` or `unlink(2)` of the spool file, which races safely with a
//! dispatcher's claim (itself one rename): whichever comes first wins and the other sees
//! `NotFound`. A message in `active/` (in flight) is never touched.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use serde::Serialize;

use qmail_core::spool::status::{self, ListEntry, ListFilter, LogRecord, State};
use qmail_core::spool::{QueueId, QueueState, SpoolFile, now_secs};

use crate::state::MessageState;

/// What happened to one id of a `hold`, `release` or `delete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// Done: moved from `from` to `to` (`None`: deleted).
    Done {
        /// The directory it was in.
        from: &'static str,
        /// The directory it is in now, `None` when deleted.
        to: Option<&'static str>,
    },
    /// In no directory of the spool.
    NotFound,
    /// In `active/`: a dispatcher is delivering it; try again after the attempt.
    InFlight,
    /// In a state the command does not apply to (e.g. `release` of a message not held).
    WrongState {
        /// The directory it is in.
        dir: &'static str,
    },
}

/// One id's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdOutcome {
    /// The queue id.
    pub id: String,
    /// What happened.
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl IdOutcome {
    /// True for [`Outcome::Done`].
    pub fn done(&self) -> bool {
        matches!(self.outcome, Outcome::Done { .. })
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

fn check_ids(ids: &[String]) -> io::Result<()> {
    for id in ids {
        QueueId::parse(id).map_err(|e| invalid(format_args!("{id:?}: {e}")))?;
    }
    Ok(())
}

fn move_one(
    spool: &Path,
    id: &str,
    allowed: &[QueueState],
    to: impl Fn(QueueState) -> QueueState,
) -> io::Result<Outcome> {
    let Some((dir, path, _)) = status::locate(spool, id) else {
        return Ok(Outcome::NotFound);
    };
    if dir == QueueState::Active {
        return Ok(Outcome::InFlight);
    }
    if !allowed.contains(&dir) {
        return Ok(Outcome::WrongState {
            dir: dir.dir_name(),
        });
    }
    let dst_state = to(dir);
    let dst_dir = spool.join(dst_state.dir_name());
    if !dst_dir.is_dir() {
        // a dispatcher-only directory (0700, the two-user layout of docs/spool-format.md)
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dst_dir)
            .or_else(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })?;
    }
    match fs::rename(&path, dst_dir.join(id)) {
        Ok(()) => {
            let _ = qmail_core::spool::sync_dir(&dst_dir);
            Ok(Outcome::Done {
                from: dir.dir_name(),
                to: Some(dst_state.dir_name()),
            })
        }
        // claimed (or moved) between the look and the rename
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Outcome::InFlight),
        Err(e) => Err(e),
    }
}

/// `hold ID...`: moves queued, scheduled and deferred messages into `hold/` (Postfix
/// `postsuper -h`). A held message is never claimed and never expires; its state file
/// (attempts, next due time) is kept for `release`.
///
/// # Errors
/// `InvalidInput` for an id that is not a queue id; I/O errors of the rename.
pub fn hold(spool: &Path, ids: &[String]) -> io::Result<Vec<IdOutcome>> {
    check_ids(ids)?;
    ids.iter()
        .map(|id| {
            let outcome = move_one(
                spool,
                id,
                &[
                    QueueState::Ready,
                    QueueState::Scheduled,
                    QueueState::Deferred,
                ],
                |_| QueueState::Held,
            )?;
            Ok(IdOutcome {
                id: id.clone(),
                outcome,
            })
        })
        .collect()
}

/// Where a released message goes: `deferred/` while its retry time is ahead, `scheduled/`
/// while its not-before time is, else `ready/`.
fn release_target(spool: &Path, id: &str) -> QueueState {
    let now = now_secs();
    if let Ok(Some(st)) = MessageState::load(spool, id)
        && st.next_due > now
    {
        return QueueState::Deferred;
    }
    let held = spool.join(QueueState::Held.dir_name()).join(id);
    if let Ok(f) = SpoolFile::open(&held)
        && f.header.not_before.is_some_and(|t| t > now)
    {
        return QueueState::Scheduled;
    }
    QueueState::Ready
}

/// `release ID...`: moves held messages back (Postfix `postsuper -H`): to `deferred/` when
/// their retry time is still ahead, `scheduled/` when their not-before time is, else `ready/`.
///
/// # Errors
/// As [`hold`].
pub fn release(spool: &Path, ids: &[String]) -> io::Result<Vec<IdOutcome>> {
    check_ids(ids)?;
    ids.iter()
        .map(|id| {
            let target = release_target(spool, id);
            let outcome = move_one(spool, id, &[QueueState::Held], |_| target)?;
            Ok(IdOutcome {
                id: id.clone(),
                outcome,
            })
        })
        .collect()
}

/// The states `delete` applies to (never `active/`).
pub const DELETABLE: [QueueState; 6] = [
    QueueState::Ready,
    QueueState::Scheduled,
    QueueState::Deferred,
    QueueState::Held,
    QueueState::Failed,
    QueueState::Corrupt,
];

fn delete_one(spool: &Path, id: &str, only: Option<QueueState>) -> io::Result<Outcome> {
    let Some((dir, path, _)) = status::locate(spool, id) else {
        return Ok(Outcome::NotFound);
    };
    if dir == QueueState::Active {
        return Ok(Outcome::InFlight);
    }
    if !DELETABLE.contains(&dir) || only.is_some_and(|o| o != dir) {
        return Ok(Outcome::WrongState {
            dir: dir.dir_name(),
        });
    }
    // one unlink: a dispatcher's claim (a rename) that came first makes it NotFound
    match fs::remove_file(&path) {
        Ok(()) => {
            MessageState::remove(spool, id)?;
            Ok(Outcome::Done {
                from: dir.dir_name(),
                to: None,
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Outcome::InFlight),
        Err(e) => Err(e),
    }
}

/// `delete ID...` (Postfix `postsuper -d`): removes the spool file and its state file of
/// messages in any state but `active/` (a message in flight is reported, never removed).
///
/// # Errors
/// As [`hold`].
pub fn delete(spool: &Path, ids: &[String]) -> io::Result<Vec<IdOutcome>> {
    check_ids(ids)?;
    ids.iter()
        .map(|id| {
            Ok(IdOutcome {
                id: id.clone(),
                outcome: delete_one(spool, id, None)?,
            })
        })
        .collect()
}

/// `delete --state S --all`: every message of one directory (`active` is refused).
///
/// # Errors
/// `InvalidInput` for `active/`; I/O errors.
pub fn delete_all(spool: &Path, dir: QueueState) -> io::Result<Vec<IdOutcome>> {
    if !DELETABLE.contains(&dir) {
        return Err(invalid(format_args!(
            "--state {}: messages in {}/ cannot be deleted (in flight or not yet submitted)",
            dir.dir_name(),
            dir.dir_name()
        )));
    }
    let ids: Vec<String> = match fs::read_dir(spool.join(dir.dir_name())) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| QueueId::parse(n).is_ok())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    ids.iter()
        .map(|id| {
            Ok(IdOutcome {
                id: id.clone(),
                outcome: delete_one(spool, id, Some(dir))?,
            })
        })
        .collect()
}

/// `list`: see [`status::list`].
///
/// # Errors
/// As [`status::list`].
pub fn list(spool: &Path, filter: &ListFilter) -> io::Result<Vec<ListEntry>> {
    status::list(spool, filter).map_err(|e| io::Error::other(e.to_string()))
}

/// `cat ID [--headers]` (Postfix `postcat -q`): the message as it goes on the wire (RFC 5322,
/// CRLF line ends, before dot-stuffing; a DKIM signature the dispatcher adds at send time is
/// not in it). With `headers_only`, the header section up to and including the empty line.
///
/// # Errors
/// `NotFound` when no state holds it; `InvalidData` when the spool file does not parse.
pub fn cat(spool: &Path, id: &str, headers_only: bool) -> io::Result<Vec<u8>> {
    QueueId::parse(id).map_err(|e| invalid(format_args!("{id:?}: {e}")))?;
    let (_, path, _) = status::locate(spool, id).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no message {id} in {}", spool.display()),
        )
    })?;
    let f = SpoolFile::open(&path)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let body = f
        .read_body()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    if headers_only {
        let end = body
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
            .unwrap_or(body.len());
        return Ok(body[..end].to_vec());
    }
    Ok(body)
}

/// qshape's age buckets, in minutes: a message `m` minutes old counts in the first bucket
/// whose bound is at least `m`; older than the last, in the last (`1280+`).
pub const AGE_BUCKETS_MIN: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// One row of [`summary`]: a recipient domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShapeRow {
    /// Recipient domain (lowercase), or `TOTAL`.
    pub domain: String,
    /// Recipients in all buckets.
    pub total: u64,
    /// Recipients per bucket: `AGE_BUCKETS_MIN.len() + 1` counts (the last: older than
    /// 1280 minutes).
    pub buckets: Vec<u64>,
}

/// `summary` (Postfix's qshape): recipients still to deliver, by recipient domain × age.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shape {
    /// Bucket upper bounds in minutes ([`AGE_BUCKETS_MIN`]; the last bucket has none).
    pub bucket_minutes: Vec<u64>,
    /// `TOTAL` first, then domains by total, largest first.
    pub rows: Vec<ShapeRow>,
}

/// The states [`summary`] counts when the filter names none: every message still to deliver.
pub const SUMMARY_STATES: [State; 5] = [
    State::Queued,
    State::Scheduled,
    State::Active,
    State::Deferred,
    State::Held,
];

/// Counts the recipients of the messages `filter` selects (default: every queued state:
/// queued, scheduled, active, deferred, held) by domain and age bucket.
///
/// # Errors
/// As [`list`].
pub fn summary(spools: &[&Path], filter: &ListFilter) -> io::Result<Shape> {
    let mut f = filter.clone();
    if f.states.is_empty() {
        f.states = SUMMARY_STATES.to_vec();
    }
    let mut entries = Vec::new();
    for sp in spools {
        entries.extend(list(sp, &f)?);
    }
    Ok(shape_of(entries, now_secs()))
}

/// qshape's table of `entries` at `now` (Unix seconds): recipients by domain
/// (lowercase) × age bucket ([`AGE_BUCKETS_MIN`], from each entry's submit time), `TOTAL`
/// first, then domains by total, largest first. Shared by [`summary`] and the PostgreSQL
/// queue's `summary` (`crate::queue::postgres::admin::summary`).
pub fn shape_of(entries: impl IntoIterator<Item = ListEntry>, now: i64) -> Shape {
    let n = AGE_BUCKETS_MIN.len() + 1;
    let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut total = vec![0u64; n];
    for e in entries {
        let mins = (now - e.created.unwrap_or(now)).max(0) as u64 / 60;
        let b = AGE_BUCKETS_MIN
            .iter()
            .position(|&m| mins <= m)
            .unwrap_or(n - 1);
        for r in &e.recipients {
            let d = r
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default();
            by.entry(d).or_insert_with(|| vec![0; n])[b] += 1;
            total[b] += 1;
        }
    }
    let mut rows: Vec<ShapeRow> = by
        .into_iter()
        .map(|(domain, buckets)| ShapeRow {
            domain,
            total: buckets.iter().sum(),
            buckets,
        })
        .collect();
    rows.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.domain.cmp(&b.domain)));
    rows.insert(
        0,
        ShapeRow {
            domain: "TOTAL".into(),
            total: total.iter().sum(),
            buckets: total,
        },
    );
    Shape {
        bucket_minutes: AGE_BUCKETS_MIN.to_vec(),
        rows,
    }
}

/// `find --rcpt ADDR / --message-id ID` over the delivery log: the attempts of messages
/// (including those already gone from the spool) to that recipient (case-insensitive;
/// `@domain` matches a domain) or with that Message-ID (with or without `<>`), oldest first.
///
/// # Errors
/// The log cannot be read.
pub fn find(
    log: &Path,
    rcpt: Option<&str>,
    message_id: Option<&str>,
) -> io::Result<Vec<LogRecord>> {
    let mid = message_id.map(|m| m.trim().trim_start_matches('<').trim_end_matches('>'));
    status::read_log(log, |r| {
        let rcpt_ok = rcpt.is_none_or(|p| {
            r.recipients.iter().any(|a| {
                if let Some(d) = p.strip_prefix('@') {
                    a.rsplit_once('@')
                        .is_some_and(|(_, x)| x.eq_ignore_ascii_case(d))
                } else {
                    a.eq_ignore_ascii_case(p)
                }
            })
        });
        let mid_ok = mid.is_none_or(|m| {
            r.message_id
                .as_deref()
                .is_some_and(|x| x.trim_start_matches('<').trim_end_matches('>') == m)
        });
        rcpt_ok && mid_ok
    })
    .map_err(|e| io::Error::other(e.to_string()))
}

/// Retention (Postfix's `maximal_queue_lifetime` spirit for dead letters): removes files
/// of `failed/` older than `failed_secs` and of `corrupt/` older than `corrupt_secs` (0 =
/// keep forever), with their state files. Age is the file's change time, which the rename
/// into the directory set. Returns the ids removed.
pub fn purge_expired(spool: &Path, failed_secs: u64, corrupt_secs: u64) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let now = now_secs();
    let mut gone = Vec::new();
    for (dir, keep) in [
        (QueueState::Failed, failed_secs),
        (QueueState::Corrupt, corrupt_secs),
    ] {
        if keep == 0 {
            continue;
        }
        let Ok(rd) = fs::read_dir(spool.join(dir.dir_name())) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if QueueId::parse(&name).is_err() {
                continue;
            }
            if let Ok(m) = e.metadata()
                && now - m.ctime() > keep as i64
                && fs::remove_file(e.path()).is_ok()
            {
                let _ = MessageState::remove(spool, &name);
                tracing::info!(id = %name, dir = dir.dir_name(), "retention: removed");
                gone.push(name);
            }
        }
    }
    gone
}
