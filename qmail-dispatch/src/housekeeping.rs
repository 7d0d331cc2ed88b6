//! Housekeeping: stale temporaries left by crashes, retention of `sent/`, `failed/` and
//! `corrupt/`.

#![allow(unused_imports)]
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qmail_core::error::{Error, ErrorKind, Result};
use qmail_core::spool::{QueueState, Spool, SpoolFile, now_secs};

use crate::dispatcher::{Shared, io_err};
use crate::relay::RelayPool;
use crate::retry::Jitter;
use crate::schedule::{self, Candidate, CandidateQueue, Dir, Pop};
use crate::smtp::{Session, Transaction, TxError};
use crate::worker::{Claimed, Worker, now_ms};
use crate::*;

/// Files an initiator or a dispatcher left half-written by a crash: `tmp/*` and the
/// `*.tmp` of `state/` and `outbox/`, older than a day.
pub(crate) fn purge_stale(spool: &Path) {
    let old = SystemTime::now() - Duration::from_secs(86_400);
    for (dir, all) in [
        ("tmp", true),
        (state::STATE_DIR, false),
        (OUTBOX_DIR, false),
    ] {
        let Ok(rd) = fs::read_dir(spool.join(dir)) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let stale_name = all || name.to_string_lossy().ends_with(".tmp");
            if stale_name
                && let Ok(m) = e.metadata().and_then(|m| m.modified())
                && m < old
            {
                tracing::info!(file = %e.path().display(), "removing a stale temporary file");
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

pub(crate) fn purge_sent(spool: &Path, retention: u64) {
    use std::os::unix::fs::MetadataExt;
    let now = now_secs();
    if let Ok(rd) = fs::read_dir(spool.join(SENT_DIR)) {
        for e in rd.flatten() {
            if let Ok(m) = e.metadata()
                && now - m.ctime() > retention as i64
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Retention of `failed/` and `corrupt/` (`failed_retention_secs`, `corrupt_retention_secs`).
pub(crate) fn purge_retention(spool: &Path, cfg: &DispatchConfig) {
    crate::admin::ops::purge_expired(spool, cfg.failed_retention_secs, cfg.corrupt_retention_secs);
}
