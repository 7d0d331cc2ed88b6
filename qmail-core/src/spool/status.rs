//! A read-only view of where a message is: the one implementation behind `qmail-dispatcher
//! list`, the console, `qmail.Spool(path).status(id)` (Python), `qmail.status(id, {spool})`
//! (Node) and `qmail_message_state` (C).
//!
//! It reads the spool's directory names, the spool file header and the dispatcher's sidecar
//! `state/ID.json` (only the fields named below, with `serde_json`; the dispatcher owns the
//! file's full shape in `qmail_dispatch::state`). It never writes, renames or locks anything,
//! so it may run beside dispatchers: a message moving while it looks is seen in one state or
//! the next (each move is one `rename(2)`), or, between two directory reads, as
//! [`State::Unknown`].
//!
//! Every byte read here is untrusted: a state file that does not parse is treated as absent,
//! a spool file that does not parse is reported with its error, nothing panics.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{QueueId, QueueState, SpoolFile, now_secs};
use crate::error::{Error, ErrorKind, Result};

/// Directory of delivered messages kept by the dispatcher's `sent_retention_secs`.
pub const SENT_DIR: &str = "sent";
/// Directory of the dispatcher's per-message state files.
pub const STATE_DIR: &str = "state";
/// Separator between the queue id and the owner in `active/ID+INSTANCE`.
pub const OWNER_SEP: char = '+';

/// Where a message is, as an application asks it ("did it go out, and if not, why?").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// In `ready/`: waiting for a dispatcher.
    Queued,
    /// In `scheduled/`: held until its not-before time.
    Scheduled,
    /// In `active/`: a dispatcher is delivering it now.
    Active,
    /// In `deferred/`: a temporary failure; retried at `next_attempt`.
    Deferred,
    /// In `hold/`: put on hold by an operator.
    Held,
    /// In `failed/` (a permanent failure or the queue lifetime exceeded) or `corrupt/`.
    Failed,
    /// Delivered: in `sent/` (when the dispatcher keeps delivered messages) or recorded as
    /// delivered in the delivery log.
    Delivered,
    /// Not in the spool and not in the delivery log (never submitted here, deleted, or
    /// delivered with neither `sent/` nor a delivery log to tell).
    Unknown,
}

impl State {
    /// Every state, in lifecycle order.
    pub const ALL: [State; 8] = [
        State::Queued,
        State::Scheduled,
        State::Active,
        State::Deferred,
        State::Held,
        State::Failed,
        State::Delivered,
        State::Unknown,
    ];

    /// The lowercase name (`queued`, `deferred`, ...), as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Scheduled => "scheduled",
            State::Active => "active",
            State::Deferred => "deferred",
            State::Held => "held",
            State::Failed => "failed",
            State::Delivered => "delivered",
            State::Unknown => "unknown",
        }
    }

    /// Parses [`State::as_str`]'s names (also the directory names `ready`, `hold`, `corrupt`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming `state`.
    pub fn parse(s: &str) -> Result<State> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "queued" | "ready" => State::Queued,
            "scheduled" => State::Scheduled,
            "active" => State::Active,
            "deferred" => State::Deferred,
            "held" | "hold" => State::Held,
            "failed" | "corrupt" => State::Failed,
            "delivered" | "sent" => State::Delivered,
            "unknown" => State::Unknown,
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "state {s:?} is not queued, scheduled, active, deferred, held, failed, \
                         delivered or unknown"
                    ),
                )
                .with_field("state"));
            }
        })
    }

    /// The state of a message whose file is in `dir` (`tmp/` has none: not yet submitted).
    pub fn of_dir(dir: QueueState) -> Option<State> {
        Some(match dir {
            QueueState::Tmp => return None,
            QueueState::Ready => State::Queued,
            QueueState::Scheduled => State::Scheduled,
            QueueState::Active => State::Active,
            QueueState::Deferred => State::Deferred,
            QueueState::Failed | QueueState::Corrupt => State::Failed,
            QueueState::Held => State::Held,
        })
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to "where is message ID?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageStatus {
    /// The queue id asked about.
    pub id: String,
    /// Where it is.
    pub state: State,
    /// The directory its file is in (`ready`, `hold`, `corrupt`, `sent`, ...), when found.
    pub dir: Option<String>,
    /// Delivery attempts made so far (0 before the first, or when no state file exists).
    pub attempts: u32,
    /// When the next attempt is due, Unix seconds: the retry time of a deferred message, the
    /// not-before time of a scheduled one.
    pub next_attempt: Option<i64>,
    /// The last reply seen (`"451 4.7.1 try later"`, or a local reason such as
    /// `"connection refused"`).
    pub last_reply: Option<String>,
    /// Why it failed (failed and corrupt messages): the message-level reason, then one
    /// `<rcpt>: reply` per failed recipient.
    pub reasons: Vec<String>,
    /// When it was delivered, Unix seconds (from `sent/`'s file time or the delivery log).
    pub delivered_at: Option<i64>,
    /// The dispatcher instance delivering it (active messages).
    pub owner: Option<String>,
}

impl MessageStatus {
    fn new(id: &str, state: State) -> MessageStatus {
        MessageStatus {
            id: id.to_owned(),
            state,
            dir: None,
            attempts: 0,
            next_attempt: None,
            last_reply: None,
            reasons: Vec::new(),
            delivered_at: None,
            owner: None,
        }
    }
}

// The parts of the dispatcher's `state/ID.json` this view needs (unknown fields are ignored,
// missing ones default): see `qmail_dispatch::state::MessageState`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SideReply {
    code: Option<u16>,
    text: String,
}

impl SideReply {
    fn line(&self) -> String {
        match self.code {
            Some(c) => format!("{c} {}", self.text),
            None => self.text.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SideRcptResult {
    rcpt: String,
    status: String,
    reply: SideReply,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SideAttempt {
    at_ms: i64,
    results: Vec<SideRcptResult>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SideFailed {
    rcpt: String,
    reply: SideReply,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Sidecar {
    attempts: u32,
    next_due: i64,
    remaining: Option<Vec<String>>,
    failed: Vec<SideFailed>,
    reason: Option<String>,
    history: Vec<SideAttempt>,
}

fn sidecar(spool: &Path, id: &str) -> Option<Sidecar> {
    let b = fs::read(spool.join(STATE_DIR).join(format!("{id}.json"))).ok()?;
    serde_json::from_slice(&b).ok()
}

impl Sidecar {
    fn last_reply(&self) -> Option<String> {
        let a = self.history.last()?;
        // the deciding reply: a deferred recipient's when any, else the last one
        a.results
            .iter()
            .find(|r| r.status == "deferred")
            .or(a.results.last())
            .map(|r| r.reply.line())
    }

    fn reasons(&self) -> Vec<String> {
        let mut v: Vec<String> = self.reason.iter().cloned().collect();
        v.extend(
            self.failed
                .iter()
                .map(|f| format!("<{}>: {}", f.rcpt, f.reply.line())),
        );
        v
    }
}

fn check_id(id: &str) -> Result<()> {
    // ids become file names: nothing else (no "/", no "..") is looked up
    QueueId::parse(id).map(|_| ())
}

/// Where the file of `id` is, if anywhere in the spool: its directory and, for `active/`,
/// the claiming instance.
pub fn locate(spool: &Path, id: &str) -> Option<(QueueState, PathBuf, Option<String>)> {
    if check_id(id).is_err() {
        return None;
    }
    for st in [
        QueueState::Ready,
        QueueState::Scheduled,
        QueueState::Deferred,
        QueueState::Held,
        QueueState::Failed,
        QueueState::Corrupt,
    ] {
        let p = spool.join(st.dir_name()).join(id);
        if p.is_file() {
            return Some((st, p, None));
        }
    }
    let rd = fs::read_dir(spool.join(QueueState::Active.dir_name())).ok()?;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((i, owner)) = name.split_once(OWNER_SEP)
            && i == id
        {
            return Some((QueueState::Active, e.path(), Some(owner.to_owned())));
        }
    }
    None
}

/// One delivery-log record's parts this view reads (the dispatcher writes one JSON line per
/// attempt: `ts_ms`, `id`, `message_id`, `recipients`, `results`, ...).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct LogRecord {
    /// Start of the attempt, Unix milliseconds.
    pub ts_ms: i64,
    /// Queue id.
    pub id: String,
    /// The Message-ID header value, when the dispatcher recorded it.
    pub message_id: Option<String>,
    /// Attempt number.
    pub attempt: u32,
    /// Relay name, `outbox` or `local`.
    pub relay: String,
    /// Recipients tried.
    pub recipients: Vec<String>,
    /// Reply code of the last result.
    pub code: Option<u16>,
    /// Reply text of the last result.
    pub reply: String,
    /// Whether every recipient of this attempt was accepted.
    #[serde(skip_deserializing)]
    pub all_delivered: bool,
    /// Per-recipient statuses of the attempt (`delivered`, `deferred`, `failed`).
    #[serde(skip_serializing)]
    results: Vec<LogResult>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
struct LogResult {
    status: String,
}

/// Reads a delivery log and returns the records `keep` accepts, oldest first. Lines that are
/// not JSON records (truncated by a crash, foreign) are skipped.
///
/// # Errors
/// [`ErrorKind::Io`] naming `delivery_log` when the file cannot be read.
pub fn read_log(path: &Path, mut keep: impl FnMut(&LogRecord) -> bool) -> Result<Vec<LogRecord>> {
    let f = fs::File::open(path).map_err(|e| {
        Error::io(
            ErrorKind::Io,
            format_args!("cannot read the delivery log {}", path.display()),
            e,
        )
        .with_field("delivery_log")
    })?;
    let mut out = Vec::new();
    for line in BufReader::new(f).split(b'\n') {
        let Ok(line) = line else { break };
        let Ok(mut r) = serde_json::from_slice::<LogRecord>(&line) else {
            continue;
        };
        r.all_delivered =
            !r.results.is_empty() && r.results.iter().all(|x| x.status == "delivered");
        if keep(&r) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Where message `id` is: the spool's directories first, then `sent/`, then (when given) the
/// delivery log. See [`State`] for each answer.
///
/// # Errors
/// [`ErrorKind::InvalidArgument`] naming `queue_id` when `id` is not a queue id;
/// [`ErrorKind::SpoolUnavailable`] naming `spool` when the spool directory cannot be read.
/// A delivery log that cannot be read is not an error (the answer is then `unknown`).
pub fn status(spool: &Path, id: &str, delivery_log: Option<&Path>) -> Result<MessageStatus> {
    check_id(id).map_err(|e| e.with_field("queue_id"))?;
    if !spool.is_dir() {
        return Err(Error::new(
            ErrorKind::SpoolUnavailable,
            format!("{} is not a readable spool directory", spool.display()),
        )
        .with_field("spool"));
    }
    if let Some((dir, path, owner)) = locate(spool, id) {
        let state = State::of_dir(dir).unwrap_or(State::Unknown);
        let mut s = MessageStatus::new(id, state);
        s.dir = Some(dir.dir_name().to_owned());
        s.owner = owner;
        let side = sidecar(spool, id).unwrap_or_default();
        s.attempts = side.attempts;
        s.last_reply = side.last_reply();
        match state {
            State::Deferred | State::Held if side.next_due > 0 => {
                s.next_attempt = Some(side.next_due)
            }
            State::Scheduled => {
                s.next_attempt = SpoolFile::open(&path)
                    .ok()
                    .and_then(|f| f.header.not_before)
            }
            _ => {}
        }
        if state == State::Failed {
            s.reasons = side.reasons();
            if s.reasons.is_empty() && dir == QueueState::Corrupt {
                if let Err(e) = SpoolFile::open(&path) {
                    s.reasons.push(format!("corrupt: {e}"));
                } else {
                    s.reasons.push("corrupt".into());
                }
            }
        }
        return Ok(s);
    }
    let sent = spool.join(SENT_DIR).join(id);
    if let Ok(m) = fs::metadata(&sent) {
        use std::os::unix::fs::MetadataExt;
        let mut s = MessageStatus::new(id, State::Delivered);
        s.dir = Some(SENT_DIR.to_owned());
        s.delivered_at = Some(m.ctime());
        return Ok(s);
    }
    if let Some(log) = delivery_log
        && let Ok(recs) = read_log(log, |r| r.id == id)
        && let Some(last) = recs.last()
    {
        let mut s = MessageStatus::new(id, State::Unknown);
        s.attempts = last.attempt;
        s.last_reply = Some(match last.code {
            Some(c) => format!("{c} {}", last.reply),
            None => last.reply.clone(),
        });
        if last.all_delivered || recs.iter().any(|r| r.all_delivered) {
            s.state = State::Delivered;
            s.delivered_at = Some(last.ts_ms.div_euclid(1000));
        }
        return Ok(s);
    }
    Ok(MessageStatus::new(id, State::Unknown))
}

/// Which messages [`list`] returns (every filter that is set must match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only these states (empty: every state in the spool: queued, scheduled, active,
    /// deferred, held, failed).
    pub states: Vec<State>,
    /// Only messages with this envelope recipient (case-insensitive; `@domain` matches the
    /// domain).
    pub rcpt: Option<String>,
    /// Only messages with this envelope sender (case-insensitive; `@domain` as for `rcpt`).
    pub from: Option<String>,
    /// Only messages older than this many seconds (from their submit time).
    pub older_secs: Option<i64>,
    /// At most this many (oldest first).
    pub limit: Option<usize>,
}

/// One message in [`list`] (mailq's columns, `postqueue -j`'s fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListEntry {
    /// Queue id.
    pub id: String,
    /// Its state.
    pub state: State,
    /// Its directory (`ready`, `hold`, `corrupt`, ...).
    pub dir: String,
    /// Message size in bytes (the RFC 5322 message, as it goes on the wire before
    /// dot-stuffing); `None` when the file cannot be read.
    pub size: Option<u64>,
    /// Submitted at, Unix seconds.
    pub created: Option<i64>,
    /// 1 (highest) ..= 5 (lowest).
    pub priority: Option<u8>,
    /// Envelope sender (MAIL FROM).
    pub sender: Option<String>,
    /// Envelope recipients (RCPT TO): those still to do when the dispatcher has a list.
    pub recipients: Vec<String>,
    /// The Message-ID header value.
    pub message_id: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// Next attempt (deferred: retry time; scheduled: not-before), Unix seconds.
    pub next_attempt: Option<i64>,
    /// The last reply (deferral reason).
    pub last_reply: Option<String>,
    /// Failure reasons (failed messages).
    pub reasons: Vec<String>,
    /// The claiming dispatcher (active messages).
    pub owner: Option<String>,
    /// Why the spool file cannot be read, if it cannot.
    pub error: Option<String>,
}

fn addr_matches(pattern: &str, addr: &str) -> bool {
    if pattern.starts_with('@') {
        addr.rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(&pattern[1..]))
    } else {
        addr.eq_ignore_ascii_case(pattern)
    }
}

/// The directories of a state.
fn dirs_of(state: State) -> &'static [QueueState] {
    match state {
        State::Queued => &[QueueState::Ready],
        State::Scheduled => &[QueueState::Scheduled],
        State::Active => &[QueueState::Active],
        State::Deferred => &[QueueState::Deferred],
        State::Held => &[QueueState::Held],
        State::Failed => &[QueueState::Failed, QueueState::Corrupt],
        State::Delivered | State::Unknown => &[],
    }
}

/// The entry of one file (`path` in `dir`), read-only.
pub fn entry(
    spool: &Path,
    dir: QueueState,
    id: &str,
    path: &Path,
    owner: Option<String>,
) -> ListEntry {
    let state = State::of_dir(dir).unwrap_or(State::Unknown);
    let side = sidecar(spool, id).unwrap_or_default();
    let mut e = ListEntry {
        id: id.to_owned(),
        state,
        dir: dir.dir_name().to_owned(),
        size: None,
        created: QueueId::parse(id).ok().and_then(|q| q.created_secs()),
        priority: None,
        sender: None,
        recipients: Vec::new(),
        message_id: None,
        attempts: side.attempts,
        next_attempt: (side.next_due > 0 && matches!(state, State::Deferred | State::Held))
            .then_some(side.next_due),
        last_reply: side.last_reply(),
        reasons: if state == State::Failed {
            side.reasons()
        } else {
            Vec::new()
        },
        owner,
        error: None,
    };
    match SpoolFile::open(path) {
        Ok(f) => {
            e.size = Some(f.body_len);
            e.created = Some(f.header.created);
            e.priority = Some(f.header.priority);
            e.sender = Some(f.header.envelope.mail_from.clone());
            e.recipients = match side.remaining {
                Some(r) if !r.is_empty() && state != State::Failed => r,
                _ => f.header.envelope.rcpt_to.clone(),
            };
            e.message_id = Some(f.header.message_id.clone());
            if state == State::Scheduled {
                e.next_attempt = f.header.not_before;
            }
        }
        Err(err) => e.error = Some(err.to_string()),
    }
    e
}

/// The messages of a spool that `filter` accepts, oldest first (by the submit time in the
/// queue id, then id). Lists the directories, then opens spool file headers (not the
/// messages) and state files oldest first, only until `limit` entries passed the filters.
///
/// # Errors
/// [`ErrorKind::SpoolUnavailable`] naming `spool` when the spool directory cannot be read.
pub fn list(spool: &Path, filter: &ListFilter) -> Result<Vec<ListEntry>> {
    if !spool.is_dir() {
        return Err(Error::new(
            ErrorKind::SpoolUnavailable,
            format!("{} is not a readable spool directory", spool.display()),
        )
        .with_field("spool"));
    }
    let states: Vec<State> = if filter.states.is_empty() {
        State::ALL.to_vec()
    } else {
        filter.states.clone()
    };
    let now = now_secs();
    // names first (no file opened), oldest first by the time in the queue id; then each file
    // is opened only until `limit` entries passed the filters
    let mut names: Vec<(i64, String, QueueState, PathBuf, Option<String>)> = Vec::new();
    for st in states {
        for &dir in dirs_of(st) {
            let Ok(rd) = fs::read_dir(spool.join(dir.dir_name())) else {
                continue;
            };
            for de in rd.flatten() {
                let name = de.file_name();
                let Some(name) = name.to_str() else { continue };
                let (id, owner) = match name.split_once(OWNER_SEP) {
                    Some((i, o)) if dir == QueueState::Active => (i, Some(o.to_owned())),
                    _ => (name, None),
                };
                let Ok(q) = QueueId::parse(id) else { continue };
                let t = q.created_secs().unwrap_or(i64::MAX);
                if filter.older_secs.is_some_and(|o| now - t < o) {
                    continue;
                }
                names.push((t, id.to_owned(), dir, de.path(), owner));
            }
        }
    }
    names.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut out = Vec::new();
    for (_, id, dir, path, owner) in names {
        if filter.limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let e = entry(spool, dir, &id, &path, owner);
        if let Some(p) = &filter.rcpt
            && !e.recipients.iter().any(|r| addr_matches(p, r))
        {
            continue;
        }
        if let Some(p) = &filter.from
            && !e.sender.as_deref().is_some_and(|s| addr_matches(p, s))
        {
            continue;
        }
        if let (Some(o), Some(c)) = (filter.older_secs, e.created)
            && now - c < o
        {
            continue;
        }
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()).unwrap(), s);
        }
        assert_eq!(State::parse("HOLD").unwrap(), State::Held);
        assert!(State::parse("lost").is_err());
    }

    #[test]
    fn unknown_ids_are_refused_and_missing_ones_unknown() {
        let d = tempfile::tempdir().unwrap();
        assert!(status(d.path(), "../etc/passwd", None).is_err());
        assert!(locate(d.path(), "../x").is_none());
    }

    #[test]
    fn patterns() {
        assert!(addr_matches("@Example.org", "a@example.ORG"));
        assert!(addr_matches("A@example.org", "a@EXAMPLE.org"));
        assert!(!addr_matches("@example.org", "a@sub.example.org"));
    }
}
