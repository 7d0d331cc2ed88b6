//! The spool's own clock, and the file operations that keep an untrusted spool from turning
//! the dispatcher against itself.
//!
//! # The clock
//! Lease ages are never measured with this host's wall clock. A renewal sets the lease file's
//! mtime with `utimensat(2)` and `UTIME_NOW`, which the filesystem executes with *its* time
//! (the local kernel's for a local disk; the server's for NFSv3/v4 `SET_TO_SERVER_TIME`, and
//! SMB servers), then reads the stored mtime back. "Now", for judging another dispatcher's
//! lease, is that mtime plus the monotonic time elapsed since (`CLOCK_MONOTONIC`, which a
//! wall-clock step does not move). Every dispatcher on a spool thus compares mtimes written by
//! one clock, and a host whose wall clock is off by an hour judges leases like the others.
//!
//! [`Clock`] is the one seam: [`SpoolClock`] in production, [`SkewedClock`] in tests (it
//! writes explicit times, as a filesystem that trusts its clients would).
//!
//! # Files
//! [`create_exclusive`] creates every file the dispatcher writes (state, outbox, leases,
//! temporaries): a stale name is unlinked first (unlink does not follow a symlink), then the
//! file is created with `O_CREAT|O_EXCL|O_NOFOLLOW`, so a planted symlink or hard link can
//! never redirect the write. [`rename_noreplace`] moves a claim back without replacing a
//! name that exists (`renameat2(RENAME_NOREPLACE)`, or link + unlink where the filesystem
//! lacks it).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, CWD, RenameFlags, Timespec, Timestamps, UTIME_NOW};

/// Sets a file's mtime to "now" and says what was stored.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Sets the mtime (and atime) of `path` to now, without following a symlink, and
    /// returns the mtime as the filesystem stored it.
    ///
    /// # Errors
    /// I/O errors (`NotFound` when the file is gone).
    fn touch(&self, path: &Path) -> io::Result<SystemTime>;
}

/// The production clock: `utimensat(path, UTIME_NOW)`, executed by the filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct SpoolClock;

impl Clock for SpoolClock {
    fn touch(&self, path: &Path) -> io::Result<SystemTime> {
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW,
        };
        let t = Timestamps {
            last_access: now,
            last_modification: now,
        };
        rustix::fs::utimensat(CWD, path, &t, AtFlags::SYMLINK_NOFOLLOW)?;
        fs::symlink_metadata(path)?.modified()
    }
}

/// A test clock that writes this host's wall clock shifted by `offset_secs` (as a network
/// filesystem that takes the client's times would): what the spool clock protects against.
#[derive(Debug, Clone, Copy)]
pub struct SkewedClock {
    /// Seconds added to the wall clock (negative: behind).
    pub offset_secs: i64,
}

impl Clock for SkewedClock {
    fn touch(&self, path: &Path) -> io::Result<SystemTime> {
        let now = SystemTime::now();
        let t = if self.offset_secs >= 0 {
            now + Duration::from_secs(self.offset_secs as u64)
        } else {
            now - Duration::from_secs(self.offset_secs.unsigned_abs())
        };
        let d = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(io::Error::other)?;
        let ts = Timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: i64::from(d.subsec_nanos()),
        };
        rustix::fs::utimensat(
            CWD,
            path,
            &Timestamps {
                last_access: ts,
                last_modification: ts,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        fs::symlink_metadata(path)?.modified()
    }
}

/// `O_NOFOLLOW` as `OpenOptionsExt::custom_flags` takes it.
pub fn o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Creates `path` for writing, exclusively and without following symlinks, with `mode`
/// (0600 for everything the dispatcher writes). A stale file or symlink of that name (a
/// temporary left by a crash, or planted) is unlinked first.
///
/// # Errors
/// I/O errors; `AlreadyExists` when another process created the name between the unlink and
/// the create (never a write through someone else's file).
pub fn create_exclusive(path: &Path, mode: u32) -> io::Result<File> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(o_nofollow() | rustix::fs::OFlags::CLOEXEC.bits() as i32)
        .open(path)
}

/// Opens an existing file for reading without following a symlink at its last component and
/// without blocking on a FIFO (`O_NONBLOCK`, which a regular file ignores); the caller checks
/// the type on the descriptor.
///
/// # Errors
/// I/O errors (`ELOOP` for a symlink).
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    use rustix::fs::OFlags;
    OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK).bits() as i32)
        .open(path)
}

/// Renames `src` to `dst` unless `dst` exists: `renameat2(RENAME_NOREPLACE)`, falling back to
/// `link(2)` + `unlink(2)` where the filesystem does not offer it (both fail with
/// `AlreadyExists` on an existing `dst`).
///
/// # Errors
/// `AlreadyExists` when `dst` exists; `NotFound` when `src` is gone; other I/O errors.
pub fn rename_noreplace(src: &Path, dst: &Path) -> io::Result<()> {
    match rustix::fs::renameat_with(CWD, src, CWD, dst, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            fs::hard_link(src, dst)?;
            fs::remove_file(src)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether an I/O error may go away by itself (disk full, quota, a transient I/O error, a
/// network filesystem's hiccup): worth retrying with backoff. Others (read-only filesystem,
/// permission) are not.
pub fn is_transient(e: &io::Error) -> bool {
    use rustix::io::Errno;
    match e.raw_os_error().map(Errno::from_raw_os_error) {
        Some(n) => [
            Errno::NOSPC,
            Errno::DQUOT,
            Errno::IO,
            Errno::AGAIN,
            Errno::INTR,
            Errno::NOMEM,
            Errno::TIMEDOUT,
            Errno::STALE,
            Errno::BUSY,
            Errno::NFILE,
            Errno::MFILE,
        ]
        .contains(&n),
        None => matches!(
            e.kind(),
            io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
    }
}

/// Exponential backoff for spool I/O errors: 100 ms doubling per consecutive failure, capped
/// at `cap`.
pub fn io_backoff(failures: u32, cap: Duration) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << failures.min(20));
    Duration::from_millis(ms).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_exclusive_never_writes_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let p = d.path().join("x.tmp");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        use std::io::Write;
        create_exclusive(&p, 0o600)
            .unwrap()
            .write_all(b"new")
            .unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
    }

    #[test]
    fn rename_noreplace_keeps_the_existing_name() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        fs::write(&a, b"a").unwrap();
        fs::write(&b, b"b").unwrap();
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&b).unwrap(), b"b");
        fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert_eq!(fs::read(&b).unwrap(), b"a");
    }

    #[test]
    fn spool_clock_sets_the_filesystem_time() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        fs::write(&p, b"").unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let t = SpoolClock.touch(&p).unwrap();
        assert!(t > old);
        assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), t);
        let s = SkewedClock { offset_secs: -3600 }.touch(&p).unwrap();
        assert!(t.duration_since(s).unwrap() >= Duration::from_secs(3590));
    }
}
