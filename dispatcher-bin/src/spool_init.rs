//! `qmail-dispatcher spool init DIR`: creates or repairs a spool for two users, the layout of
//! Postfix's maildrop/postdrop adapted (docs/dispatcher.md, "Two users"; contract C2):
//!
//! ```text
//! DIR/                          dispatcher user, submit group, 0750
//! DIR/tmp/ ready/ scheduled/    dispatcher user, submit group, 3730 (setgid, sticky, no group read)
//! DIR/active/ deferred/ ...     dispatcher user, its own group, 0700
//! ```
//! Initiators (web users in the submit group) create `tmp/ID` and rename it into `ready/` or
//! `scheduled/`; setgid keeps the submit group on their files, which are created 0640 so the
//! dispatcher (a member of the group) reads them; sticky stops one web user removing another's
//! file; without group read no web user lists the queue. Everything else is the dispatcher's.
//!
//! Repair: existing directories get the owners and modes above; files in the queue directories
//! get the submit group and group read (0600 files of an older qmail become readable by the
//! dispatcher); files in the dispatcher's own directories get the dispatcher user. Every file
//! and directory is opened with `O_NOFOLLOW` and changed through its descriptor, so a web user
//! who swaps a file for a symbolic link cannot redirect a chown or chmod run as root.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::fcntl::OFlag;
use nix::unistd::{Group, User};

/// The directories initiators write (tmp/, ready/, scheduled/): mode 3730.
pub const SUBMIT_DIRS: [&str; 3] = ["tmp", "ready", "scheduled"];
/// The directories only the dispatcher uses: mode 0700.
pub const DISPATCHER_DIRS: [&str; 9] = [
    "active", "deferred", "failed", "corrupt", "hold", "state", "leases", "outbox", "sent",
];
/// Mode of the spool root.
pub const ROOT_MODE: u32 = 0o750;
/// Mode of the submit directories: setgid | sticky | rwx for the owner, wx for the group.
pub const SUBMIT_MODE: u32 = 0o3730;
/// Mode of the dispatcher's own directories.
pub const DISPATCHER_MODE: u32 = 0o700;

/// `spool` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SpoolCommand {
    /// Create or repair a spool for a web user (submit group) and the dispatcher user.
    Init(InitArgs),
}

/// `spool init` options.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The spool directory (created with its parents when missing).
    pub dir: PathBuf,
    /// The group of the users that submit (web applications); the dispatcher user must be a
    /// member of it.
    #[arg(long, default_value = "qmail-submit")]
    pub submit_group: String,
    /// The user the dispatcher runs as (owner of the whole tree).
    #[arg(long, default_value = "qmail")]
    pub user: String,
}

/// Runs a `spool` subcommand.
pub fn run(cmd: &SpoolCommand) -> Result<()> {
    match cmd {
        SpoolCommand::Init(a) => init(a),
    }
}

struct Ids {
    uid: u32,
    user_gid: u32,
    submit_gid: u32,
}

fn lookup(a: &InitArgs) -> Result<Ids> {
    let user = User::from_name(&a.user)
        .with_context(|| format!("--user {}: cannot look the user up", a.user))?
        .with_context(|| {
            format!(
                "--user {}: no such user (create it: useradd --system --no-create-home {})",
                a.user, a.user
            )
        })?;
    let group = Group::from_name(&a.submit_group)
        .with_context(|| {
            format!(
                "--submit-group {}: cannot look the group up",
                a.submit_group
            )
        })?
        .with_context(|| {
            format!(
                "--submit-group {}: no such group (create it: groupadd --system {})",
                a.submit_group, a.submit_group
            )
        })?;
    let member = user.gid == group.gid || group.mem.iter().any(|m| m == &a.user);
    if !member {
        bail!(
            "--user {} is not a member of --submit-group {}: the dispatcher could not read \
             what web users submit (fix: usermod -aG {} {})",
            a.user,
            a.submit_group,
            a.submit_group,
            a.user
        );
    }
    Ok(Ids {
        uid: user.uid.as_raw(),
        user_gid: user.gid.as_raw(),
        submit_gid: group.gid.as_raw(),
    })
}

/// Opens a directory or a regular file without following a symbolic link (and without
/// blocking on a FIFO someone put there).
fn open_nofollow(p: &Path, dir: bool) -> std::io::Result<File> {
    let mut flags = OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    if dir {
        flags |= OFlag::O_DIRECTORY;
    }
    OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(p)
}

/// Gives an open file or directory an owner, a group and a mode; says what changed.
fn set(f: &File, p: &Path, uid: u32, gid: u32, mode: u32, changed: &mut Vec<String>) -> Result<()> {
    let m = f
        .metadata()
        .with_context(|| format!("stat {}", p.display()))?;
    if m.uid() != uid || m.gid() != gid {
        std::os::unix::fs::fchown(f, Some(uid), Some(gid))
            .with_context(|| format!("cannot chown {} to {uid}:{gid}", p.display()))?;
        changed.push(format!(
            "{}: owner {}:{} -> {uid}:{gid}",
            p.display(),
            m.uid(),
            m.gid()
        ));
    }
    // chown may clear setgid: compare with what is there now
    let now = f
        .metadata()
        .with_context(|| format!("stat {}", p.display()))?
        .permissions()
        .mode()
        & 0o7777;
    if now != mode {
        f.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot chmod {} to {mode:o}", p.display()))?;
        changed.push(format!("{}: mode {now:o} -> {mode:o}", p.display()));
    }
    Ok(())
}

fn ensure_dir(p: &Path, created: &mut Vec<String>) -> Result<File> {
    match fs::DirBuilder::new().mode(0o700).create(p) {
        Ok(()) => created.push(format!("{}: created", p.display())),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", p.display())),
    }
    open_nofollow(p, true).with_context(|| {
        format!(
            "{} is not a directory (or is a symbolic link): move it away and run spool init again",
            p.display()
        )
    })
}

/// Repairs the regular files directly in `dir`: owner (when given), group, mode bits.
fn repair_files(
    dir: &Path,
    uid: Option<u32>,
    gid: u32,
    mode: impl Fn(u32) -> u32,
    changed: &mut Vec<String>,
) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let p = entry.path();
        let f = match open_nofollow(&p, false) {
            Ok(f) => f,
            // gone meanwhile (delivered, renamed): nothing to repair
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => {
                // a symbolic link (ELOOP) or something unopenable: report, never follow
                eprintln!(
                    "qmail-dispatcher: spool init: left {} alone: {e}",
                    p.display()
                );
                continue;
            }
        };
        let m = f
            .metadata()
            .with_context(|| format!("stat {}", p.display()))?;
        if !m.is_file() {
            if !m.is_dir() {
                eprintln!(
                    "qmail-dispatcher: spool init: left {} alone: not a regular file",
                    p.display()
                );
            }
            continue;
        }
        let want = mode(m.permissions().mode() & 0o7777);
        set(&f, &p, uid.unwrap_or(m.uid()), gid, want, changed)?;
    }
    Ok(())
}

fn init(a: &InitArgs) -> Result<()> {
    let ids = lookup(a)?;
    let root = &a.dir;
    let mut log = Vec::new();
    if !root.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        log.push(format!("{}: created", root.display()));
    }
    // the root may be a symbolic link an administrator made (/var/spool/qmail -> /srv/...):
    // resolve it once; below it nothing is followed
    let root = fs::canonicalize(root).with_context(|| format!("{}", root.display()))?;
    let r = open_nofollow(&root, true)
        .with_context(|| format!("{} is not a directory", root.display()))?;
    set(&r, &root, ids.uid, ids.submit_gid, ROOT_MODE, &mut log)?;
    for d in SUBMIT_DIRS {
        let p = root.join(d);
        let f = ensure_dir(&p, &mut log)?;
        set(&f, &p, ids.uid, ids.submit_gid, SUBMIT_MODE, &mut log)?;
        // files of web users: keep the owner, give the group read, never write for others
        repair_files(
            &p,
            None,
            ids.submit_gid,
            |m| (m | 0o440) & !0o7002,
            &mut log,
        )?;
    }
    for d in DISPATCHER_DIRS {
        let p = root.join(d);
        let f = ensure_dir(&p, &mut log)?;
        set(&f, &p, ids.uid, ids.user_gid, DISPATCHER_MODE, &mut log)?;
        match d {
            // queue states: files written by web users, moved here by the dispatcher
            "active" | "deferred" | "failed" | "corrupt" | "hold" => repair_files(
                &p,
                None,
                ids.submit_gid,
                |m| (m | 0o440) & !0o7002,
                &mut log,
            )?,
            // the dispatcher's own files (state, leases, outbox, sent, keys): its alone
            _ => repair_files(&p, Some(ids.uid), ids.user_gid, |m| m & 0o600, &mut log)?,
        }
    }
    for l in &log {
        println!("{l}");
    }
    println!(
        "spool {} ready: dispatcher user {}, submit group {} ({} change(s))",
        root.display(),
        a.user,
        a.submit_group,
        log.len()
    );
    Ok(())
}
