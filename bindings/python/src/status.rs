//! `qmail.Spool(path).status(queue_id)` and `.list(...)`: where submitted messages are, over
//! the core's read-only view ([`qmail_core::spool::status`]; the same answer as the
//! dispatcher's `list` and `show`). Nothing here writes to the spool.

use std::path::{Path, PathBuf};

use pyo3::prelude::*;
use qmail_core::spool::status::{self, ListEntry, ListFilter, State};

use crate::error::to_py;

/// Where one message is: `state` is ``"queued"``, ``"scheduled"``, ``"active"``,
/// ``"deferred"``, ``"held"``, ``"failed"``, ``"delivered"`` or ``"unknown"``.
#[pyclass(frozen, module = "qmail._qmail", name = "MessageStatus")]
pub struct MessageStatus {
    /// The queue id.
    #[pyo3(get)]
    id: String,
    /// Where it is (see the class doc).
    #[pyo3(get)]
    state: &'static str,
    /// The spool directory it was found in, if any.
    #[pyo3(get)]
    spool: Option<PathBuf>,
    /// Delivery attempts made so far.
    #[pyo3(get)]
    attempts: u32,
    /// When the next attempt is due (retry time or not-before), Unix seconds.
    #[pyo3(get)]
    next_attempt: Option<i64>,
    /// The last reply (a deferral's reason), e.g. ``"451 4.7.1 try later"``.
    #[pyo3(get)]
    last_reply: Option<String>,
    /// Why it failed: the message-level reason and one ``"<rcpt>: reply"`` per recipient.
    #[pyo3(get)]
    reasons: Vec<String>,
    /// When it was delivered, Unix seconds (from ``sent/`` or the delivery log).
    #[pyo3(get)]
    delivered_at: Option<i64>,
    /// Envelope sender (``list`` only).
    #[pyo3(get)]
    sender: Option<String>,
    /// Envelope recipients still to do (``list`` only).
    #[pyo3(get)]
    recipients: Vec<String>,
    /// The Message-ID header value (``list`` only).
    #[pyo3(get)]
    message_id: Option<String>,
    /// Submitted at, Unix seconds (``list`` only).
    #[pyo3(get)]
    created: Option<i64>,
    /// Message size in bytes (``list`` only).
    #[pyo3(get)]
    size: Option<u64>,
}

#[pymethods]
impl MessageStatus {
    fn __repr__(&self) -> String {
        format!(
            "MessageStatus(id={:?}, state={:?}, attempts={})",
            self.id, self.state, self.attempts
        )
    }
}

fn blank(id: &str, state: State) -> MessageStatus {
    MessageStatus {
        id: id.to_owned(),
        state: state.as_str(),
        spool: None,
        attempts: 0,
        next_attempt: None,
        last_reply: None,
        reasons: Vec::new(),
        delivered_at: None,
        sender: None,
        recipients: Vec::new(),
        message_id: None,
        created: None,
        size: None,
    }
}

fn from_entry(spool: &Path, e: ListEntry) -> MessageStatus {
    MessageStatus {
        spool: Some(spool.to_owned()),
        attempts: e.attempts,
        next_attempt: e.next_attempt,
        last_reply: e.last_reply,
        reasons: e.reasons,
        sender: e.sender,
        recipients: e.recipients,
        message_id: e.message_id,
        created: e.created,
        size: e.size,
        ..blank(&e.id, e.state)
    }
}

/// `Spool.status`: the first spool that knows the id answers; `unknown` when none does.
pub(crate) fn status(
    py: Python<'_>,
    spools: &[PathBuf],
    queue_id: &str,
    delivery_log: Option<PathBuf>,
) -> PyResult<MessageStatus> {
    py.detach(|| {
        for sp in spools {
            let s = status::status(sp, queue_id, delivery_log.as_deref())?;
            if s.state != State::Unknown {
                return Ok(MessageStatus {
                    spool: Some(sp.clone()),
                    attempts: s.attempts,
                    next_attempt: s.next_attempt,
                    last_reply: s.last_reply,
                    reasons: s.reasons,
                    delivered_at: s.delivered_at,
                    ..blank(queue_id, s.state)
                });
            }
        }
        Ok(blank(queue_id, State::Unknown))
    })
    .map_err(to_py)
}

/// `Spool.list`.
pub(crate) fn list(
    py: Python<'_>,
    spools: &[PathBuf],
    state: Option<&str>,
    rcpt: Option<String>,
    sender: Option<String>,
    older: Option<i64>,
    limit: Option<usize>,
) -> PyResult<Vec<MessageStatus>> {
    let states = state
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| State::parse(s.trim()))
        .collect::<qmail_core::Result<Vec<_>>>()
        .map_err(to_py)?;
    if older.is_some_and(|o| o < 0) {
        return Err(crate::error::invalid_argument(
            "older",
            "older is a number of seconds, 0 or more",
        ));
    }
    let f = ListFilter {
        states,
        rcpt,
        from: sender,
        older_secs: older,
        limit,
    };
    py.detach(|| {
        let mut out = Vec::new();
        for sp in spools {
            out.extend(status::list(sp, &f)?.into_iter().map(|e| from_entry(sp, e)));
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        if let Some(l) = limit {
            out.truncate(l);
        }
        Ok(out)
    })
    .map_err(to_py)
}
