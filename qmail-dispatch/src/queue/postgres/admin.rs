//! The operator's commands over a PostgreSQL queue (`qmail-dispatcher list|show|cat|summary|
//! hold|release|delete|retry|requeue-failed --queue URL`), with the rules of the directory
//! spool's commands (`crate::admin`, `crate::admin::ops`, after Postfix's `mailq`,
//! `postsuper`, `postcat` and `qshape`) over the schema of `docs/scale-out.md`.
//!
//! - Reads ([`list`], [`summary`], [`show`], [`cat`]) never lock anything a dispatcher waits
//!   on. [`list`] and [`summary`] stream the rows through a portal ([`PAGE`] rows at a time);
//!   [`cat`] streams a chunked body one chunk (one query) at a time inside one read-only
//!   `REPEATABLE READ` transaction, so what it prints is one snapshot of the message even if
//!   a dispatcher delivers it (and drops its chunks) meanwhile.
//! - Every change ([`hold`], [`release`], [`delete`], [`retry`], [`requeue_failed`]) is one
//!   transaction: the named rows are locked `FOR UPDATE` (a dispatcher's claim, `FOR UPDATE
//!   SKIP LOCKED`, skips them until the commit; a claim that came first makes them `active`,
//!   which the lock then sees), each id is decided on what the lock returned, the changes are
//!   written, and `NOTIFY SCHEMA_ready` wakes the dispatchers when one became claimable.
//! - A row in `active` (a dispatcher is delivering it) is never touched: the command reports
//!   [`Outcome::InFlight`] for it, exactly as the directory does for `active/`; its settle
//!   (guarded by owner and claim counter) is never raced. Run the command again after the
//!   attempt.
//! - A deleted message leaves a tombstone like a delivered one (`state = 'delivered'`, no
//!   body, `reason` = [`DELETED_REASON`], kept for the tombstone horizon), so a forwarder
//!   that imports it again (a crash between COMMIT and unlink) finds the key taken and does
//!   not bring it back.
//!
//! Each change is idempotent: a second run finds the rows in their new state and reports
//! [`Outcome::WrongState`] for them, changing nothing.

use std::collections::HashMap;
use std::io::{self, Write};

use postgres::IsolationLevel;
use qmail_core::spool::status::{ListEntry, ListFilter, MessageStatus, State};
use qmail_core::{QueueId, SpoolHeader};
use serde::Serialize;

use super::{PgQueue, db_error};
use crate::admin::ops::{IdOutcome, Outcome, SUMMARY_STATES, Shape, shape_of};
use crate::queue::QueueError;
use crate::state::{MessageState, RcptStatus};

/// Rows fetched per round trip by [`list`] and [`summary`].
pub const PAGE: i32 = 500;

/// The `reason` of a tombstone left by [`delete`] (a delivered message's tombstone has none).
pub const DELETED_REASON: &str = "deleted by an operator";

/// What [`list`], [`show`] and the outcomes call a tombstone left by [`delete`].
pub const DELETED: &str = "deleted";

/// The row states of the schema (`message.state`), as `'static` names for [`Outcome`].
const ROW_STATES: [&str; 8] = [
    "ready",
    "scheduled",
    "active",
    "deferred",
    "held",
    "failed",
    "corrupt",
    "delivered",
];

/// Errors of the operator's commands over a queue.
#[derive(Debug, thiserror::Error)]
pub enum PgAdminError {
    /// An id that is not a queue id (`docs/spool-format.md`, "File names"); nothing was
    /// looked up or changed.
    #[error("{id:?} is not a queue id")]
    BadId {
        /// The id as given.
        id: String,
    },
    /// `delete --state S --all` of a state that cannot be deleted (`active`, `delivered`).
    #[error("--state {state}: {why}")]
    BadState {
        /// The state asked for.
        state: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// The database failed, or a row does not decode; for a change, nothing was committed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Writing the message out ([`cat`]) failed (a closed pipe).
    #[error("writing the message: {0}")]
    Output(io::Error),
}

fn check_ids(ids: &[String]) -> Result<(), PgAdminError> {
    for id in ids {
        if QueueId::parse(id).is_err() {
            return Err(PgAdminError::BadId { id: id.clone() });
        }
    }
    Ok(())
}

fn static_state(s: &str) -> &'static str {
    ROW_STATES
        .iter()
        .find(|x| **x == s)
        .copied()
        .unwrap_or("unknown")
}

/// The name a row's state is shown as: the row state, or [`DELETED`] for a tombstone left
/// by [`delete`].
fn shown_state(state: &str, reason: Option<&str>) -> &'static str {
    if state == "delivered" && reason == Some(DELETED_REASON) {
        DELETED
    } else {
        static_state(state)
    }
}

/// The row states a `--state` of `list`/`summary` selects (`failed` covers `corrupt`, as
/// for a spool; `delivered` and `unknown` select the tombstones of delivered and deleted
/// messages).
fn row_states(states: &[State]) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    let all = [
        State::Queued,
        State::Scheduled,
        State::Active,
        State::Deferred,
        State::Held,
        State::Failed,
    ];
    let pick = if states.is_empty() { &all[..] } else { states };
    for s in pick {
        let add: &[&'static str] = match s {
            State::Queued => &["ready"],
            State::Scheduled => &["scheduled"],
            State::Active => &["active"],
            State::Deferred => &["deferred"],
            State::Held => &["held"],
            State::Failed => &["failed", "corrupt"],
            State::Delivered | State::Unknown => &["delivered"],
        };
        for a in add {
            if !v.contains(a) {
                v.push(a);
            }
        }
    }
    v
}

fn public_state(shown: &str) -> State {
    match shown {
        "ready" => State::Queued,
        "scheduled" => State::Scheduled,
        "active" => State::Active,
        "deferred" => State::Deferred,
        "held" => State::Held,
        "failed" | "corrupt" => State::Failed,
        "delivered" => State::Delivered,
        _ => State::Unknown,
    }
}

fn addr_matches(pattern: &str, addr: &str) -> bool {
    match pattern.strip_prefix('@') {
        Some(d) => addr
            .rsplit_once('@')
            .is_some_and(|(_, x)| x.eq_ignore_ascii_case(d)),
        None => addr.eq_ignore_ascii_case(pattern),
    }
}

fn decode_header(bytes: &[u8]) -> Result<SpoolHeader, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("header does not decode: {e}"))
}

fn decode_state(j: Option<&str>) -> Result<Option<MessageState>, String> {
    match j {
        Some(j) => serde_json::from_str(j)
            .map(Some)
            .map_err(|e| format!("dstate does not parse: {e}")),
        None => Ok(None),
    }
}

/// The deciding reply of the last attempt: a deferred recipient's when any, else the last
/// one (as `list` on a spool).
fn last_reply(st: &MessageState) -> Option<String> {
    let a = st.history.last()?;
    a.results
        .iter()
        .find(|r| r.status == RcptStatus::Deferred)
        .or(a.results.last())
        .map(|r| r.reply.to_string())
}

/// The columns [`list`] reads, in this order.
const LIST_COLUMNS: &str = "id, state, owner, body_len, created, extract(epoch FROM due)::bigint, \
     header, dstate::text, reason";

fn list_entry(r: &postgres::Row) -> ListEntry {
    let id: String = r.get(0);
    let state: String = r.get(1);
    let owner: Option<String> = r.get(2);
    let body_len: i64 = r.get(3);
    let created: i64 = r.get(4);
    let due: i64 = r.get(5);
    let header: Vec<u8> = r.get(6);
    let dstate: Option<String> = r.get(7);
    let reason: Option<String> = r.get(8);
    let shown = shown_state(&state, reason.as_deref());
    let public = public_state(shown);
    let mut errors = Vec::new();
    let st = decode_state(dstate.as_deref()).unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    let side = st.clone().unwrap_or_default();
    let mut reasons = Vec::new();
    if public == State::Failed {
        if let Some(r) = &reason {
            reasons.push(r.clone());
        }
        reasons.extend(side.reason.iter().cloned());
        reasons.extend(
            side.failed
                .iter()
                .map(|f| format!("<{}>: {}", f.rcpt, f.reply)),
        );
    } else if shown == DELETED {
        reasons.push(DELETED_REASON.to_owned());
    }
    let mut e = ListEntry {
        id,
        state: public,
        dir: shown.to_owned(),
        size: Some(body_len.max(0) as u64),
        created: Some(created),
        priority: None,
        sender: None,
        recipients: Vec::new(),
        message_id: None,
        attempts: side.attempts,
        next_attempt: match shown {
            "deferred" | "scheduled" => Some(due),
            "held" => (side.next_due > 0).then_some(side.next_due),
            _ => None,
        },
        last_reply: last_reply(&side),
        reasons,
        owner,
        error: None,
    };
    match decode_header(&header) {
        Ok(h) => {
            e.priority = Some(h.priority);
            e.sender = Some(h.envelope.mail_from.clone());
            e.recipients = match side.remaining {
                Some(r) if !r.is_empty() && public != State::Failed => r,
                _ => h.envelope.rcpt_to.clone(),
            };
            e.message_id = Some(h.message_id.clone());
        }
        Err(err) => errors.push(err),
    }
    if !errors.is_empty() {
        e.error = Some(errors.join("; "));
    }
    e
}

/// Streams the rows `filter` selects, oldest first (submit time, then id), to `keep`
/// until it returns false. `limit` applies to the entries that passed every filter.
fn for_each_entry(
    q: &PgQueue,
    filter: &ListFilter,
    mut keep: impl FnMut(ListEntry) -> bool,
) -> Result<(), PgAdminError> {
    let s = &q.inner.s;
    let states = row_states(&filter.states);
    let want_delivered = filter.states.contains(&State::Delivered);
    let want_deleted = filter.states.contains(&State::Unknown);
    let rust_filter =
        filter.rcpt.is_some() || filter.from.is_some() || want_delivered != want_deleted;
    let sql_limit: Option<i64> = match (filter.limit, rust_filter) {
        (Some(l), false) => Some(l.min(i64::MAX as usize) as i64),
        _ => None,
    };
    let mut c = q.inner.conn()?;
    let mut tx = c
        .client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(db_error)?;
    let stmt = tx
        .prepare(&format!(
            "SELECT {LIST_COLUMNS} FROM {s}.message WHERE state = ANY($1) AND ($2::bigint IS \
             NULL OR created <= extract(epoch FROM now())::bigint - $2) ORDER BY created, id \
             LIMIT $3"
        ))
        .map_err(db_error)?;
    let portal = tx
        .bind(&stmt, &[&states, &filter.older_secs, &sql_limit])
        .map_err(db_error)?;
    let mut n = 0usize;
    loop {
        let rows = tx.query_portal(&portal, PAGE).map_err(db_error)?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let e = list_entry(r);
            if e.state == State::Delivered && !want_delivered {
                continue;
            }
            if e.dir == DELETED && !want_deleted {
                continue;
            }
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
            if filter.limit.is_some_and(|l| n >= l) || !keep(e) {
                return Ok(());
            }
            n += 1;
        }
        if filter.limit.is_some_and(|l| n >= l) {
            break;
        }
    }
    tx.commit().map_err(db_error)?;
    Ok(())
}

/// `list --queue` (mailq): the messages `filter` selects, oldest first, in the shape of the
/// directory's [`qmail_core::spool::status::list`]: `dir` is the row state (`ready`,
/// `held`, `corrupt`, …; [`DELETED`] for a tombstone of [`delete`]), `size` the body length.
/// With no state, every state but the tombstones; `--state delivered` lists the tombstones
/// of delivered messages, `--state unknown` those of deleted ones.
///
/// # Errors
/// [`PgAdminError::Queue`] when the database fails.
pub fn list(q: &PgQueue, filter: &ListFilter) -> Result<Vec<ListEntry>, PgAdminError> {
    let mut out = Vec::new();
    for_each_entry(q, filter, |e| {
        out.push(e);
        true
    })?;
    Ok(out)
}

/// `summary --queue` (qshape): recipients still to deliver by domain and age, as
/// [`crate::admin::ops::summary`] (default states: [`SUMMARY_STATES`]).
///
/// # Errors
/// As [`list`].
pub fn summary(q: &PgQueue, filter: &ListFilter) -> Result<Shape, PgAdminError> {
    let mut f = filter.clone();
    if f.states.is_empty() {
        f.states = SUMMARY_STATES.to_vec();
    }
    let entries = list(q, &f)?;
    let now: i64 = {
        let mut c = q.inner.conn()?;
        c.client
            .query_one("SELECT extract(epoch FROM now())::bigint", &[])
            .map_err(db_error)?
            .get(0)
    };
    Ok(shape_of(entries, now))
}

/// What `show ID --queue` prints: the directory's [`crate::admin::MessageView`] fields
/// (without `path`), plus the queue's own.
#[derive(Debug, Clone, Serialize)]
pub struct QueueMessageView {
    /// Queue id.
    pub id: String,
    /// The row state (`ready`, `held`, `corrupt`, `delivered`, …; [`DELETED`]).
    pub state: String,
    /// The claiming dispatcher (`active`).
    pub owner: Option<String>,
    /// The schema holding it.
    pub queue: String,
    /// The claim counter (the fencing token of the last claim).
    pub claims: i64,
    /// Envelope sender (MAIL FROM).
    pub mail_from: Option<String>,
    /// Envelope recipients (RCPT TO).
    pub rcpt_to: Vec<String>,
    /// Message-ID.
    pub message_id: Option<String>,
    /// Priority 1..5.
    pub priority: Option<u8>,
    /// Submitted at (Unix seconds).
    pub created: Option<i64>,
    /// Not-before (Unix seconds).
    pub not_before: Option<i64>,
    /// Message size in bytes (the body is gone from a tombstone).
    pub size: Option<u64>,
    /// Not before this time (Unix seconds, database time): the retry time of a deferred
    /// message, the not-before time of a scheduled one.
    pub due: i64,
    /// When it was last settled (Unix seconds; a tombstone's delivery or deletion time).
    pub settled_at: Option<i64>,
    /// Why it is corrupt, or [`DELETED_REASON`].
    pub reason: Option<String>,
    /// Why part of the row cannot be read.
    pub error: Option<String>,
    /// The dispatcher state (attempts, history, diagnosis).
    pub dispatch: Option<MessageState>,
}

/// `show ID --queue`: the row of one message; `None` when no row has this id.
///
/// # Errors
/// [`PgAdminError::BadId`]; [`PgAdminError::Queue`].
pub fn show(q: &PgQueue, id: &str) -> Result<Option<QueueMessageView>, PgAdminError> {
    Ok(show_with_status(q, id)?.map(|(v, _)| v))
}

/// The columns [`show`] and [`status`] read: [`LIST_COLUMNS`], then the claim counter and
/// the settle time.
const SHOW_COLUMNS: &str = "id, state, owner, body_len, created, extract(epoch FROM due)::bigint, \
     header, dstate::text, reason, claims, extract(epoch FROM settled_at)::bigint";

/// [`show`] and [`status`] of one message from one read of its row (what the HTTP API's
/// `GET /api/v1/messages/ID` returns: the two always agree); `None` when no row has this id.
///
/// # Errors
/// [`PgAdminError::BadId`]; [`PgAdminError::Queue`].
pub fn show_with_status(
    q: &PgQueue,
    id: &str,
) -> Result<Option<(QueueMessageView, MessageStatus)>, PgAdminError> {
    check_ids(&[id.to_owned()])?;
    let s = &q.inner.s;
    let mut c = q.inner.conn()?;
    let Some(r) = c
        .client
        .query_opt(
            &format!("SELECT {SHOW_COLUMNS} FROM {s}.message WHERE id = $1"),
            &[&id],
        )
        .map_err(db_error)?
    else {
        return Ok(None);
    };
    let state: String = r.get(1);
    let body_len: i64 = r.get(3);
    let due: i64 = r.get(5);
    let header: Vec<u8> = r.get(6);
    let reason: Option<String> = r.get(8);
    let claims: i64 = r.get(9);
    let settled_at: Option<i64> = r.get(10);
    let shown = shown_state(&state, reason.as_deref());
    let mut errors = Vec::new();
    let dispatch = decode_state(r.get::<_, Option<String>>(7).as_deref()).unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    let mut v = QueueMessageView {
        id: id.to_owned(),
        state: shown.to_owned(),
        owner: r.get(2),
        queue: s.clone(),
        claims,
        mail_from: None,
        rcpt_to: Vec::new(),
        message_id: None,
        priority: None,
        created: None,
        not_before: None,
        size: (state != "delivered").then(|| body_len.max(0) as u64),
        due,
        settled_at,
        reason,
        error: None,
        dispatch,
    };
    match decode_header(&header) {
        Ok(h) => {
            v.mail_from = Some(h.envelope.mail_from);
            v.rcpt_to = h.envelope.rcpt_to;
            v.message_id = Some(h.message_id);
            v.priority = Some(h.priority);
            v.created = Some(h.created);
            v.not_before = h.not_before;
        }
        Err(e) => errors.push(e),
    }
    if !errors.is_empty() {
        v.error = Some(errors.join("; "));
    }
    let e = list_entry(&r);
    let st = MessageStatus {
        delivered_at: if e.state == State::Delivered {
            settled_at
        } else {
            None
        },
        id: e.id,
        state: e.state,
        dir: Some(e.dir),
        attempts: e.attempts,
        next_attempt: e.next_attempt,
        last_reply: e.last_reply,
        reasons: e.reasons,
        owner: e.owner,
    };
    Ok(Some((v, st)))
}

/// "Where is message ID?" over the queue, in the shape of the directory's
/// [`qmail_core::spool::status::status`]: `state` the public state (`ready` is `queued`,
/// `corrupt` is `failed`, a tombstone `delivered` or, deleted, `unknown`), `dir` the row state
/// as [`list`] shows it, `next_attempt` the due time of a deferred or scheduled row,
/// `delivered_at` the settle time of a delivered one; `None` when no row has this id.
///
/// # Errors
/// [`PgAdminError::BadId`]; [`PgAdminError::Queue`].
pub fn status(q: &PgQueue, id: &str) -> Result<Option<MessageStatus>, PgAdminError> {
    Ok(show_with_status(q, id)?.map(|(_, st)| st))
}

/// What [`cat`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatOutcome {
    /// The message (or its header section) was written: this many bytes.
    Written {
        /// Bytes written.
        bytes: u64,
    },
    /// No row has this id.
    NotFound,
    /// The row is a tombstone: its body is gone (`delivered` or [`DELETED`]).
    NoBody {
        /// `delivered` or [`DELETED`].
        state: &'static str,
    },
}

/// Copies `data` to `out`, up to and including the first CRLF CRLF when `headers_only`
/// (`tail` carries the last 3 bytes across calls). Returns true once the end was written.
fn write_part(
    out: &mut dyn Write,
    data: &[u8],
    headers_only: bool,
    tail: &mut Vec<u8>,
    written: &mut u64,
) -> io::Result<bool> {
    if !headers_only {
        out.write_all(data)?;
        *written += data.len() as u64;
        return Ok(false);
    }
    // look for CRLF CRLF across the boundary: the carried bytes, then this piece
    let mut probe = tail.clone();
    probe.extend_from_slice(&data[..data.len().min(3)]);
    let end = probe
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4 - tail.len())
        .or_else(|| {
            data.windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|p| p + 4)
        });
    let take = end.unwrap_or(data.len());
    out.write_all(&data[..take])?;
    *written += take as u64;
    let mut t = std::mem::take(tail);
    t.extend_from_slice(&data[..take]);
    let keep = t.len().saturating_sub(3);
    *tail = t.split_off(keep);
    Ok(end.is_some())
}

/// `cat ID --queue [--headers]` (Postfix `postcat -q`): writes the message to `out` as it
/// goes on the wire (RFC 5322, CRLF, before dot-stuffing; a DKIM signature added at send
/// time is not in it), or with `headers_only` the header section up to and including the
/// empty line. A chunked body is streamed one chunk (one query, at most
/// [`super::CHUNK_LEN`] in memory) at a time from one snapshot.
///
/// # Errors
/// [`PgAdminError::BadId`]; [`PgAdminError::Queue`] when the database fails or the chunks
/// do not add up to `body_len` ([`QueueError::Corrupt`]: what was written is incomplete);
/// [`PgAdminError::Output`] when `out` fails.
pub fn cat(
    q: &PgQueue,
    id: &str,
    headers_only: bool,
    out: &mut dyn Write,
) -> Result<CatOutcome, PgAdminError> {
    check_ids(&[id.to_owned()])?;
    let s = &q.inner.s;
    let mut c = q.inner.conn()?;
    let mut tx = c
        .client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(db_error)?;
    let Some(r) = tx
        .query_opt(
            &format!(
                "SELECT state, reason, body_len, chunked, body FROM {s}.message WHERE id = $1"
            ),
            &[&id],
        )
        .map_err(db_error)?
    else {
        return Ok(CatOutcome::NotFound);
    };
    let state: String = r.get(0);
    let reason: Option<String> = r.get(1);
    if state == "delivered" {
        return Ok(CatOutcome::NoBody {
            state: shown_state(&state, reason.as_deref()),
        });
    }
    let len = r.get::<_, i64>(2).max(0) as u64;
    let chunked: bool = r.get(3);
    let corrupt = |why: String| {
        PgAdminError::Queue(QueueError::Corrupt {
            id: id.to_owned(),
            reason: why,
        })
    };
    let mut tail = Vec::new();
    let mut written = 0u64;
    if !chunked {
        let body: Option<Vec<u8>> = r.get(4);
        let body = body.ok_or_else(|| corrupt("the row has no body".into()))?;
        if body.len() as u64 != len {
            return Err(corrupt(format!(
                "body is {} bytes, body_len says {len}",
                body.len()
            )));
        }
        write_part(out, &body, headers_only, &mut tail, &mut written)
            .map_err(PgAdminError::Output)?;
    } else {
        let get = tx
            .prepare(&format!(
                "SELECT data FROM {s}.chunk WHERE id = $1 AND seq = $2"
            ))
            .map_err(db_error)?;
        let mut seq: i32 = 0;
        let mut read = 0u64;
        while read < len {
            let Some(row) = tx.query_opt(&get, &[&id, &seq]).map_err(db_error)? else {
                return Err(corrupt(format!(
                    "chunk {seq} missing after {read} of {len} bytes"
                )));
            };
            let data: Vec<u8> = row.get(0);
            read += data.len() as u64;
            if data.is_empty() || read > len {
                return Err(corrupt(format!("chunks do not add up to {len} bytes")));
            }
            if write_part(out, &data, headers_only, &mut tail, &mut written)
                .map_err(PgAdminError::Output)?
            {
                break;
            }
            seq += 1;
        }
    }
    out.flush().map_err(PgAdminError::Output)?;
    tx.commit().map_err(db_error)?;
    Ok(CatOutcome::Written { bytes: written })
}

/// A row locked by a change.
struct Locked {
    state: String,
    reason: Option<String>,
    header: Vec<u8>,
    dstate: Option<String>,
}

/// Locks the rows of `ids` (`FOR UPDATE`: waits for a claim or settle in progress, then
/// sees its result).
fn lock_ids(
    tx: &mut postgres::Transaction<'_>,
    s: &str,
    ids: &[String],
) -> Result<HashMap<String, Locked>, PgAdminError> {
    let rows = tx
        .query(
            &format!(
                "SELECT id, state, reason, header, dstate::text FROM {s}.message \
                 WHERE id = ANY($1) FOR UPDATE"
            ),
            &[&ids],
        )
        .map_err(db_error)?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                Locked {
                    state: r.get(1),
                    reason: r.get(2),
                    header: r.get(3),
                    dstate: r.get(4),
                },
            )
        })
        .collect())
}

/// The ids of every row in `states`, oldest first, locked.
fn lock_states(
    tx: &mut postgres::Transaction<'_>,
    s: &str,
    states: &[&str],
) -> Result<(Vec<String>, HashMap<String, Locked>), PgAdminError> {
    let rows = tx
        .query(
            &format!(
                "SELECT id, state, reason, header, dstate::text FROM {s}.message \
                 WHERE state = ANY($1) ORDER BY created, id FOR UPDATE"
            ),
            &[&states],
        )
        .map_err(db_error)?;
    let ids = rows.iter().map(|r| r.get(0)).collect();
    let map = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                Locked {
                    state: r.get(1),
                    reason: r.get(2),
                    header: r.get(3),
                    dstate: r.get(4),
                },
            )
        })
        .collect();
    Ok((ids, map))
}

/// The due time a changed row gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Due {
    /// Unchanged (a held row keeps the time it had).
    Keep,
    /// Now (database time).
    Now,
    /// At this Unix time.
    At(i64),
}

/// Where a changed row goes, and its new due time / state.
struct Change {
    to: &'static str,
    due: Due,
    /// The new dispatcher state (JSON), when it changes (one statement for this row).
    dstate: Option<String>,
    /// Clear the dispatcher state's `next_due` (in SQL, so rows without a new `dstate` are
    /// changed together, one statement per kind of change).
    clear_next_due: bool,
}

impl Change {
    fn to(to: &'static str, due: Due) -> Change {
        Change {
            to,
            due,
            dstate: None,
            clear_next_due: false,
        }
    }
}

/// The skeleton of every change: lock, decide per id, write, notify, commit.
fn change(
    q: &PgQueue,
    ids: Option<&[String]>,
    all_states: &[&str],
    mut decide: impl FnMut(&str, &Locked, i64) -> Result<Result<Change, Outcome>, PgAdminError>,
) -> Result<Vec<IdOutcome>, PgAdminError> {
    if let Some(ids) = ids {
        check_ids(ids)?;
    }
    let s = q.inner.s.clone();
    let channel = q.channel();
    let mut c = q.inner.conn()?;
    let mut tx = c.client.transaction().map_err(db_error)?;
    let now: i64 = tx
        .query_one("SELECT extract(epoch FROM now())::bigint", &[])
        .map_err(db_error)?
        .get(0);
    let (order, rows) = match ids {
        Some(ids) => (ids.to_vec(), lock_ids(&mut tx, &s, ids)?),
        None => lock_states(&mut tx, &s, all_states)?,
    };
    // $1: the ids (text[]); every row of one statement gets the same change
    let set = tx
        .prepare(&format!(
            "UPDATE {s}.message SET state = $2, due = CASE WHEN $5 THEN due WHEN $3::bigint IS \
             NULL THEN now() ELSE to_timestamp($3::bigint) END, dstate = CASE WHEN \
             $4::text IS NOT NULL THEN $4::text::jsonb WHEN $6 AND dstate IS NOT NULL THEN \
             jsonb_set(dstate, '{{next_due}}', '0') ELSE dstate END WHERE id = ANY($1)"
        ))
        .map_err(db_error)?;
    let mut out: Vec<IdOutcome> = Vec::with_capacity(order.len());
    let mut done: HashMap<String, &'static str> = HashMap::new();
    let mut batches: HashMap<(&'static str, Due, bool), Vec<String>> = HashMap::new();
    let mut tombs: Vec<String> = Vec::new();
    let mut wake = false;
    for id in order {
        let outcome = match (rows.get(&id), done.get(&id)) {
            (None, _) => Outcome::NotFound,
            // the same id twice: the first answer changed it
            (Some(_), Some(now_in)) => Outcome::WrongState { dir: now_in },
            (Some(l), None) if l.state == "active" => Outcome::InFlight,
            (Some(l), None) => match decide(&id, l, now)? {
                Err(o) => o,
                Ok(ch) => {
                    let from = shown_state(&l.state, l.reason.as_deref());
                    if ch.to == DELETED {
                        tombs.push(id.clone());
                        done.insert(id.clone(), DELETED);
                        Outcome::Done { from, to: None }
                    } else {
                        match &ch.dstate {
                            Some(_) => {
                                let one = [id.clone()];
                                exec_set(&mut tx, &set, &one, &ch)?;
                            }
                            None => batches
                                .entry((ch.to, ch.due, ch.clear_next_due))
                                .or_default()
                                .push(id.clone()),
                        }
                        wake |= ch.to == "ready";
                        done.insert(id.clone(), ch.to);
                        Outcome::Done {
                            from,
                            to: Some(ch.to),
                        }
                    }
                }
            },
        };
        out.push(IdOutcome { id, outcome });
    }
    for ((to, due, clear_next_due), ids) in batches {
        let ch = Change {
            to,
            due,
            dstate: None,
            clear_next_due,
        };
        exec_set(&mut tx, &set, &ids, &ch)?;
    }
    if !tombs.is_empty() {
        tx.execute(
            &format!(
                "UPDATE {s}.message SET state = 'delivered', owner = NULL, body = NULL, \
                 chunked = false, reason = $2, settled_at = now() WHERE id = ANY($1)"
            ),
            &[&tombs, &DELETED_REASON],
        )
        .map_err(db_error)?;
        tx.execute(
            &format!("DELETE FROM {s}.chunk WHERE id = ANY($1)"),
            &[&tombs],
        )
        .map_err(db_error)?;
    }
    if wake {
        tx.execute("SELECT pg_notify($1, '')", &[&channel])
            .map_err(db_error)?;
    }
    tx.commit().map_err(db_error)?;
    Ok(out)
}

/// Applies `ch` to the rows `ids` with the prepared `set` statement.
fn exec_set(
    tx: &mut postgres::Transaction<'_>,
    set: &postgres::Statement,
    ids: &[String],
    ch: &Change,
) -> Result<(), PgAdminError> {
    let at = match ch.due {
        Due::At(t) => Some(t),
        Due::Keep | Due::Now => None,
    };
    let keep = ch.due == Due::Keep;
    tx.execute(
        set,
        &[&ids, &ch.to, &at, &ch.dstate, &keep, &ch.clear_next_due],
    )
    .map_err(db_error)?;
    Ok(())
}

fn wrong(l: &Locked) -> Outcome {
    Outcome::WrongState {
        dir: shown_state(&l.state, l.reason.as_deref()),
    }
}

/// `hold ID... --queue` (Postfix `postsuper -h`): `ready`, `scheduled` and `deferred` rows
/// become `held`; a held row is never claimed (claims select `ready` only, promotion only
/// `scheduled` and `deferred`) and never expires. Its due time and dispatcher state are kept
/// for [`release`]. An `active` row is [`Outcome::InFlight`] (untouched, as `active/` in a
/// spool).
///
/// # Errors
/// [`PgAdminError::BadId`] (nothing changed); [`PgAdminError::Queue`] (nothing committed).
pub fn hold(q: &PgQueue, ids: &[String]) -> Result<Vec<IdOutcome>, PgAdminError> {
    change(q, Some(ids), &[], |_, l, _| {
        Ok(match l.state.as_str() {
            "ready" | "scheduled" | "deferred" => Ok(Change::to("held", Due::Keep)),
            _ => Err(wrong(l)),
        })
    })
}

/// `release ID... --queue` (Postfix `postsuper -H`): held rows go to `deferred` while their
/// retry time (`dstate.next_due`) is ahead, to `scheduled` while their not-before time is,
/// else to `ready` (due now), as [`crate::admin::ops::release`].
///
/// # Errors
/// As [`hold`].
pub fn release(q: &PgQueue, ids: &[String]) -> Result<Vec<IdOutcome>, PgAdminError> {
    change(q, Some(ids), &[], |_, l, now| {
        if l.state != "held" {
            return Ok(Err(wrong(l)));
        }
        let next_due = decode_state(l.dstate.as_deref())
            .ok()
            .flatten()
            .map(|st| st.next_due)
            .unwrap_or(0);
        let not_before = decode_header(&l.header)
            .ok()
            .and_then(|h| h.not_before)
            .unwrap_or(0);
        Ok(Ok(if next_due > now {
            Change::to("deferred", Due::At(next_due))
        } else if not_before > now {
            Change::to("scheduled", Due::At(not_before))
        } else {
            Change::to("ready", Due::Now)
        }))
    })
}

/// The row states [`delete`] applies to (never `active`, never a tombstone).
pub const DELETABLE: [&str; 6] = [
    "ready",
    "scheduled",
    "deferred",
    "held",
    "failed",
    "corrupt",
];

/// `delete ID... --queue` (Postfix `postsuper -d`): rows in any state but `active` become
/// tombstones ([`DELETED_REASON`]; body and chunks removed), so a re-forward of the same
/// queue id within the tombstone horizon is a duplicate and is not sent. An `active` row is
/// [`Outcome::InFlight`]; a tombstone is [`Outcome::WrongState`] (`delivered` / `deleted`).
///
/// # Errors
/// As [`hold`].
pub fn delete(q: &PgQueue, ids: &[String]) -> Result<Vec<IdOutcome>, PgAdminError> {
    change(q, Some(ids), &[], |_, l, _| {
        Ok(if DELETABLE.contains(&l.state.as_str()) {
            Ok(Change::to(DELETED, Due::Keep))
        } else {
            Err(wrong(l))
        })
    })
}

/// `delete --state S --all --queue`: every row in the row state `state` (one of
/// [`DELETABLE`]), in one transaction.
///
/// # Errors
/// [`PgAdminError::BadState`] for `active`, `delivered` or an unknown state; as [`hold`].
pub fn delete_all(q: &PgQueue, state: &str) -> Result<Vec<IdOutcome>, PgAdminError> {
    let Some(st) = DELETABLE.iter().find(|s| **s == state) else {
        return Err(PgAdminError::BadState {
            state: state.to_owned(),
            why: if state == "active" {
                "messages in flight are never deleted"
            } else {
                "not one of ready, scheduled, deferred, held, failed, corrupt"
            },
        });
    };
    change(q, None, &[*st], |_, _, _| {
        Ok(Ok(Change::to(DELETED, Due::Keep)))
    })
}

/// `retry [ID...] --queue`: `deferred` rows (all of them when `ids` is empty) become
/// `ready`, due now, with the dispatcher state's next due time cleared, as
/// [`crate::admin::retry`]. Other states are [`Outcome::WrongState`].
///
/// # Errors
/// As [`hold`].
pub fn retry(q: &PgQueue, ids: &[String]) -> Result<Vec<IdOutcome>, PgAdminError> {
    let named = (!ids.is_empty()).then_some(ids);
    change(q, named, &["deferred"], |_, l, _| {
        if l.state != "deferred" {
            return Ok(Err(wrong(l)));
        }
        Ok(Ok(Change {
            clear_next_due: true,
            ..Change::to("ready", Due::Now)
        }))
    })
}

fn encode_state(id: &str, st: &MessageState) -> Result<String, PgAdminError> {
    serde_json::to_string(st).map_err(|e| {
        PgAdminError::Queue(QueueError::Corrupt {
            id: id.to_owned(),
            reason: format!("state does not encode: {e}"),
        })
    })
}

/// `requeue-failed ID... | --all --queue`: `failed` rows (all of them when `ids` is empty)
/// go back to `ready`, due now, for the recipients that failed (those already delivered are
/// not sent again): as [`crate::admin::requeue_failed`], the attempt count and history are
/// kept, the failures and the message-level reason cleared, and `requeued_at` set, so the
/// queue lifetime starts again. `corrupt` rows are not requeued ([`Outcome::WrongState`]).
///
/// # Errors
/// As [`hold`].
pub fn requeue_failed(q: &PgQueue, ids: &[String]) -> Result<Vec<IdOutcome>, PgAdminError> {
    let named = (!ids.is_empty()).then_some(ids);
    change(q, named, &["failed"], |id, l, now| {
        if l.state != "failed" {
            return Ok(Err(wrong(l)));
        }
        let mut st = decode_state(l.dstate.as_deref())
            .map_err(|reason| {
                PgAdminError::Queue(QueueError::Corrupt {
                    id: id.to_owned(),
                    reason,
                })
            })?
            .unwrap_or_default();
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
        st.requeued_at = Some(now);
        Ok(Ok(Change {
            dstate: Some(encode_state(id, &st)?),
            ..Change::to("ready", Due::Now)
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut tail = Vec::new();
        let mut n = 0;
        for p in pieces {
            if write_part(&mut out, p, true, &mut tail, &mut n).unwrap() {
                break;
            }
        }
        assert_eq!(n as usize, out.len());
        out
    }

    #[test]
    fn the_header_section_ends_at_the_first_empty_line_across_chunks() {
        let m: &[u8] = b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore";
        for split in 0..m.len() {
            let (a, b) = m.split_at(split);
            assert_eq!(cut(&[a, b]), b"A: 1\r\nB: 2\r\n\r\n", "split at {split}");
        }
        assert_eq!(cut(&[b"A: 1\r\n", b"\r", b"\n", b"x"]), b"A: 1\r\n\r\n");
        assert_eq!(cut(&[b"no end"]), b"no end");
    }

    #[test]
    fn states_map_to_rows() {
        assert_eq!(
            row_states(&[]),
            vec![
                "ready",
                "scheduled",
                "active",
                "deferred",
                "held",
                "failed",
                "corrupt"
            ]
        );
        assert_eq!(row_states(&[State::Failed]), vec!["failed", "corrupt"]);
        assert_eq!(
            row_states(&[State::Delivered, State::Unknown]),
            vec!["delivered"]
        );
        assert_eq!(shown_state("delivered", Some(DELETED_REASON)), DELETED);
        assert_eq!(shown_state("held", None), "held");
    }
}
