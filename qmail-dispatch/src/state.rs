//! Per-message dispatcher state: the JSON sidecar `SPOOL/state/ID.json`.
//!
//! The spool file is immutable; everything the dispatcher learns about a message (attempt
//! count, next due time, which recipients are still to do, which failed and why, every
//! attempt's time, relay and replies) lives here. It is written atomically (a temporary file
//! in the same directory, fsynced, then renamed over the old one), so a reader sees the old
//! or the new state, never a mix. A message delivered at the first attempt never gets one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Directory of the state files, inside a spool.
pub const STATE_DIR: &str = "state";

/// Most attempts kept in the history (5 days at the 4000 s cap is ~110).
pub const MAX_HISTORY: usize = 200;

/// An SMTP reply, or a local reason when there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The SMTP reply code, when the server replied.
    pub code: Option<u16>,
    /// The reply text (or the local error).
    pub text: String,
}

impl Reply {
    /// A reply with a code.
    pub fn smtp(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code: Some(code),
            text: text.into(),
        }
    }
    /// A local reason (no server reply).
    pub fn local(text: impl Into<String>) -> Reply {
        Reply {
            code: None,
            text: text.into(),
        }
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(c) => write!(f, "{c} {}", self.text),
            None => f.write_str(&self.text),
        }
    }
}

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptStatus {
    /// Accepted by the relay (250 to end-of-data).
    Delivered,
    /// Temporary failure (4xx, network): retried later.
    Deferred,
    /// Permanent failure (5xx, or refused locally).
    Failed,
}

/// One recipient's result in one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptResult {
    /// The recipient address.
    pub rcpt: String,
    /// Its status.
    pub status: RcptStatus,
    /// The reply that decided it.
    pub reply: Reply,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Attempt number (1 = first), never reset.
    pub number: u32,
    /// Start, Unix milliseconds.
    pub at_ms: i64,
    /// Duration in milliseconds.
    pub duration_ms: u64,
    /// Relay name, `outbox`, or `local` (refused before any relay).
    pub relay: String,
    /// The dispatcher instance that made it.
    pub instance: String,
    /// Per-recipient results.
    pub results: Vec<RcptResult>,
}

/// A recipient that failed for good, with the reply that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRcpt {
    /// The recipient address.
    pub rcpt: String,
    /// The reply.
    pub reply: Reply,
    /// When, Unix seconds.
    pub at: i64,
}

/// The dispatcher's state for one message.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MessageState {
    /// Attempts made (counted ones: not reconnects of a dead reused connection).
    pub attempts: u32,
    /// Not before this Unix time (seconds) may it be tried again; 0 = now.
    pub next_due: i64,
    /// Recipients still to do; `None` = every envelope recipient.
    pub remaining: Option<Vec<String>>,
    /// Recipients the relay accepted.
    pub delivered: Vec<String>,
    /// Recipients that failed for good.
    pub failed: Vec<FailedRcpt>,
    /// Why the message as a whole failed (lifetime exceeded, refused content, ...).
    pub reason: Option<String>,
    /// When `requeue-failed` last put it back (restarts the queue lifetime), Unix seconds.
    pub requeued_at: Option<i64>,
    /// Every attempt, oldest first (at most [`MAX_HISTORY`]).
    pub history: Vec<Attempt>,
}

/// A state file larger than this is not one of ours.
const MAX_STATE_FILE: u64 = 16 << 20;

/// Why a state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// It could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The state file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// It does not parse or does not fit the envelope: the message is quarantined.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The state file of a message.
pub fn state_path(spool: &Path, id: &str) -> PathBuf {
    spool.join(STATE_DIR).join(format!("{id}.json"))
}

impl MessageState {
    /// Loads the state of `id`; `Ok(None)` when it has none. A state file that does not parse
    /// is treated as missing (logged by the caller): the spool file remains the truth.
    ///
    /// # Errors
    /// I/O errors other than not-found.
    pub fn load(spool: &Path, id: &str) -> io::Result<Option<MessageState>> {
        match fs::read(state_path(spool, id)) {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Loads the state of `id` for a claim and checks it against the envelope: `Ok(None)`
    /// when it has none; [`StateError::Invalid`] when it does not parse, or names in
    /// `remaining`, `delivered` or `failed` a recipient that is not one of `envelope`'s (a
    /// state file is untrusted input: a CRLF or a foreign address there must never reach a
    /// relay). The caller quarantines the message then.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn load_checked(
        spool: &Path,
        id: &str,
        envelope: &qmail_core::Envelope,
    ) -> Result<Option<MessageState>, StateError> {
        let path = state_path(spool, id);
        let f = match crate::clock::open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let mut b = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(f, MAX_STATE_FILE), &mut b).map_err(
            |source| StateError::Io {
                path: path.clone(),
                source,
            },
        )?;
        let st: MessageState = serde_json::from_slice(&b).map_err(|e| StateError::Invalid {
            path: path.clone(),
            reason: format!("does not parse: {e}"),
        })?;
        st.check_against(envelope)
            .map_err(|reason| StateError::Invalid { path, reason })?;
        Ok(Some(st))
    }

    /// Checks that every recipient the state names is one of the envelope's, and that the
    /// envelope passes its own wire checks.
    ///
    /// # Errors
    /// The first offending field and value.
    pub fn check_against(&self, envelope: &qmail_core::Envelope) -> Result<(), String> {
        envelope.check_wire_safe()?;
        let known = |r: &String| envelope.rcpt_to.iter().any(|e| e == r);
        for (field, list) in [
            ("remaining", self.remaining.clone().unwrap_or_default()),
            ("delivered", self.delivered.clone()),
            (
                "failed",
                self.failed.iter().map(|f| f.rcpt.clone()).collect(),
            ),
        ] {
            if let Some(r) = list.iter().find(|r| !known(r)) {
                return Err(format!(
                    "{field} names {r:?}, which is not a recipient of the envelope"
                ));
            }
        }
        Ok(())
    }

    /// Writes atomically: `state/ID.json+INSTANCE.tmp`, fsync (when durable), rename.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, spool: &Path, id: &str, instance: &str, durable: bool) -> io::Result<()> {
        let dir = spool.join(STATE_DIR);
        let tmp = dir.join(format!("{id}.json+{instance}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        // 0600: the state names recipients; created exclusively without following a symlink
        // (a stale or planted temporary is unlinked first)
        let mut f = crate::clock::create_exclusive(&tmp, 0o600)?;
        f.write_all(&bytes)?;
        if durable {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, state_path(spool, id))?;
        if durable {
            File::open(&dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Removes the state file (a missing one is fine).
    ///
    /// # Errors
    /// I/O errors other than not-found.
    pub fn remove(spool: &Path, id: &str) -> io::Result<()> {
        match fs::remove_file(state_path(spool, id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Appends an attempt, keeping at most [`MAX_HISTORY`].
    pub fn push_attempt(&mut self, a: Attempt) {
        self.history.push(a);
        if self.history.len() > MAX_HISTORY {
            let extra = self.history.len() - MAX_HISTORY;
            self.history.drain(..extra);
        }
    }

    /// The diagnosis in one line: the message-level reason, or the failed recipients' replies.
    pub fn diagnosis(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.reason {
            parts.push(r.clone());
        }
        for f in &self.failed {
            parts.push(format!("<{}>: {}", f.rcpt, f.reply));
        }
        parts.join("; ")
    }
}
