//! Which message next: the in-memory candidate queue, the directory scans that fill it, and
//! the filesystem watch that wakes it.
//!
//! - A candidate's **rank** is `created + (priority - 1) * priority_step_secs`; the lowest
//!   rank goes first. A priority-1 message thus overtakes normal ones submitted up to two
//!   steps earlier, but a low-priority message's rank is fixed while newer messages keep
//!   arriving with higher ranks, so it cannot starve.
//! - `ready/` entries are candidates at once; `deferred/` and `scheduled/` entries wait in a
//!   second heap ordered by due time (the state file's `next_due`, the header's `not_before`)
//!   and become candidates when due; a due one is claimed straight from its directory.
//! - Names are found by a full scan at start and every `rescan_ms` (network filesystems send
//!   no notifications), and by inotify (`notify`) on `ready/` and `scheduled/` the moment an
//!   initiator renames a file in.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::fs;
use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use qmail_core::spool::{QueueId, QueueState, SpoolFile};

use super::state::MessageState;

/// A message that may be claimed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Candidate {
    /// Lower goes first.
    pub rank: i64,
    /// Index of the spool in the configuration.
    pub spool: usize,
    /// Queue id.
    pub id: String,
    /// The directory to claim it from.
    pub from: Dir,
}

/// The directories a claim is made from (ordered for the heap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    /// `ready/`.
    Ready,
    /// `deferred/`.
    Deferred,
    /// `scheduled/`.
    Scheduled,
}

impl Dir {
    /// The queue state.
    pub fn state(self) -> QueueState {
        match self {
            Dir::Ready => QueueState::Ready,
            Dir::Deferred => QueueState::Deferred,
            Dir::Scheduled => QueueState::Scheduled,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    ready: BinaryHeap<Reverse<Candidate>>,
    waiting: BinaryHeap<Reverse<(i64, Candidate)>>,
    known: HashSet<(usize, String, Dir)>,
    stopping: bool,
    drain: bool,
    filling: bool,
    fill_deadline: Option<std::time::Instant>,
}

/// What a worker gets.
#[derive(Debug)]
pub enum Pop {
    /// A candidate to claim.
    Got(Candidate),
    /// Nothing came within the wait (close idle connections, then wait again).
    Idle,
    /// Stop: shutting down, or (drain) nothing left.
    Stop,
}

/// How long workers wait for the initial scan before claiming (a deep queue on a slow
/// filesystem keeps being scanned while they work).
pub const FILL_WAIT: Duration = Duration::from_secs(1);

/// The shared candidate queue.
#[derive(Debug, Default)]
pub struct CandidateQueue {
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl CandidateQueue {
    /// A queue; in drain mode [`CandidateQueue::pop`] stops once nothing is ready and the
    /// initial scan is over ([`CandidateQueue::filled`]).
    pub fn new(drain: bool) -> CandidateQueue {
        let fill_deadline = Some(std::time::Instant::now() + FILL_WAIT);
        CandidateQueue {
            inner: Mutex::new(Inner {
                drain,
                filling: true,
                fill_deadline,
                ..Inner::default()
            }),
            cv: Condvar::new(),
        }
    }

    /// The initial scan is over (drain mode: workers may stop when nothing is left).
    pub fn filled(&self) {
        self.lock().filling = false;
        self.cv.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when the queue already holds this message as a candidate from `dir`.
    pub fn knows(&self, spool: usize, id: &str, dir: Dir) -> bool {
        self.lock().known.contains(&(spool, id.to_owned(), dir))
    }

    /// Adds a candidate that is due now.
    ///
    /// The heap holds each message once per directory; a candidate whose file moved on is
    /// dropped when its claim finds nothing.
    pub fn push_ready(&self, c: Candidate) {
        let mut g = self.lock();
        if g.known.insert((c.spool, c.id.clone(), c.from)) {
            g.ready.push(Reverse(c));
            drop(g);
            self.cv.notify_one();
        }
    }

    /// Adds a candidate due at `due` (Unix seconds).
    pub fn push_waiting(&self, c: Candidate, due: i64) {
        let mut g = self.lock();
        if g.known.insert((c.spool, c.id.clone(), c.from)) {
            g.waiting.push(Reverse((due, c)));
        }
    }

    /// Moves every waiting candidate due by `now` to the ready heap; returns the next due
    /// time still waiting.
    pub fn promote_due(&self, now: i64) -> Option<i64> {
        let mut g = self.lock();
        let mut moved = 0;
        while let Some(Reverse((due, _))) = g.waiting.peek() {
            if *due > now {
                break;
            }
            if let Some(Reverse((_, c))) = g.waiting.pop() {
                g.ready.push(Reverse(c));
                moved += 1;
            }
        }
        let next = g.waiting.peek().map(|Reverse((d, _))| *d);
        drop(g);
        for _ in 0..moved.min(64) {
            self.cv.notify_one();
        }
        if moved > 64 {
            self.cv.notify_all();
        }
        next
    }

    /// Takes the best candidate, waiting up to `wait` for one.
    pub fn pop(&self, wait: Duration) -> Pop {
        let mut g = self.lock();
        let deadline = std::time::Instant::now() + wait;
        loop {
            if g.stopping {
                return Pop::Stop;
            }
            // during the initial scan, wait (at most FILL_WAIT) so that the first claims are
            // already in priority order
            let now = std::time::Instant::now();
            if g.filling
                && let Some(fd) = g.fill_deadline
                && now < fd
            {
                let until = fd.min(deadline);
                if now >= until {
                    return Pop::Idle;
                }
                g = self
                    .cv
                    .wait_timeout(g, until - now)
                    .map(|r| r.0)
                    .unwrap_or_else(|p| p.into_inner().0);
                continue;
            }
            if let Some(Reverse(c)) = g.ready.pop() {
                g.known.remove(&(c.spool, c.id.clone(), c.from));
                return Pop::Got(c);
            }
            if g.drain && !g.filling {
                return Pop::Stop;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Pop::Idle;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .map(|r| r.0)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Wakes every worker and makes them stop.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.cv.notify_all();
    }

    /// Candidates ready now, and waiting.
    pub fn len(&self) -> (usize, usize) {
        let g = self.lock();
        (g.ready.len(), g.waiting.len())
    }
}

/// Rank of a message (see the module docs).
pub fn rank(created: i64, priority: u8, step: u64) -> i64 {
    created + (priority.clamp(1, 5) as i64 - 1) * step as i64
}

fn id_created(id: &str) -> i64 {
    QueueId::parse(id)
        .ok()
        .and_then(|q| q.created_secs())
        .unwrap_or_else(qmail_core::spool::now_secs)
}

/// Reads what ranking a `ready/` or `scheduled/` file needs: `(rank, not_before)`. A file
/// that does not parse still becomes a candidate (the worker quarantines it); `None` when it
/// is gone.
pub fn inspect(path: &Path, id: &str, step: u64) -> Option<(i64, Option<i64>)> {
    match peek_header(path) {
        Ok(Some(h)) => return Some((rank(h.created, h.priority, step), h.not_before)),
        Ok(None) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        // not a readable spool file (a symlink, a FIFO, a directory ...): still a candidate,
        // the worker's claim quarantines it
        Err(_) => return Some((id_created(id), None)),
    }
    match SpoolFile::open(path) {
        Ok(f) => Some((
            rank(f.header.created, f.header.priority, step),
            f.header.not_before,
        )),
        Err(e)
            if e.io_error()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) =>
        {
            None
        }
        Err(_) => Some((id_created(id), None)),
    }
}

/// Bytes read to find a spool file's header while scanning: enough for a header of a few
/// dozen recipients; a longer one is read by [`SpoolFile::open`].
const PEEK: usize = 4096;

/// The header of a spool file, read with one `open(2)` (not following a symlink, not
/// blocking on a FIFO), one `read(2)` and one `close(2)`: the scan ranks every file it finds,
/// so it reads only what ranking needs (the format's prefix and header,
/// `docs/spool-format.md`), not the trailer. `Ok(None)` when the header does not fit in
/// [`PEEK`] bytes or does not decode (the caller then reads it the long way, which says
/// what is wrong).
///
/// # Errors
/// The file cannot be opened or read.
fn peek_header(path: &Path) -> std::io::Result<Option<qmail_core::SpoolHeader>> {
    use qmail_core::spool::record::{FORMAT_VERSION, MAGIC, PREFIX_LEN};
    let mut f = crate::clock::open_nofollow(path)?;
    let mut buf = [0u8; PEEK];
    let mut n = 0;
    while n < buf.len() {
        match std::io::Read::read(&mut f, &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        // a spool file is read in one go unless it is longer than the buffer
        if n >= PREFIX_LEN as usize {
            let hlen = u32::from_le_bytes([buf[10], buf[11], buf[12], buf[13]]) as usize;
            if n >= PREFIX_LEN as usize + hlen {
                break;
            }
        }
    }
    let buf = &buf[..n];
    let p = PREFIX_LEN as usize;
    if buf.len() < p || &buf[..8] != MAGIC {
        return Ok(None);
    }
    let version = u16::from_le_bytes([buf[8], buf[9]]);
    let hlen = u32::from_le_bytes([buf[10], buf[11], buf[12], buf[13]]) as usize;
    if version == 0 || version > FORMAT_VERSION || buf.len() < p + hlen {
        return Ok(None);
    }
    Ok(postcard::from_bytes(&buf[p..p + hlen]).ok())
}

fn names(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| QueueId::parse(n).is_ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Adds one `ready/` file.
pub fn add_ready(q: &CandidateQueue, spool_idx: usize, spool: &Path, id: &str, step: u64) {
    if QueueId::parse(id).is_err() || q.knows(spool_idx, id, Dir::Ready) {
        return;
    }
    if let Some((rank, _)) = inspect(&spool.join("ready").join(id), id, step) {
        q.push_ready(Candidate {
            rank,
            spool: spool_idx,
            id: id.to_owned(),
            from: Dir::Ready,
        });
    }
}

/// Adds one `scheduled/` file (ready now when its not-before time has come).
pub fn add_scheduled(
    q: &CandidateQueue,
    spool_idx: usize,
    spool: &Path,
    id: &str,
    step: u64,
    now: i64,
) {
    if QueueId::parse(id).is_err() || q.knows(spool_idx, id, Dir::Scheduled) {
        return;
    }
    if let Some((rank, nb)) = inspect(&spool.join("scheduled").join(id), id, step) {
        let c = Candidate {
            rank,
            spool: spool_idx,
            id: id.to_owned(),
            from: Dir::Scheduled,
        };
        match nb {
            Some(t) if t > now => q.push_waiting(c, t),
            _ => q.push_ready(c),
        }
    }
}

/// Adds one `deferred/` file (due at its state's `next_due`).
pub fn add_deferred(q: &CandidateQueue, spool_idx: usize, spool: &Path, id: &str, now: i64) {
    if QueueId::parse(id).is_err() || q.knows(spool_idx, id, Dir::Deferred) {
        return;
    }
    let due = MessageState::load(spool, id)
        .ok()
        .flatten()
        .map(|s| s.next_due)
        .unwrap_or(0);
    let c = Candidate {
        rank: id_created(id),
        spool: spool_idx,
        id: id.to_owned(),
        from: Dir::Deferred,
    };
    if due > now {
        q.push_waiting(c, due)
    } else {
        q.push_ready(c)
    }
}

/// Scans `ready/`, `scheduled/` and `deferred/` of a spool.
pub fn scan_spool(q: &CandidateQueue, spool_idx: usize, spool: &Path, step: u64) {
    let now = qmail_core::spool::now_secs();
    for id in names(&spool.join("ready")) {
        add_ready(q, spool_idx, spool, &id, step);
    }
    for id in names(&spool.join("scheduled")) {
        add_scheduled(q, spool_idx, spool, &id, step, now);
    }
    for id in names(&spool.join("deferred")) {
        add_deferred(q, spool_idx, spool, &id, now);
    }
}

/// Whether an inotify event on `ready/` or `scheduled/` may mean a new message: a file created
/// or renamed in (a submit's rename from `tmp/`), or an event the backend could not classify.
/// Opens, reads and closes (the watcher's own `read_dir` among them) are not: a waiter woken by
/// them would wake itself forever.
pub fn is_arrival(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{ModifyKind, RenameMode};
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Modify(ModifyKind::Name(
                RenameMode::To | RenameMode::Both | RenameMode::Any
            ))
            | EventKind::Any
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmail_core::spool::record;
    use qmail_core::{Envelope, SpoolHeader};
    use std::io::Write;

    fn header(rcpts: usize, priority: u8, not_before: Option<i64>) -> SpoolHeader {
        SpoolHeader {
            envelope: Envelope {
                mail_from: "a@example.com".into(),
                rcpt_to: (0..rcpts)
                    .map(|i| format!("recipient-number-{i:05}@example.org"))
                    .collect(),
                smtputf8: false,
                eightbitmime: false,
            },
            created: 1_700_000_000,
            not_before,
            priority,
            message_id: "<m@example.com>".into(),
        }
    }

    fn write(path: &Path, h: &SpoolHeader, body: &[u8], trailer: bool) {
        let mut f = fs::File::create(path).unwrap();
        record::write_header(&mut f, h).unwrap();
        f.write_all(body).unwrap();
        if trailer {
            record::write_trailer(&mut f, body.len() as u64).unwrap();
        }
    }

    #[test]
    fn the_scan_ranks_from_the_prefix_and_header_as_a_full_open_does() {
        let d = tempfile::tempdir().unwrap();
        let id = QueueId::generate();
        let p = d.path().join(id.as_str());
        let step = 60;
        // a small file (one read), and one whose header alone is longer than the peek
        for (rcpts, prio, nb) in [(1, 1, Some(1_800_000_000)), (300, 5, None)] {
            let h = header(rcpts, prio, nb);
            write(&p, &h, b"Subject: s\r\n\r\nbody\r\n", true);
            let full = SpoolFile::open(&p).unwrap();
            let want = (
                rank(full.header.created, full.header.priority, step),
                full.header.not_before,
            );
            assert_eq!(inspect(&p, id.as_str(), step), Some(want), "{rcpts} rcpts");
            assert_eq!(want, (rank(1_700_000_000, prio, step), nb));
        }
        // not a spool file: still a candidate, ranked by the id's time (the claim quarantines
        // it); gone: none
        fs::write(&p, b"not a spool file at all").unwrap();
        assert_eq!(
            inspect(&p, id.as_str(), step),
            Some((id_created(id.as_str()), None))
        );
        fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
        assert_eq!(
            inspect(&p, id.as_str(), step),
            Some((id_created(id.as_str()), None))
        );
        fs::remove_file(&p).unwrap();
        assert_eq!(inspect(&p, id.as_str(), step), None);
    }

    #[test]
    fn priority_then_age_without_starvation() {
        let q = CandidateQueue::new(true);
        q.filled();
        let c = |rank, id: &str| Candidate {
            rank,
            spool: 0,
            id: id.into(),
            from: Dir::Ready,
        };
        q.push_ready(c(rank(1000, 5, 60), "low-old"));
        q.push_ready(c(rank(1100, 1, 60), "high-new"));
        q.push_ready(c(rank(1500, 1, 60), "high-newest"));
        q.push_ready(c(rank(1000, 3, 60), "normal"));
        let mut order = Vec::new();
        while let Pop::Got(c) = q.pop(Duration::ZERO) {
            order.push(c.id);
        }
        assert_eq!(order, ["high-new", "normal", "low-old", "high-newest"]);
    }
}
