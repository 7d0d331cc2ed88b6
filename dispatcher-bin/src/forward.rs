//! `qmail-dispatcher forward`, `queue init` and `status --queue`: the PostgreSQL side of the
//! binary (`docs/scale-out.md`).
//!
//! The forwarder claims local messages exactly as a dispatcher does (`ready/ID` or
//! `scheduled/ID` renamed to `active/ID+INSTANCE` under a lease, `qmail_dispatch::claim`),
//! copies them into the queue, up to 64 (8 MiB) per transaction (idempotent on the queue
//! id; three such transactions in flight at once, from three threads, so that one's commit
//! overlaps the others' local work), and deletes the local files only after COMMIT. A crash between COMMIT and the unlink leaves the file,
//! which the next forwarder takes back and imports again: a duplicate primary key, so
//! nothing is written and the file is then removed. While the database is down it claims
//! nothing more, gives back what it held, and retries with a backoff of up to 10 s.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use qmail_core::spool::QueueState;
use qmail_core::{ErrorKind, QueueId, SpoolFile};
use qmail_dispatch::claim;
use qmail_dispatch::queue::QueueError;
use qmail_dispatch::queue::postgres::{ImportItem, Imported, PgOptions, PgQueue, QueueStatus};

/// The `[queue]` table of the configuration file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// The connection string: `postgres://user@host1:5432,host2:5432/db?target_session_attrs=read-write`
    /// (or libpq's `key=value` form).
    pub url: String,
    /// The schema holding the queue. Default `qmail`.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// How long delivered messages keep their tombstone, seconds. Default 7 days.
    #[serde(default = "default_tombstone")]
    pub tombstone_secs: u64,
    /// How long after a lease renewal the fence before end-of-data is answered from the
    /// lease instead of a statement, milliseconds (`PgOptions::local_fence`; at most a quarter
    /// lease; 0: always ask the database). Default 1000.
    #[serde(default = "default_local_fence")]
    pub local_fence_ms: u64,
}

fn default_schema() -> String {
    "qmail".into()
}
fn default_tombstone() -> u64 {
    7 * 86_400
}
pub(crate) fn default_local_fence() -> u64 {
    1000
}

/// What the forwarder needs from the settings.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// The local spools to empty.
    pub spools: Vec<PathBuf>,
    /// The queue.
    pub queue: QueueSettings,
    /// The local lease (the dispatcher's `lease_secs`).
    pub lease: Duration,
    /// The periodic rescan (the dispatcher's `rescan_ms`).
    pub rescan: Duration,
    /// Aging step of the rank (`priority_step_secs`).
    pub priority_step_secs: u64,
}

/// A queue error as the operator should read it: a bad `[queue]` field names the field.
fn qerr(e: QueueError) -> anyhow::Error {
    match e {
        QueueError::Corrupt { id, reason } if id == "queue.url" || id == "schema" => {
            anyhow::anyhow!(
                "invalid configuration: [queue] {}: {reason}",
                id.trim_start_matches("queue.")
            )
        }
        e => anyhow::anyhow!("{e}"),
    }
}

fn pg_options(q: &QueueSettings, step: u64) -> PgOptions {
    PgOptions {
        schema: q.schema.clone(),
        priority_step_secs: step,
        tombstone_horizon: Duration::from_secs(q.tombstone_secs),
        ..PgOptions::default()
    }
}

/// `queue init`: creates or migrates the schema.
pub fn init(q: &QueueSettings) -> Result<ExitCode> {
    let applied = PgQueue::init(&q.url, &q.schema).map_err(qerr)?;
    if applied.is_empty() {
        println!(
            "queue schema {} is up to date (version {})",
            q.schema,
            qmail_dispatch::queue::postgres::schema::SCHEMA_VERSION
        );
    } else {
        println!(
            "queue schema {}: applied migration(s) {:?}",
            q.schema, applied
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `status --queue`: the queue's counts.
pub fn status(q: &QueueSettings, json: bool) -> Result<ExitCode> {
    let queue = PgQueue::connect(&q.url, pg_options(q, 600)).map_err(qerr)?;
    let st: QueueStatus = queue.status().map_err(qerr)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "queue": st }))?
        );
    } else {
        println!("queue {} ({} live lease(s))", st.schema, st.leases);
        for c in &st.states {
            match c.oldest_age_secs {
                Some(a) => println!("  {:<10} {:>9}  oldest {}s", c.state, c.count, a),
                None => println!("  {:<10} {:>9}", c.state, c.count),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One local message found in `ready/` or `scheduled/`.
struct Found {
    spool: usize,
    id: String,
    from: QueueState,
}

fn scan(spools: &[PathBuf]) -> Vec<Found> {
    let mut v = Vec::new();
    for (i, sp) in spools.iter().enumerate() {
        for from in [QueueState::Ready, QueueState::Scheduled] {
            let Ok(rd) = std::fs::read_dir(sp.join(from.dir_name())) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if QueueId::parse(&name).is_ok() {
                    v.push(Found {
                        spool: i,
                        id: name,
                        from,
                    });
                }
            }
        }
    }
    v
}

fn watch(spools: &[PathBuf], tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let mut w = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // only arrivals: the forwarder's own scans of ready/ (open, read, close) must not
        // wake it, or an idle forwarder spins on a core
        if res.is_ok_and(|ev| qmail_dispatch::schedule::is_arrival(&ev.kind)) {
            let _ = tx.send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "no filesystem notifications; relying on the periodic rescan");
            return None;
        }
    };
    for sp in spools {
        for d in ["ready", "scheduled"] {
            if let Err(e) = w.watch(&sp.join(d), RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %sp.join(d).display(), error = %e, "cannot watch; relying on the periodic rescan");
            }
        }
    }
    Some(w)
}

/// What forwarding one claimed file did.
enum Step {
    Forwarded,
    Duplicate,
    Corrupt,
    /// The database failed: the file went back where it came from.
    Unavailable(String),
}

fn forward_one(q: &PgQueue, spool: &Path, f: &Found, claimed: &Path) -> Result<Step> {
    let give_back = || {
        claim::release(claimed, spool, &f.id, f.from)
            .with_context(|| format!("cannot give {} back to {}/", f.id, f.from.dir_name()))
    };
    let quarantine = |why: &str| -> Result<Step> {
        tracing::error!(id = %f.id, reason = %why, "corrupt spool file moved to corrupt/");
        claim::release(claimed, spool, &f.id, QueueState::Corrupt)
            .with_context(|| format!("cannot move {} to corrupt/", f.id))?;
        Ok(Step::Corrupt)
    };
    let id = match QueueId::parse(&f.id) {
        Ok(id) => id,
        Err(e) => return quarantine(&e.to_string()),
    };
    let file = match SpoolFile::open(claimed) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::Corrupt => return quarantine(&e.to_string()),
        Err(e) => {
            give_back()?;
            bail!("{}: {e}", claimed.display());
        }
    };
    let mut body = file
        .body_reader()
        .map_err(|e| anyhow::anyhow!("{}: {e}", claimed.display()))?;
    match q.import(&id, &file.header, &mut body, file.body_len) {
        Ok(imported) => {
            if std::env::var_os("QMAIL_FORWARD_TEST_HOLD_AFTER_COMMIT").is_some() {
                // tests: SIGKILL lands between COMMIT and the unlink
                eprintln!("committed {}", f.id);
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            std::fs::remove_file(claimed)
                .with_context(|| format!("cannot remove {}", claimed.display()))?;
            Ok(match imported {
                Imported::New => Step::Forwarded,
                Imported::Duplicate => Step::Duplicate,
            })
        }
        Err(QueueError::Unavailable(m)) => {
            give_back()?;
            Ok(Step::Unavailable(m))
        }
        Err(QueueError::Corrupt { reason, .. }) => quarantine(&reason),
        Err(e) => {
            give_back()?;
            bail!("{}: {e}", f.id);
        }
    }
}

/// Most messages in one import transaction.
const BATCH_MAX: usize = 64;
/// A batch closes once its files reach this many bytes (a large message goes alone).
const BATCH_BYTES: u64 = 8 << 20;

/// Forwards claimed files in one transaction (one commit for the lot); any failure other than
/// the database being down falls back to one transaction per file, so one bad file cannot
/// hold the others back. Every file ends forwarded (unlinked), quarantined, or given back.
fn forward_batch(
    q: &PgQueue,
    spools: &[PathBuf],
    batch: &[(&Found, PathBuf)],
) -> Vec<(String, Result<Step>)> {
    let one_by_one = |batch: &[(&Found, PathBuf)]| {
        batch
            .iter()
            .map(|(f, p)| (f.id.clone(), forward_one(q, &spools[f.spool], f, p)))
            .collect::<Vec<_>>()
    };
    if batch.len() == 1 {
        return one_by_one(batch);
    }
    let mut opened = Vec::with_capacity(batch.len());
    for (f, p) in batch {
        match (QueueId::parse(&f.id), SpoolFile::open(p)) {
            (Ok(id), Ok(file)) => match file.body_reader() {
                Ok(r) => opened.push((id, file, r)),
                Err(_) => return one_by_one(batch),
            },
            // a corrupt or unreadable one: the single path quarantines or reports it
            _ => return one_by_one(batch),
        }
    }
    let mut items: Vec<ImportItem<'_>> = opened
        .iter_mut()
        .map(|(id, file, r)| ImportItem {
            id,
            header: &file.header,
            body: r,
            len: file.body_len,
        })
        .collect();
    match q.import_batch(&mut items) {
        Ok(results) => {
            drop(items);
            if std::env::var_os("QMAIL_FORWARD_TEST_HOLD_AFTER_COMMIT").is_some() {
                for (f, _) in batch {
                    eprintln!("committed {}", f.id);
                }
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            batch
                .iter()
                .zip(results)
                .map(|((f, p), r)| {
                    let step = std::fs::remove_file(p)
                        .with_context(|| format!("cannot remove {}", p.display()))
                        .map(|()| match r {
                            Imported::New => Step::Forwarded,
                            Imported::Duplicate => Step::Duplicate,
                        });
                    (f.id.clone(), step)
                })
                .collect()
        }
        Err(QueueError::Unavailable(m)) => batch
            .iter()
            .map(|(f, p)| {
                let step = claim::release(p, &spools[f.spool], &f.id, f.from)
                    .with_context(|| format!("cannot give {} back", f.id))
                    .map(|()| Step::Unavailable(m.clone()));
                (f.id.clone(), step)
            })
            .collect(),
        Err(_) => {
            drop(items);
            drop(opened);
            one_by_one(batch)
        }
    }
}

/// Threads forwarding batches at the same time (each with its own database connection).
const FORWARD_THREADS: usize = 3;

/// Claims the files of `chunk` (at most [`BATCH_MAX`]) and forwards them in one
/// transaction, or in several when they reach [`BATCH_BYTES`]; files another forwarder
/// claimed first are skipped. Stops claiming at `term` or once the database is down; what it
/// claimed and could not send goes back where it came from.
fn forward_chunk(
    q: &PgQueue,
    spools: &[PathBuf],
    chunk: &[Found],
    instance: &str,
    term: &AtomicBool,
) -> Vec<(String, Result<Step>)> {
    let mut out = Vec::new();
    let mut batch: Vec<(&Found, PathBuf)> = Vec::new();
    let mut bytes = 0u64;
    let mut it = chunk.iter().peekable();
    while let Some(f) = it.next() {
        if term.load(Ordering::SeqCst) {
            break;
        }
        match claim::claim(&spools[f.spool], &f.id, f.from, instance) {
            Ok(Some(p)) => {
                bytes += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                batch.push((f, p));
            }
            Ok(None) => {} // another forwarder was first
            Err(e) => tracing::warn!(id = %f.id, error = %e, "cannot claim"),
        }
        let full = bytes >= BATCH_BYTES || it.peek().is_none();
        if !full || batch.is_empty() {
            continue;
        }
        let steps = forward_batch(q, spools, &batch);
        batch.clear();
        bytes = 0;
        let down = steps
            .iter()
            .any(|(_, r)| matches!(r, Ok(Step::Unavailable(_))));
        out.extend(steps);
        if down {
            break;
        }
    }
    // claimed but not sent (stopping): back where they came from
    for (f, p) in batch {
        let _ = claim::release(&p, &spools[f.spool], &f.id, f.from);
    }
    out
}

/// `forward`: until `term` (or, with `drain`, until the spools are empty).
pub fn forward(s: ForwardSettings, term: Arc<AtomicBool>, drain: bool) -> Result<ExitCode> {
    if s.spools.is_empty() {
        bail!("forward needs a spool (--spool DIR, `spools` in the file, or QMAIL_SPOOL)");
    }
    let instance = claim::new_instance_id();
    let me = claim::Identity::current();
    let mut leases = Vec::new();
    for sp in &s.spools {
        for d in ["ready", "scheduled", "active", "corrupt"] {
            std::fs::create_dir_all(sp.join(d))
                .with_context(|| format!("cannot create {}", sp.join(d).display()))?;
        }
        leases.push(
            claim::Lease::acquire(
                sp,
                &instance,
                s.lease,
                Arc::new(qmail_dispatch::clock::SpoolClock),
            )
            .with_context(|| format!("cannot take a lease on {}", sp.display()))?,
        );
    }
    let leases = Arc::new(leases);
    let stop = Arc::new(AtomicBool::new(false));
    let renewer = {
        let (leases, stop) = (Arc::clone(&leases), Arc::clone(&stop));
        let every = s.lease / 4;
        std::thread::spawn(move || {
            let mut last = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                if last.elapsed() >= every {
                    for l in leases.iter() {
                        if let Err(e) = l.renew() {
                            tracing::warn!(error = %e, "lease renewal failed");
                        }
                    }
                    last = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let (tx, rx) = mpsc::channel();
    let _watcher = watch(&s.spools, tx);
    tracing::info!(instance = %instance, spools = ?s.spools, schema = %s.queue.schema, "forwarder started");
    let mut queue: Option<PgQueue> = None;
    let mut backoff = Duration::from_millis(250);
    let mut down_since: Option<Instant> = None;
    let (mut forwarded, mut duplicates, mut corrupt) = (0u64, 0u64, 0u64);
    let mut last_reclaim: Option<Instant> = None;
    let result = loop {
        if term.load(Ordering::SeqCst) {
            break Ok(());
        }
        if last_reclaim.is_none_or(|t| t.elapsed() >= s.lease / 2) {
            for (sp, lease) in s.spools.iter().zip(leases.iter()) {
                // the spool's clock, read from this forwarder's own lease (docs/spool-format.md)
                match claim::reclaim_expired(sp, &instance, s.lease, &me, lease.spool_now()) {
                    Ok(back) if !back.ids.is_empty() => {
                        tracing::info!(spool = %sp.display(), n = back.ids.len(), "expired local claims taken back")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(spool = %sp.display(), error = %e, "reclaim failed"),
                }
            }
            last_reclaim = Some(Instant::now());
        }
        let q = match &queue {
            Some(q) => q.clone(),
            None => {
                match PgQueue::connect(&s.queue.url, pg_options(&s.queue, s.priority_step_secs)) {
                    Ok(q) => {
                        if let Some(t) = down_since.take() {
                            tracing::info!(
                                after_secs = t.elapsed().as_secs(),
                                "queue reachable again"
                            );
                        }
                        backoff = Duration::from_millis(250);
                        queue = Some(q.clone());
                        q
                    }
                    Err(QueueError::Unavailable(m)) => {
                        if down_since.is_none() {
                            tracing::warn!(error = %m, "queue unavailable; local messages wait in the spool");
                            down_since = Some(Instant::now());
                        }
                        sleep_unless(&term, backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                    Err(e) => break Err(qerr(e)),
                }
            }
        };
        let found = scan(&s.spools);
        let mut did = 0usize;
        let mut failed = false;
        // batches of BATCH_MAX found files, taken by FORWARD_THREADS threads: one batch's
        // commit overlaps the others' local work (claim, read, unlink)
        let chunks: Vec<&[Found]> = found.chunks(BATCH_MAX).collect();
        let taken = AtomicUsize::new(0);
        let down = AtomicBool::new(false);
        let results: Vec<Vec<(String, Result<Step>)>> = std::thread::scope(|sc| {
            let threads: Vec<_> = (0..FORWARD_THREADS.min(chunks.len()))
                .map(|_| {
                    sc.spawn(|| {
                        let mut out = Vec::new();
                        while !term.load(Ordering::SeqCst) && !down.load(Ordering::SeqCst) {
                            let Some(chunk) = chunks.get(taken.fetch_add(1, Ordering::SeqCst))
                            else {
                                break;
                            };
                            out.extend(forward_chunk(&q, &s.spools, chunk, &instance, &term));
                            if out
                                .iter()
                                .any(|(_, r)| matches!(r, Ok(Step::Unavailable(_))))
                            {
                                down.store(true, Ordering::SeqCst);
                            }
                        }
                        out
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_default())
                .collect()
        });
        for (id, step) in results.into_iter().flatten() {
            match step {
                Ok(Step::Forwarded) => {
                    forwarded += 1;
                    did += 1;
                    tracing::debug!(id = %id, "forwarded");
                }
                Ok(Step::Duplicate) => {
                    duplicates += 1;
                    did += 1;
                    tracing::info!(id = %id, "already in the queue (re-forward): local copy removed");
                }
                Ok(Step::Corrupt) => corrupt += 1,
                Ok(Step::Unavailable(m)) => {
                    if !failed {
                        tracing::warn!(error = %m, "queue unavailable; local messages wait in the spool");
                    }
                    down_since.get_or_insert_with(Instant::now);
                    queue = None;
                    failed = true;
                }
                Err(e) => {
                    tracing::error!(id = %id, error = %format!("{e:#}"), "forward failed");
                }
            }
        }
        if failed {
            sleep_unless(&term, backoff);
            backoff = (backoff * 2).min(Duration::from_secs(10));
            continue;
        }
        if did > 0 {
            continue;
        }
        if drain && found.is_empty() {
            break Ok(());
        }
        // idle: an inotify event, the periodic rescan, or SIGTERM (checked every 100 ms)
        let until = Instant::now() + s.rescan;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || term.load(Ordering::SeqCst) {
                break;
            }
            if rx.recv_timeout(left.min(TERM_POLL)).is_ok() {
                break;
            }
        }
        while rx.try_recv().is_ok() {}
    };
    stop.store(true, Ordering::SeqCst);
    let _ = renewer.join();
    for l in leases.iter() {
        l.release();
    }
    tracing::info!(forwarded, duplicates, corrupt, "forwarder stopped");
    if drain {
        println!("forwarded {forwarded}, duplicates {duplicates}, corrupt {corrupt}");
    }
    result.map(|()| ExitCode::SUCCESS)
}

/// How often an idle forwarder looks at the stop flag.
const TERM_POLL: Duration = Duration::from_millis(100);

fn sleep_unless(term: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !term.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn queue_table_and_override() {
        let dir = std::env::temp_dir().join(format!("qmail-queue-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "spools = [\"/tmp/a\"]\n[queue]\nurl = \"postgres://q@db1,db2/mail?target_session_attrs=read-write\"\nschema = \"mail_a\"\n",
        )
        .unwrap();
        let o = crate::settings::Overrides {
            config: Some(f.clone()),
            ..Default::default()
        };
        let s = crate::settings::load(&o).unwrap();
        let q = s.queue.unwrap();
        assert_eq!(q.schema, "mail_a");
        assert_eq!(q.tombstone_secs, 7 * 86_400);
        assert_eq!(q.local_fence_ms, 1000);
        assert!(q.url.starts_with("postgres://q@db1,db2/"));
        std::fs::write(
            &f,
            "spools = [\"/tmp/a\"]\nlease_secs = 8\n[queue]\nurl = \"x\"\nlocal_fence_ms = 5000\n",
        )
        .unwrap();
        let s5 = crate::settings::load(&o).unwrap();
        let po = crate::pg_run::pg_options(s5.queue.as_ref().unwrap(), &s5);
        use std::time::Duration;
        assert_eq!(po.local_fence, Duration::from_secs(5));
        assert_eq!(
            po.local_fence_window(),
            Duration::from_secs(2),
            "at most a quarter lease"
        );
        assert_eq!(po.lockless_grace(), Duration::from_secs(6));
        std::fs::write(
            &f,
            "spools = [\"/tmp/a\"]\n[queue]\nurl = \"postgres://q@db1,db2/mail?target_session_attrs=read-write\"\nschema = \"mail_a\"\n",
        )
        .unwrap();
        let s = crate::settings::load(&crate::settings::Overrides {
            queue: Some("postgres://other/db".into()),
            ..o.clone()
        })
        .unwrap();
        assert_eq!(s.queue.unwrap().url, "postgres://other/db");
        std::fs::write(
            &f,
            "spools = [\"/tmp/a\"]\n[queue]\nurl = \"x\"\nshema = \"s\"\n",
        )
        .unwrap();
        assert!(
            crate::settings::load(&o).is_err(),
            "unknown keys in [queue] are errors"
        );
        // queue-only commands need no spool
        let s = crate::settings::load(&crate::settings::Overrides {
            queue: Some("postgres://db/x".into()),
            queue_only: true,
            ..Default::default()
        })
        .unwrap();
        assert!(s.queue.is_some());
        let _ = std::fs::remove_dir_all(dir);
    }
}
