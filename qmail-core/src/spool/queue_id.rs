//! Queue ids: the spool file names, unique across processes and hosts without locks.
//!
//! Like Maildir's names: `SECONDS.MICROS.PID.COUNTER.RANDOM.HOST`, e.g.
//! `1764441600.123456.4242.7.9f1c03a2b4d5e6f7.web1`. The time orders them roughly by age; pid
//! and a per-process counter separate submits on one host; 64 random bits and the host name
//! separate hosts sharing a spool over NFS/SMB (and pids reused after a restart).

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorKind, Result};

/// Maximum length of a queue id, in bytes.
pub const MAX_LEN: usize = 128;

/// A spool file name. Holding one means it is valid: `[A-Za-z0-9._-]`, 1..=128 bytes, not
/// starting with '.'.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

/// The id returned by a submit (the issue's `MessageId`): the queue id under which the
/// dispatcher knows the message (`qmail-dispatcher show ID`). Not the Message-ID header.
pub type MessageId = QueueId;

/// The first label of this host's name, at most 32 characters, each character for which
/// `keep` is false replaced by '_'; `"host"` when the name is unknown. Queue ids and
/// dispatcher instance ids carry it.
pub fn short_host_name(keep: impl Fn(char) -> bool) -> String {
    let h = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let short: String = h
        .split('.')
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| if keep(c) { c } else { '_' })
        .take(32)
        .collect();
    if short.is_empty() {
        "host".to_owned()
    } else {
        short
    }
}

fn host_tag() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| short_host_name(|c| c.is_ascii_alphanumeric() || c == '-'))
}

impl QueueId {
    /// A new id, unique across processes and hosts.
    pub fn generate() -> QueueId {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        QueueId(format!(
            "{}.{:06}.{}.{}.{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            n,
            crate::random_hex(8),
            host_tag()
        ))
    }

    /// Parses and validates a queue id.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming `id`.
    pub fn parse(s: &str) -> Result<QueueId> {
        let ok = !s.is_empty()
            && s.len() <= MAX_LEN
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{s:?} is not a queue id"),
            )
            .with_field("id"));
        }
        Ok(QueueId(s.to_owned()))
    }

    /// The id as a string (also the file name).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Seconds since the Unix epoch at which the id was made, when it has the usual form.
    pub fn created_secs(&self) -> Option<i64> {
        self.0.split('.').next()?.parse().ok()
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for QueueId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        QueueId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn unique_and_valid() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = QueueId::generate();
            assert!(QueueId::parse(id.as_str()).is_ok());
            assert!(seen.insert(id));
        }
        assert!(QueueId::parse("../etc").is_err());
        assert!(QueueId::parse("a/b").is_err());
    }
}
