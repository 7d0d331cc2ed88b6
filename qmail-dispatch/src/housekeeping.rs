//! Housekeeping: stale temporaries left by crashes, retention of `sent/`, `failed/` and
//! `corrupt/`, and the check that a spool's directories are safe to serve (contract C2 of the
//! two-user layout).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use qmail_core::error::{Error, ErrorKind, Result};
use qmail_core::spool::now_secs;

use crate::*;

/// Files an initiator or a dispatcher left half-written by a crash: `tmp/*` and the `*.tmp`
/// of `state/`, `outbox/` and `leases/`, older than `max_age_secs` in the spool's clock
/// (`now`, see [`crate::clock`]). Symlinks are removed as links, never followed. Returns how
/// many files and bytes were removed.
pub(crate) fn purge_stale(spool: &Path, max_age_secs: u64, now: SystemTime) -> (u64, u64) {
    let old = now
        .checked_sub(Duration::from_secs(max_age_secs))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let (mut files, mut bytes) = (0u64, 0u64);
    for (dir, all) in [
        ("tmp", true),
        (state::STATE_DIR, false),
        (OUTBOX_DIR, false),
        (claim::LEASE_DIR, false),
    ] {
        let Ok(rd) = fs::read_dir(spool.join(dir)) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let stale_name = all || name.to_string_lossy().ends_with(".tmp");
            if !stale_name {
                continue;
            }
            let Ok(m) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() {
                continue;
            }
            if m.modified().is_ok_and(|t| t < old) {
                tracing::info!(file = %e.path().display(), bytes = m.len(), "removing a stale temporary file");
                if fs::remove_file(e.path()).is_ok() {
                    files += 1;
                    bytes += m.len();
                }
            }
        }
    }
    (files, bytes)
}

pub(crate) fn purge_sent(spool: &Path, retention: u64) {
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

/// Directories only the dispatcher writes (contract C2): owned by its user, never group- or
/// world-writable.
pub const DISPATCHER_DIRS: [&str; 10] = [
    "active", "deferred", "failed", "corrupt", "state", "leases", "outbox", "sent", "hold", "",
];
/// Directories initiators write (contract C2): owned by the dispatcher's user, may be
/// group-writable (the submit group), never world-writable.
pub const SUBMIT_DIRS: [&str; 3] = ["tmp", "ready", "scheduled"];

/// Refuses to serve a spool whose directories others could tamper with: a dispatcher-only
/// directory (and the spool root) not owned by this process's effective uid or writable by
/// group or others; a submit directory not owned by it or world-writable; any of them a
/// symlink. Missing directories are fine (they are created as needed, 0700).
///
/// # Errors
/// [`ErrorKind::SpoolUnavailable`] naming the directory, the owner and mode found, and the
/// fix.
pub fn check_layout(spool: &Path) -> Result<()> {
    let me = rustix::process::geteuid().as_raw();
    let check = |name: &str, forbidden: u32, what: &str| -> Result<()> {
        let p = if name.is_empty() {
            spool.to_owned()
        } else {
            spool.join(name)
        };
        let m = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::SpoolUnavailable,
                    format!("cannot inspect {}: {e}", p.display()),
                ));
            }
        };
        let mode = m.mode() & 0o7777;
        let bad = if !m.is_dir() {
            Some("is not a directory (a symlink or a file)".to_owned())
        } else if m.uid() != me {
            Some(format!(
                "is owned by uid {}, not this dispatcher's uid {me}",
                m.uid()
            ))
        } else if mode & forbidden != 0 {
            Some(format!("has mode {mode:04o}: {what}"))
        } else {
            None
        };
        match bad {
            None => Ok(()),
            Some(why) => Err(Error::new(
                ErrorKind::SpoolUnavailable,
                format!(
                    "refusing to serve {}: {} {why} (owner uid {}, mode {mode:04o}); run `qmail-dispatcher spool init {}` as root to repair the layout (docs/spool-format.md, \"Ownership\")",
                    spool.display(),
                    p.display(),
                    m.uid(),
                    spool.display()
                ),
            )
            .with_field("spools")),
        }
    };
    for d in DISPATCHER_DIRS {
        check(
            d,
            0o022,
            "others could plant or replace files the dispatcher trusts",
        )?;
    }
    for d in SUBMIT_DIRS {
        check(d, 0o002, "anyone could plant files")?;
    }
    Ok(())
}

/// Retention of `failed/` and `corrupt/` (`failed_retention_secs`, `corrupt_retention_secs`).
pub(crate) fn purge_retention(spool: &Path, cfg: &DispatchConfig) {
    crate::admin::ops::purge_expired(spool, cfg.failed_retention_secs, cfg.corrupt_retention_secs);
}
