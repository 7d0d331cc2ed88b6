//! Claiming: which dispatcher sends a message. No advisory locks (unreliable over NFS/SMB):
//! only `rename(2)`, which is atomic on a local filesystem and on NFS/SMB servers.
//!
//! - Every dispatcher process has an **instance id**, `HOST-PID-RANDOM`, and a **lease file**
//!   `SPOOL/leases/INSTANCE` whose mtime it renews every `lease_secs / 4`.
//! - To claim a message, a dispatcher renames `ready/ID` (or `deferred/ID`, `scheduled/ID` when
//!   due) to `active/ID+INSTANCE`. Exactly one rename of a name succeeds; the losers get
//!   `ENOENT` and move on. `+` never occurs in a queue id, so the name splits unambiguously.
//! - A claim `active/ID+OWNER` is expired when OWNER's lease file is missing or older than
//!   `lease_secs`, or when OWNER ran on this host and its pid is gone. Any dispatcher then
//!   takes it back by renaming it to `ready/ID` (again, exactly one succeeds).
//!
//! See `docs/spool-format.md`, "Claiming and dispatcher state".

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use qmail_core::spool::QueueState;

/// Directory of the lease files, inside a spool.
pub const LEASE_DIR: &str = "leases";
/// Separator between the queue id and the owner in `active/` names.
pub const OWNER_SEP: char = '+';

fn host_tag() -> String {
    // '-' separates the parts of an instance id, so it is replaced too
    qmail_core::spool::short_host_name(|c| c.is_ascii_alphanumeric())
}

/// A new instance id for this process: `HOST-PID-RANDOM` (host without dashes).
pub fn new_instance_id() -> String {
    format!(
        "{}-{}-{}",
        host_tag(),
        std::process::id(),
        qmail_core::random_hex(4)
    )
}

/// The host and pid of an instance id.
pub fn parse_instance(inst: &str) -> Option<(&str, u32)> {
    let mut it = inst.rsplitn(3, '-');
    let _rand = it.next()?;
    let pid = it.next()?.parse().ok()?;
    let host = it.next()?;
    Some((host, pid))
}

/// The `active/` name of a claim.
pub fn claim_name(id: &str, instance: &str) -> String {
    format!("{id}{OWNER_SEP}{instance}")
}

/// Splits an `active/` name into queue id and owner.
pub fn split_claim_name(name: &str) -> Option<(&str, &str)> {
    name.split_once(OWNER_SEP)
}

/// Claims `from/ID` by renaming it to `active/ID+INSTANCE`. `Ok(None)`: another dispatcher
/// was first (or it moved).
///
/// # Errors
/// Other I/O errors.
pub fn claim(
    spool: &Path,
    id: &str,
    from: QueueState,
    instance: &str,
) -> io::Result<Option<PathBuf>> {
    let src = spool.join(from.dir_name()).join(id);
    let dst = spool
        .join(QueueState::Active.dir_name())
        .join(claim_name(id, instance));
    match fs::rename(&src, &dst) {
        Ok(()) => Ok(Some(dst)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The lease of one dispatcher instance on one spool.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
}

impl Lease {
    /// Creates (or renews) `SPOOL/leases/INSTANCE`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn acquire(spool: &Path, instance: &str) -> io::Result<Lease> {
        let dir = spool.join(LEASE_DIR);
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(&dir)?;
        let path = dir.join(instance);
        let mut f = std::os::unix::fs::OpenOptionsExt::mode(
            OpenOptions::new().write(true).create(true).truncate(true),
            0o600,
        )
        .open(&path)?;
        writeln!(
            f,
            "instance={instance}\npid={}\nstarted={}",
            std::process::id(),
            qmail_core::spool::now_secs()
        )?;
        f.sync_all()?;
        Ok(Lease { path })
    }

    /// Renews the lease (sets the file's mtime to now).
    ///
    /// # Errors
    /// I/O errors.
    pub fn renew(&self) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(&self.path)?;
        f.set_modified(SystemTime::now())
    }

    /// Removes the lease file (clean shutdown, after every claim is released).
    pub fn release(&self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() || !Path::new("/proc/self").exists()
}

/// True when `owner`'s claims may be taken back.
pub fn owner_expired(spool: &Path, owner: &str, lease: Duration, my_host: &str) -> bool {
    if let Some((host, pid)) = parse_instance(owner)
        && host == my_host
        && pid != std::process::id()
        && !pid_alive(pid)
    {
        return true;
    }
    match fs::metadata(spool.join(LEASE_DIR).join(owner)).and_then(|m| m.modified()) {
        Ok(t) => SystemTime::now()
            .duration_since(t)
            .map(|age| age > lease)
            .unwrap_or(false),
        Err(_) => {
            // no lease file: give a claim made a moment ago (lease written first, so this is
            // an owner that released or never existed) the benefit of one lease period
            true
        }
    }
}

/// The host tag used in this process's instance ids.
pub fn my_host() -> String {
    host_tag()
}

/// Takes back every expired claim of `spool`: `active/ID+OWNER` → `ready/ID`. Returns the
/// queue ids taken back. Claims of `instance` (this process) are left alone.
///
/// # Errors
/// When `active/` cannot be read.
pub fn reclaim_expired(spool: &Path, instance: &str, lease: Duration) -> io::Result<Vec<String>> {
    let host = my_host();
    let active = spool.join(QueueState::Active.dir_name());
    let ready = spool.join(QueueState::Ready.dir_name());
    let mut back = Vec::new();
    let mut checked: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
    for ent in fs::read_dir(&active)? {
        let Ok(ent) = ent else { continue };
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((id, owner)) = split_claim_name(name) else {
            continue;
        };
        if owner == instance {
            continue;
        }
        let expired = *checked
            .entry(owner.to_owned())
            .or_insert_with(|| owner_expired(spool, owner, lease, &host));
        if expired && fs::rename(ent.path(), ready.join(id)).is_ok() {
            back.push(id.to_owned());
        }
    }
    // lease files of owners with no claims left and long expired
    if let Ok(rd) = fs::read_dir(spool.join(LEASE_DIR)) {
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if name != instance
                && let Ok(m) = ent.metadata().and_then(|m| m.modified())
                && SystemTime::now()
                    .duration_since(m)
                    .map(|a| a > lease * 10)
                    .unwrap_or(false)
            {
                let _ = fs::remove_file(ent.path());
            }
        }
    }
    Ok(back)
}

/// Releases a claim: `active/ID+INSTANCE` → `to/ID`.
///
/// # Errors
/// I/O errors (`NotFound`: the claim was taken back by another dispatcher).
pub fn release(claimed: &Path, spool: &Path, id: &str, to: QueueState) -> io::Result<()> {
    fs::rename(claimed, spool.join(to.dir_name()).join(id))
}

pub use qmail_core::spool::sync_dir;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let inst = new_instance_id();
        let (h, p) = parse_instance(&inst).unwrap();
        assert_eq!((h, p), (my_host().as_str(), std::process::id()));
        let n = claim_name("1.2.3.4.ab.web1", &inst);
        assert_eq!(
            split_claim_name(&n),
            Some(("1.2.3.4.ab.web1", inst.as_str()))
        );
    }
}
