//! Operations on a spool for people and scripts: `status`, `show`, `retry`,
//! `requeue-failed`, and the operator's commands in [`ops`] (`list`, `hold`, `release`,
//! `delete`, `cat`, `summary`, `find`, retention). They work while dispatchers run (every
//! change is one rename, after the state file is updated).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use qmail_core::spool::status;
use qmail_core::spool::{QueueId, QueueState, SpoolFile, now_secs};

pub mod ops;

use super::claim::split_claim_name;
use super::state::MessageState;

/// Counts of one state directory.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StateCount {
    /// Files in it.
    pub count: u64,
    /// Age in seconds of the oldest (from its queue id), if any.
    pub oldest_age_secs: Option<i64>,
}

/// `status` of one spool.
#[derive(Debug, Clone, Serialize)]
pub struct SpoolStatus {
    /// The spool directory.
    pub spool: PathBuf,
    /// `ready/`.
    pub ready: StateCount,
    /// `scheduled/`.
    pub scheduled: StateCount,
    /// `active/`.
    pub active: StateCount,
    /// `deferred/`.
    pub deferred: StateCount,
    /// `failed/`.
    pub failed: StateCount,
    /// `corrupt/`.
    pub corrupt: StateCount,
    /// Files in `tmp/` (submits in progress, or left by a submitter that died; removed after
    /// `tmp_max_age_secs`).
    pub tmp_files: u64,
    /// Their total size in bytes.
    pub tmp_bytes: u64,
    /// `hold/`.
    pub held: StateCount,
}

fn count(dir: &Path, now: i64) -> StateCount {
    let mut c = StateCount::default();
    let Ok(rd) = fs::read_dir(dir) else { return c };
    let mut oldest: Option<i64> = None;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let id = split_claim_name(name).map(|(id, _)| id).unwrap_or(name);
        let Ok(q) = QueueId::parse(id) else { continue };
        c.count += 1;
        if let Some(t) = q.created_secs() {
            oldest = Some(oldest.map_or(t, |o: i64| o.min(t)));
        }
    }
    c.oldest_age_secs = oldest.map(|t| (now - t).max(0));
    c
}

/// Counts every state of a spool (names only: no file is opened).
pub fn status(spool: &Path) -> SpoolStatus {
    let now = now_secs();
    let d = |s: QueueState| count(&spool.join(s.dir_name()), now);
    let tmp = tmp_usage(spool);
    SpoolStatus {
        spool: spool.to_owned(),
        ready: d(QueueState::Ready),
        scheduled: d(QueueState::Scheduled),
        active: d(QueueState::Active),
        deferred: d(QueueState::Deferred),
        failed: d(QueueState::Failed),
        corrupt: d(QueueState::Corrupt),
        tmp_files: tmp.0,
        tmp_bytes: tmp.1,
        held: d(QueueState::Held),
    }
}

/// Count and total size of the files in `SPOOL/tmp/` (symlinks counted, not followed).
fn tmp_usage(spool: &Path) -> (u64, u64) {
    let Ok(rd) = fs::read_dir(spool.join("tmp")) else {
        return (0, 0);
    };
    rd.flatten()
        .filter_map(|e| fs::symlink_metadata(e.path()).ok())
        .filter(|m| !m.is_dir())
        .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
}

/// What `show ID` prints.
#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    /// Queue id.
    pub id: String,
    /// Its state directory (`active` with the owner when claimed).
    pub state: String,
    /// The claiming dispatcher, when active.
    pub owner: Option<String>,
    /// The file.
    pub path: PathBuf,
    /// Envelope sender.
    pub mail_from: Option<String>,
    /// Envelope recipients.
    pub rcpt_to: Vec<String>,
    /// Message-ID.
    pub message_id: Option<String>,
    /// Priority 1..5.
    pub priority: Option<u8>,
    /// Submitted at (Unix seconds).
    pub created: Option<i64>,
    /// Not-before (Unix seconds).
    pub not_before: Option<i64>,
    /// Message size in bytes.
    pub size: Option<u64>,
    /// Why it cannot be read, for a corrupt file.
    pub error: Option<String>,
    /// The dispatcher state (attempts, history, diagnosis).
    pub dispatch: Option<MessageState>,
}

/// Finds a message in any state of the spool (see [`qmail_core::spool::status::locate`]).
pub fn locate(spool: &Path, id: &str) -> Option<(QueueState, PathBuf, Option<String>)> {
    status::locate(spool, id)
}

/// `show ID`.
///
/// # Errors
/// `NotFound` when no state holds it.
pub fn show(spool: &Path, id: &str) -> io::Result<MessageView> {
    QueueId::parse(id).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let (st, path, owner) = locate(spool, id).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no message {id} in {}", spool.display()),
        )
    })?;
    let mut v = MessageView {
        id: id.to_owned(),
        state: st.dir_name().to_owned(),
        owner,
        path: path.clone(),
        mail_from: None,
        rcpt_to: Vec::new(),
        message_id: None,
        priority: None,
        created: None,
        not_before: None,
        size: None,
        error: None,
        dispatch: MessageState::load(spool, id).ok().flatten(),
    };
    match SpoolFile::open(&path) {
        Ok(f) => {
            v.mail_from = Some(f.header.envelope.mail_from.clone());
            v.rcpt_to = f.header.envelope.rcpt_to.clone();
            v.message_id = Some(f.header.message_id.clone());
            v.priority = Some(f.header.priority);
            v.created = Some(f.header.created);
            v.not_before = f.header.not_before;
            v.size = Some(f.body_len);
        }
        Err(e) => v.error = Some(e.to_string()),
    }
    Ok(v)
}

fn ids_in(spool: &Path, st: QueueState, ids: &[String]) -> Vec<String> {
    if !ids.is_empty() {
        return ids.to_vec();
    }
    fs::read_dir(spool.join(st.dir_name()))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| QueueId::parse(n).is_ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `retry [ID...]`: deferred messages (all when `ids` is empty) become due now: the state's
/// next due time is cleared, then the file is renamed into `ready/`. Returns the ids moved.
///
/// # Errors
/// I/O errors writing a state file.
pub fn retry(spool: &Path, ids: &[String], instance: &str) -> io::Result<Vec<String>> {
    let mut moved = Vec::new();
    for id in ids_in(spool, QueueState::Deferred, ids) {
        if QueueId::parse(&id).is_err() {
            continue;
        }
        let src = spool.join(QueueState::Deferred.dir_name()).join(&id);
        if !src.exists() {
            continue;
        }
        let mut st = MessageState::load(spool, &id)?.unwrap_or_default();
        st.next_due = 0;
        st.save(spool, &id, instance, true)?;
        if fs::rename(&src, spool.join(QueueState::Ready.dir_name()).join(&id)).is_ok() {
            moved.push(id);
        }
    }
    Ok(moved)
}

/// `requeue-failed [ID...]`: failed messages (all when `ids` is empty) go back to `ready/`
/// for the recipients that failed (those already delivered are not sent again). The attempt
/// count and history are kept; the queue lifetime starts again. Returns the ids moved.
///
/// # Errors
/// I/O errors writing a state file.
pub fn requeue_failed(spool: &Path, ids: &[String], instance: &str) -> io::Result<Vec<String>> {
    let mut moved = Vec::new();
    for id in ids_in(spool, QueueState::Failed, ids) {
        if QueueId::parse(&id).is_err() {
            continue;
        }
        let src = spool.join(QueueState::Failed.dir_name()).join(&id);
        if !src.exists() {
            continue;
        }
        let mut st = MessageState::load(spool, &id)?.unwrap_or_default();
        let mut remaining = st.remaining.take().unwrap_or_default();
        remaining.extend(st.failed.drain(..).map(|f| f.rcpt));
        // a message refused as a whole (bad envelope, smuggling) has no per-recipient list
        st.remaining = if remaining.is_empty() {
            None
        } else {
            Some(remaining)
        };
        st.reason = None;
        st.next_due = 0;
        st.requeued_at = Some(now_secs());
        st.save(spool, &id, instance, true)?;
        if fs::rename(&src, spool.join(QueueState::Ready.dir_name()).join(&id)).is_ok() {
            moved.push(id);
        }
    }
    Ok(moved)
}
