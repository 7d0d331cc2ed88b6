//! What `check-config` checks besides the configuration's syntax: what `run` will need, as the
//! user it is run as (run it as the service's user: `sudo -u qmail qmail-dispatcher
//! --config /etc/qmail/dispatcher.toml check-config`). Each problem names the path, what was
//! found and what is needed; `check-config` exits non-zero when there is one.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::{AccessFlags, access};

use crate::settings::Settings;

/// The queue directories the dispatcher lists and renames in and out of.
const QUEUE_DIRS: [&str; 7] = [
    "tmp",
    "ready",
    "scheduled",
    "active",
    "deferred",
    "failed",
    "corrupt",
];

/// Prints every finding to stderr (`error: …`, `warning: …`) and, when any is an error, the
/// summary line naming `command` (what would fail); returns whether there was none.
pub fn report(findings: &[Finding], command: &str) -> bool {
    for f in findings {
        match f {
            Finding::Error(m) => eprintln!("error: {m}"),
            Finding::Warning(m) => eprintln!("warning: {m}"),
        }
    }
    let errors = findings
        .iter()
        .filter(|f| matches!(f, Finding::Error(_)))
        .count();
    if errors > 0 {
        eprintln!("qmail-dispatcher: check-config: {errors} problem(s); `{command}` would fail");
    }
    errors == 0
}

/// One finding: an error stops `run`; a warning may not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// `run` would fail or serve nothing.
    Error(String),
    /// Worth knowing; `run` works.
    Warning(String),
}

fn mode_owner(p: &Path) -> String {
    match fs::symlink_metadata(p) {
        Ok(m) => format!(
            "owner uid {} gid {} mode {:o}",
            m.uid(),
            m.gid(),
            m.mode() & 0o7777
        ),
        Err(e) => format!("{e}"),
    }
}

fn spool(root: &Path, out: &mut Vec<Finding>) {
    let fix = format!("qmail-dispatcher spool init {}", root.display());
    match fs::metadata(root) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // run creates it (single-user set-ups): it needs the parent writable
            let parent = root.parent().unwrap_or(Path::new("/"));
            if access(parent, AccessFlags::W_OK | AccessFlags::X_OK).is_err() {
                out.push(Finding::Error(format!(
                    "spool {}: does not exist and {} is not writable by this user ({}); \
                     create it: {fix}",
                    root.display(),
                    parent.display(),
                    mode_owner(parent)
                )));
            }
            return;
        }
        Err(e) => {
            out.push(Finding::Error(format!("spool {}: {e}", root.display())));
            return;
        }
        Ok(m) if !m.is_dir() => {
            out.push(Finding::Error(format!(
                "spool {}: not a directory",
                root.display()
            )));
            return;
        }
        Ok(_) => {}
    }
    if access(
        root,
        AccessFlags::R_OK | AccessFlags::W_OK | AccessFlags::X_OK,
    )
    .is_err()
    {
        out.push(Finding::Error(format!(
            "spool {}: this user cannot list and create in it ({}); needs rwx: {fix}",
            root.display(),
            mode_owner(root)
        )));
        return;
    }
    for d in QUEUE_DIRS {
        let p = root.join(d);
        match fs::symlink_metadata(&p) {
            Err(e) if e.kind() == ErrorKind::NotFound => {} // run creates it
            Err(e) => out.push(Finding::Error(format!("{}: {e}", p.display()))),
            Ok(m) if !m.is_dir() => out.push(Finding::Error(format!(
                "{}: not a directory (a symbolic link or a file): {fix}",
                p.display()
            ))),
            Ok(_) => {
                // list (r), rename in and out (w, x)
                if access(
                    &p,
                    AccessFlags::R_OK | AccessFlags::W_OK | AccessFlags::X_OK,
                )
                .is_err()
                {
                    out.push(Finding::Error(format!(
                        "{}: this user cannot list and rename in it ({}); needs rwx: {fix}",
                        p.display(),
                        mode_owner(&p)
                    )));
                    continue;
                }
                if d != "tmp" {
                    unreadable_files(&p, &fix, out);
                }
            }
        }
    }
}

/// Spool files the dispatcher cannot read (0600 files of another user: an initiator outside
/// the submit group, or an older qmail). A few are named; the count says the rest.
fn unreadable_files(dir: &Path, fix: &str, out: &mut Vec<Finding>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut bad = Vec::new();
    let mut n = 0usize;
    for e in rd.flatten().take(10_000) {
        let p = e.path();
        match fs::File::open(&p) {
            Ok(_) => {}
            Err(err) if err.kind() == ErrorKind::PermissionDenied => {
                n += 1;
                if bad.len() < 3 {
                    bad.push(format!("{} ({})", p.display(), mode_owner(&p)));
                }
            }
            Err(_) => {}
        }
    }
    if n > 0 {
        out.push(Finding::Error(format!(
            "{}: {n} spool file(s) this user cannot read, e.g. {}; the dispatcher reads them \
             through the submit group: {fix}",
            dir.display(),
            bad.join(", ")
        )));
    }
}

/// An append-only log file: writable when it exists, creatable when not.
fn writable_file(what: &str, p: &Path, out: &mut Vec<Finding>) {
    match fs::metadata(p) {
        Ok(m) if m.is_dir() => out.push(Finding::Error(format!(
            "{what} {}: is a directory",
            p.display()
        ))),
        Ok(_) => {
            if access(p, AccessFlags::W_OK).is_err() {
                out.push(Finding::Error(format!(
                    "{what} {}: not writable by this user ({})",
                    p.display(),
                    mode_owner(p)
                )));
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let parent = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if access(parent, AccessFlags::W_OK | AccessFlags::X_OK).is_err() {
                out.push(Finding::Error(format!(
                    "{what} {}: does not exist and {} is not writable by this user ({}); \
                     under systemd it must also be in the unit's ReadWritePaths=",
                    p.display(),
                    parent.display(),
                    mode_owner(parent)
                )));
            }
        }
        Err(e) => out.push(Finding::Error(format!("{what} {}: {e}", p.display()))),
    }
}

fn readable_file(what: &str, p: &Path, out: &mut Vec<Finding>) {
    match fs::read(p) {
        Ok(b) if b.is_empty() => out.push(Finding::Error(format!("{what} {}: empty", p.display()))),
        Ok(_) => {}
        Err(e) => out.push(Finding::Error(format!(
            "{what} {}: cannot read it: {e} ({})",
            p.display(),
            mode_owner(p)
        ))),
    }
}

/// Everything `run` needs from the machine: the spool trees, the log files, the TLS files, the
/// metrics listener address. `need_spools`: no spool configured is an error (a dispatcher
/// serving a PostgreSQL queue needs none).
pub fn check(s: &Settings, need_spools: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    if need_spools && s.dispatch.spools.is_empty() {
        out.push(Finding::Error(
            "no spool: set `spools` in the configuration, --spool or QMAIL_SPOOL".into(),
        ));
    }
    for sp in &s.dispatch.spools {
        spool(sp, &mut out);
    }
    if let Some(p) = &s.dispatch.delivery_log {
        writable_file("delivery_log", p, &mut out);
    }
    for r in &s.dispatch.relays {
        if let Some(ca) = &r.ca_file {
            readable_file(&format!("relay {} ca_file", r.name), ca, &mut out);
        }
        if let Some(pw) = &r.password_file {
            readable_file(&format!("relay {} password_file", r.name), pw, &mut out);
        }
    }
    if let Some(addr) = s.http {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => drop(l),
            Err(e) if e.kind() == ErrorKind::AddrInUse => out.push(Finding::Warning(format!(
                "http {addr}: address in use (a running dispatcher? `run` fails while it is)"
            ))),
            Err(e) => out.push(Finding::Error(format!(
                "http {addr}: cannot listen on it: {e}"
            ))),
        }
    }
    out
}
