//! Claiming: which dispatcher sends a message. No advisory locks (unreliable over NFS/SMB):
//! only `rename(2)`, which is atomic on a local filesystem and on NFS/SMB servers.
//!
//! - Every dispatcher process has an **instance id**, `HOST-PID-RANDOM`, and a **lease file**
//!   `SPOOL/leases/INSTANCE` whose mtime it renews every `lease_secs / 6` with the spool's
//!   own clock ([`crate::clock`]). The lease file records the owner's full host name, boot id
//!   and PID-namespace identity ([`Identity`]).
//! - A renewal that finds the lease file gone recreates it (and warns). A dispatcher whose
//!   own lease is not **fresh** (last renewal more than `lease_secs / 2` ago, by the monotonic
//!   clock) claims nothing and starts no DATA; any gap in renewal longer than that bumps the
//!   lease's epoch, and every claim made before the gap fails its fence ([`Lease::epoch`]).
//! - To claim a message, a dispatcher renames `ready/ID` (or `deferred/ID`, `scheduled/ID` when
//!   due) to `active/ID+INSTANCE`. Exactly one rename of a name succeeds; the losers get
//!   `ENOENT` and move on. `+` never occurs in a queue id, so the name splits unambiguously.
//! - A claim `active/ID+OWNER` is expired when OWNER's lease file is older than `lease_secs`
//!   in the spool's clock; when it has no lease file and the claim itself (its ctime) is older
//!   than `lease_secs`; or when OWNER ran on this very host, boot and PID namespace and its
//!   pid is gone. Any dispatcher then takes it back by renaming it to `ready/ID` without
//!   replacing an existing `ready/ID` (again, exactly one succeeds).
//! - A lease file is removed by another dispatcher only when its owner holds no claim in
//!   `active/` and it is older than ten leases.
//!
//! See `docs/spool-format.md`, "Claiming and dispatcher state".

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use qmail_core::spool::QueueState;

use crate::clock::{self, Clock};
use crate::queue::LeaseHealth;

/// Directory of the lease files, inside a spool.
pub const LEASE_DIR: &str = "leases";
/// Separator between the queue id and the owner in `active/` names.
pub const OWNER_SEP: char = '+';
/// A lease file longer than this is not one of ours (it is read, never trusted blindly).
const MAX_LEASE_FILE: u64 = 4096;

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

/// Who a dispatcher process is, beyond its pid: what decides whether "its pid is gone" can be
/// checked from here. Recorded in its lease file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The full host name (`gethostname(2)`, not its first label).
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id`: changes at every boot.
    pub boot_id: String,
    /// The PID namespace, `/proc/self/ns/pid` as `pid:[INODE]` (a container has its own).
    pub pid_ns: String,
    /// The pid in that namespace.
    pub pid: u32,
}

impl Identity {
    /// This process's identity (empty fields where `/proc` is not mounted: then the pid
    /// shortcut never applies).
    pub fn current() -> Identity {
        Identity {
            host: hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            boot_id: fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            pid_ns: fs::read_link("/proc/self/ns/pid")
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            pid: std::process::id(),
        }
    }

    /// Whether `other` runs on the same host, boot and PID namespace as this one, so that
    /// `/proc/PID` here says whether it lives. Every field must be known and equal.
    pub fn same_pid_space(&self, other: &Identity) -> bool {
        !self.host.is_empty()
            && !self.boot_id.is_empty()
            && !self.pid_ns.is_empty()
            && self.host == other.host
            && self.boot_id == other.boot_id
            && self.pid_ns == other.pid_ns
    }

    fn lease_text(&self, instance: &str) -> String {
        // one key=value a line; values never hold a newline (host names cannot)
        let clean = |s: &str| s.replace(['\n', '\r'], "_");
        format!(
            "instance={}\npid={}\nhost={}\nboot_id={}\npid_ns={}\nstarted={}\n",
            clean(instance),
            self.pid,
            clean(&self.host),
            clean(&self.boot_id),
            clean(&self.pid_ns),
            qmail_core::spool::now_secs()
        )
    }

    /// Parses a lease file's text; `None` when a field is missing.
    pub fn parse_lease(text: &str) -> Option<Identity> {
        let mut m: HashMap<&str, &str> = HashMap::new();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                m.insert(k, v);
            }
        }
        Some(Identity {
            host: (*m.get("host")?).to_owned(),
            boot_id: (*m.get("boot_id")?).to_owned(),
            pid_ns: (*m.get("pid_ns")?).to_owned(),
            pid: m.get("pid")?.parse().ok()?,
        })
    }
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

#[derive(Debug, Clone, Copy)]
struct Renewal {
    /// The lease file's mtime as the filesystem stored it (the spool's clock).
    mtime: SystemTime,
    /// When, by this process's monotonic clock.
    at: Instant,
}

/// The lease of one dispatcher instance on one spool.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    instance: String,
    text: String,
    lease: Duration,
    clock: Arc<dyn Clock>,
    last: Mutex<Renewal>,
    epoch: AtomicU64,
}

impl Lease {
    /// Creates (or, after a reload with the same instance, takes over) `SPOOL/leases/INSTANCE`
    /// with this process's [`Identity`], and renews it.
    ///
    /// # Errors
    /// I/O errors.
    pub fn acquire(
        spool: &Path,
        instance: &str,
        lease: Duration,
        clock: Arc<dyn Clock>,
    ) -> io::Result<Lease> {
        let dir = spool.join(LEASE_DIR);
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(&dir)?;
        let path = dir.join(instance);
        let text = Identity::current().lease_text(instance);
        write_lease(&path, &text)?;
        let mtime = clock.touch(&path)?;
        Ok(Lease {
            path,
            instance: instance.to_owned(),
            text,
            lease,
            clock,
            last: Mutex::new(Renewal {
                mtime,
                at: Instant::now(),
            }),
            epoch: AtomicU64::new(0),
        })
    }

    /// The lease file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The owner's instance id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn last(&self) -> Renewal {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renews the lease: sets the file's mtime to the spool's "now". A missing lease file is
    /// recreated (with a warning: someone removed it). A renewal after a gap longer than half
    /// a lease (this process was stopped, or renewal failed) bumps the [epoch](Lease::epoch).
    ///
    /// # Errors
    /// I/O errors (the lease then ages: claiming and DATA stop at half a lease).
    pub fn renew(&self) -> io::Result<()> {
        let before = self.last();
        let mtime = match self.clock.touch(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(lease = %self.path.display(),
                    "the lease file was removed; recreating it (claims made before are abandoned at their next fence)");
                self.epoch.fetch_add(1, Ordering::SeqCst);
                write_lease(&self.path, &self.text)?;
                self.clock.touch(&self.path)?
            }
            Err(e) => return Err(e),
        };
        if before.at.elapsed() > self.lease / 2 {
            self.epoch.fetch_add(1, Ordering::SeqCst);
            tracing::warn!(lease = %self.path.display(), gap_ms = before.at.elapsed().as_millis() as u64,
                "lease renewed after a gap of more than half a lease; claims made before it are abandoned");
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Renewal {
            mtime,
            at: Instant::now(),
        };
        Ok(())
    }

    /// Changes whenever the lease went stale or was recreated: a claim made under another
    /// epoch may have been taken back.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Renewed within half a lease (by the monotonic clock, which keeps running while the
    /// process is stopped).
    pub fn is_fresh(&self) -> bool {
        self.last().at.elapsed() <= self.lease / 2
    }

    /// [`LeaseHealth`] for the queue seam.
    pub fn health(&self) -> LeaseHealth {
        let age = self.last().at.elapsed();
        if age <= self.lease / 2 {
            LeaseHealth::Fresh
        } else {
            LeaseHealth::Stale { age }
        }
    }

    /// The spool's "now": the mtime of the last renewal plus the monotonic time since.
    pub fn spool_now(&self) -> SystemTime {
        let l = self.last();
        l.mtime + l.at.elapsed()
    }

    /// Removes the lease file (clean shutdown, after every claim is released).
    pub fn release(&self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn write_lease(path: &Path, text: &str) -> io::Result<()> {
    // a temporary then a rename: a reader sees a whole lease or none
    let tmp = path.with_extension("tmp");
    let mut f = clock::create_exclusive(&tmp, 0o600)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() || !Path::new("/proc/self").exists()
}

fn read_lease(path: &Path) -> io::Result<(fs::Metadata, String)> {
    let f = clock::open_nofollow(path)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut s = String::new();
    f.take(MAX_LEASE_FILE).read_to_string(&mut s)?;
    Ok((m, s))
}

fn age(now: SystemTime, t: SystemTime) -> Duration {
    now.duration_since(t).unwrap_or(Duration::ZERO)
}

/// True when `owner`'s claim `claim_path` may be taken back. `now` is the spool's now
/// ([`Lease::spool_now`] of the checker's own lease).
pub fn owner_expired(
    spool: &Path,
    owner: &str,
    claim_path: &Path,
    lease: Duration,
    me: &Identity,
    now: SystemTime,
) -> bool {
    match read_lease(&spool.join(LEASE_DIR).join(owner)) {
        Ok((m, text)) => {
            if let Some(them) = Identity::parse_lease(&text)
                && me.same_pid_space(&them)
                && them.pid != me.pid
                && !pid_alive(them.pid)
            {
                return true;
            }
            m.modified().map(|t| age(now, t) > lease).unwrap_or(false)
        }
        Err(_) => {
            // no lease file: the claim itself gets one lease period from its rename (ctime,
            // set by the filesystem's clock)
            match fs::symlink_metadata(claim_path) {
                Ok(m) => {
                    let ctime = SystemTime::UNIX_EPOCH
                        + Duration::new(m.ctime().max(0) as u64, m.ctime_nsec().max(0) as u32);
                    age(now, ctime) > lease
                }
                Err(_) => false,
            }
        }
    }
}

/// The host tag used in this process's instance ids.
pub fn my_host() -> String {
    host_tag()
}

/// What one [`reclaim_expired`] pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// Queue ids taken back to `ready/`.
    pub ids: Vec<String>,
    /// Claims moved to `corrupt/` because `ready/ID` already existed (two copies of one id).
    pub conflicts: Vec<String>,
    /// Lease files removed (owners long gone, holding nothing).
    pub leases_removed: usize,
}

/// Takes back every expired claim of `spool`: `active/ID+OWNER` → `ready/ID`, never replacing
/// an existing `ready/ID`. Claims of `instance` (this process) are left alone.
///
/// # Errors
/// When `active/` cannot be read.
pub fn reclaim_expired(
    spool: &Path,
    instance: &str,
    lease: Duration,
    me: &Identity,
    now: SystemTime,
) -> io::Result<Reclaimed> {
    let active = spool.join(QueueState::Active.dir_name());
    let ready = spool.join(QueueState::Ready.dir_name());
    let mut out = Reclaimed::default();
    let mut checked: HashMap<String, bool> = HashMap::new();
    let mut holders: std::collections::HashSet<String> = std::collections::HashSet::new();
    for ent in fs::read_dir(&active)? {
        let Ok(ent) = ent else { continue };
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((id, owner)) = split_claim_name(name) else {
            continue;
        };
        holders.insert(owner.to_owned());
        if owner == instance || qmail_core::QueueId::parse(id).is_err() {
            continue;
        }
        let path = ent.path();
        let expired = *checked
            .entry(owner.to_owned())
            .or_insert_with(|| owner_expired(spool, owner, &path, lease, me, now));
        if !expired {
            continue;
        }
        match clock::rename_noreplace(&path, &ready.join(id)) {
            Ok(()) => out.ids.push(id.to_owned()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let dst = spool.join(QueueState::Corrupt.dir_name()).join(name);
                tracing::error!(id, claim = %path.display(),
                    "an expired claim's ready/ name exists already (two copies of one id): the claim goes to corrupt/");
                if clock::rename_noreplace(&path, &dst).is_ok() {
                    out.conflicts.push(id.to_owned());
                }
            }
            Err(_) => {}
        }
    }
    // lease files of owners with no claims left and long expired
    if let Ok(rd) = fs::read_dir(spool.join(LEASE_DIR)) {
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if name == instance || holders.contains(&name) || name.ends_with(".tmp") {
                continue;
            }
            if let Ok(m) = fs::symlink_metadata(ent.path())
                && let Ok(t) = m.modified()
                && age(now, t) > lease * 10
            {
                let _ = fs::remove_file(ent.path());
                out.leases_removed += 1;
            }
        }
    }
    Ok(out)
}

/// Releases a claim: `active/ID+INSTANCE` → `to/ID`.
///
/// # Errors
/// I/O errors (`NotFound`: the claim was taken back by another dispatcher).
pub fn release(claimed: &Path, spool: &Path, id: &str, to: QueueState) -> io::Result<()> {
    fs::rename(claimed, spool.join(to.dir_name()).join(id))
}

/// Gives a claim back to `to/ID` without replacing an existing name there.
///
/// # Errors
/// `AlreadyExists` (another copy exists), `NotFound` (taken back), other I/O errors.
pub fn give_back(claimed: &Path, spool: &Path, id: &str, to: QueueState) -> io::Result<()> {
    clock::rename_noreplace(claimed, &spool.join(to.dir_name()).join(id))
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

    #[test]
    fn identity_round_trips_through_the_lease_text() {
        let me = Identity::current();
        let t = me.lease_text("x-1-ab");
        assert_eq!(Identity::parse_lease(&t), Some(me.clone()));
        assert!(me.same_pid_space(&me));
        let other = Identity {
            pid_ns: "pid:[1]".into(),
            ..me.clone()
        };
        assert!(!me.same_pid_space(&other));
    }
}
