//! Shared by the tests that start `qmail-dispatcher` processes: a child that is killed
//! (SIGKILL) and reaped when it is dropped, so a test that panics half way leaves no
//! dispatcher or forwarder running behind it, holding a port, a spool, a database or the
//! output pipes of the suite.
#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A [`Child`] killed and reaped on drop; derefs to the child for `id`, `wait`, `try_wait`
/// and its pipes. Killing one that has already exited is harmless (`wait` then returns its
/// status).
pub struct Guarded(pub Child);

impl Deref for Guarded {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `BIN --config CFG --queue QUEUE_URI run` (a dispatcher serving a PostgreSQL queue), at
/// log level `info`, its stderr written to `log`, stdin closed; killed when dropped.
pub fn run_queue(bin: &str, cfg: &Path, queue_uri: &str, log: &Path) -> Guarded {
    Guarded(
        Command::new(bin)
            .arg("--config")
            .arg(cfg)
            .args(["--queue", queue_uri, "run"])
            .env("QMAIL_LOG", "info")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}
