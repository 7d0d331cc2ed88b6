//! The PostgreSQL queue: many dispatchers on many hosts share one schema (`docs/scale-out.md`).
//!
//! - One row per message in `SCHEMA.message` (queue id as primary key); bodies up to
//!   [`INLINE_MAX`] inline, larger ones in `SCHEMA.chunk` as ordered [`CHUNK_LEN`] pieces,
//!   streamed in ([`PgQueue::import`]) and out ([`crate::queue::Claim::body`]) one chunk at a time.
//! - Claims: `UPDATE … FROM (SELECT … ORDER BY rank FOR UPDATE SKIP LOCKED LIMIT n)`, the
//!   pattern of Oban, GoodJob, River and Solid Queue; each claim bumps the row's `claims`
//!   counter, the fencing token every settle is guarded by (`WHERE id = $id AND owner = $me AND
//!   claims = $n`; an owner is set only while `active`): a stale owner changes nothing.
//! - Leases: a `SCHEMA.lease` row per process, renewed in database time (`now()` of the
//!   server, so no clock of ours needs to agree with another's), plus a session advisory lock
//!   held by the lease connection, so a process whose connection vanished is noticed at once
//!   (`pg_locks`), and a stopped one when its row ages past the lease.
//! - Wake-up by `LISTEN`/`NOTIFY` (channel `SCHEMA_ready`, sent in the importing transaction,
//!   so at its commit), with polling every [`PgOptions::poll`] as the fallback and for due
//!   times.
//! - Delivered messages leave a tombstone (the row without its body) for
//!   [`PgOptions::tombstone_horizon`]: a re-forwarded message is a duplicate primary key.
//! - Fleet-wide relay limits ([`PgQueue::connection_slot`], [`PgQueue::take_token`]).
//!
//! - TLS to the database ([`Db`]): verified by rustls against the system trust store plus
//!   libpq's `sslrootcert`; `sslmode=require` (or `verify-full`) makes it mandatory.

pub mod admin;
mod claim;
mod db;
mod fence;
mod limits;
pub mod schema;

use std::collections::HashSet;
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use postgres::Client;
use qmail_core::spool::record::{FORMAT_VERSION, encode_header};
use qmail_core::{QueueId, SpoolHeader};
use serde::Serialize;

pub use claim::{BodyReader, GroupSettler, PgClaim};
pub use db::Db;
use db::Plans;
pub use fence::FenceCounts;
use fence::{BootTime, ClaimedUnder, FenceCounters, LocalLease, ServerId};
pub use limits::{ConnectionSlot, RateDecision};

use super::{LeaseHealth, Queue, QueueError};

/// Bodies up to this many bytes are stored inline in `message.body`.
pub const INLINE_MAX: u64 = 1 << 20;
/// Larger bodies are stored in `chunk` rows of this many bytes (the last one shorter).
pub const CHUNK_LEN: usize = 1 << 20;
/// While claims come back full, due scheduled and deferred rows are made ready at most this
/// often (a short claim always does it first).
const PROMOTE_EVERY: Duration = Duration::from_millis(250);
/// Bodies up to this many bytes come back with the claim itself (no second round trip).
pub const CLAIM_INLINE_MAX: i64 = 64 * 1024;

/// How a [`PgQueue`] behaves.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The schema holding the queue (an identifier: `[a-z_][a-z0-9_]*`, at most 63 bytes).
    /// Several queues can share a database under different schemas. Default `qmail`.
    pub schema: String,
    /// This process's owner name in claims and leases (`HOST-PID-RANDOM`, as
    /// [`crate::claim::new_instance_id`]).
    pub instance: String,
    /// A lease not renewed for this long (database time) is expired: its claims are taken
    /// back. Default 30 s.
    pub lease: Duration,
    /// Polling interval when no notification arrives (due times, lost notifications).
    /// Default 1 s.
    pub poll: Duration,
    /// The aging step of [`crate::schedule::rank`], seconds. Default 600.
    pub priority_step_secs: u64,
    /// How long a delivered message's tombstone is kept (re-forwards within it are
    /// recognised as duplicates). Default 7 days.
    pub tombstone_horizon: Duration,
    /// Connect timeout when the URL sets none. Default 5 s.
    pub connect_timeout: Duration,
    /// How long after a lease renewal was sent the fence may be answered from the lease,
    /// without a statement (`fence.rs`; at most a quarter lease and a minute; zero: always
    /// ask the database). Other dispatchers then wait at least three of these after this
    /// process's last renewal (database time) before they take back its claims, also when its
    /// advisory lock is gone (`SCHEMA.lease.fence_grace_ms`). Default 1 s.
    pub local_fence: Duration,
}

impl PgOptions {
    /// The window of the local fence: [`PgOptions::local_fence`], at most a quarter lease and
    /// at most a minute.
    pub fn local_fence_window(&self) -> Duration {
        self.local_fence
            .min(self.lease / 4)
            .min(Duration::from_secs(60))
    }

    /// How long after this process's last renewal (database time) other dispatchers wait at
    /// least before they take back its claims, its advisory lock gone or not: three windows
    /// (`SCHEMA.lease.fence_grace_ms`).
    pub fn lockless_grace(&self) -> Duration {
        self.local_fence_window() * 3
    }
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: "qmail".into(),
            instance: crate::claim::new_instance_id(),
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            priority_step_secs: 600,
            tombstone_horizon: Duration::from_secs(7 * 86_400),
            connect_timeout: Duration::from_secs(5),
            local_fence: Duration::from_secs(1),
        }
    }
}

/// What [`PgQueue::import`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// The message is now in the queue.
    New,
    /// A row with this queue id already exists (in any state, tombstones included): nothing
    /// was written, the body was not read.
    Duplicate,
}

/// One message for [`PgQueue::import_batch`].
pub struct ImportItem<'a> {
    /// The queue id (the primary key).
    pub id: &'a QueueId,
    /// The spool header.
    pub header: &'a SpoolHeader,
    /// The message bytes (exactly `len` of them are read).
    pub body: &'a mut dyn Read,
    /// The message length in bytes.
    pub len: u64,
}

/// Messages in one state (see [`PgQueue::status`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateCount {
    /// The state: `ready`, `scheduled`, `active`, `deferred`, `failed`, `corrupt`, `held`,
    /// `delivered` (tombstones).
    pub state: String,
    /// How many rows.
    pub count: i64,
    /// Age of the oldest (by submit time), seconds in database time.
    pub oldest_age_secs: Option<i64>,
}

impl StateCount {
    /// The state as a directory spool, the metrics (`qmail_queue_messages{state}`) and the
    /// HTTP API name it: the row state, with `held` named `hold` (the spool's `hold/`).
    pub fn label(&self) -> &str {
        if self.state == "held" {
            "hold"
        } else {
            &self.state
        }
    }
}

/// The queue at a glance (`qmail-dispatcher status --queue URL`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStatus {
    /// The schema.
    pub schema: String,
    /// One entry per state present, in lifecycle order.
    pub states: Vec<StateCount>,
    /// Live leases (dispatchers holding one).
    pub leases: i64,
}

/// Maps a driver error to [`QueueError::Unavailable`] with the server's message.
pub(crate) fn db_error(e: postgres::Error) -> QueueError {
    let text = match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => {
            // the driver's own text is generic ("error performing TLS handshake"): the causes
            // say what went wrong (an untrusted certificate, a refused connection)
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(": ");
                text.push_str(&c.to_string());
                cause = c.source();
            }
            text
        }
    };
    QueueError::Unavailable(text)
}

/// A stable 31-bit key for advisory locks: FNV-1a of `SCHEMA:what`.
pub(crate) fn advisory_key(schema: &str, what: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in schema.bytes().chain(*b":").chain(what.bytes()) {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (h & 0x7fff_ffff) as i32
}

/// Checks a schema name: `[a-z_][a-z0-9_]*`, at most 63 bytes (PostgreSQL's NAMEDATALEN).
///
/// # Errors
/// [`QueueError::Corrupt`] naming the field `schema`.
pub fn check_schema(s: &str) -> Result<(), QueueError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_lowercase() || (i > 0 && b.is_ascii_digit()))
        && !s.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(QueueError::Corrupt {
            id: "schema".into(),
            reason: format!(
                "{s:?} is not a schema name: lower-case letters, digits and '_', not starting \
                 with a digit or pg_, at most 63 bytes"
            ),
        })
    }
}

/// Parses a connection string (URL or `key=value` form; several hosts and
/// `target_session_attrs=read-write` are understood, so a failover to a promoted standby is
/// followed) and applies the default connect timeout; libpq's `sslrootcert` and
/// `sslmode=verify-full` are read too ([`Db::parse`]).
///
/// # Errors
/// [`QueueError::Corrupt`] naming the field `queue.url` (the password is not echoed), or
/// `queue.url.sslrootcert`.
pub fn parse_url(url: &str, connect_timeout: Duration) -> Result<Db, QueueError> {
    Db::parse(url, connect_timeout)
}

/// One pooled connection with its prepared statements.
pub(crate) struct Conn {
    pub(crate) client: Client,
    stmts: std::collections::HashMap<&'static str, postgres::Statement>,
    /// The server it reached (the local fence, `fence.rs`).
    pub(crate) server: ServerId,
}

impl Conn {
    /// The prepared statement `key` (prepared on first use on this connection).
    pub(crate) fn stmt(
        &mut self,
        key: &'static str,
        sql: impl FnOnce() -> String,
    ) -> Result<postgres::Statement, QueueError> {
        if let Some(s) = self.stmts.get(key) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&sql()).map_err(db_error)?;
        self.stmts.insert(key, s.clone());
        Ok(s)
    }
}

/// A connection taken from the pool; goes back on drop unless it broke.
pub(crate) struct Pooled<'a> {
    conn: Option<Conn>,
    pool: &'a Inner,
    plans: Plans,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
            .as_ref()
            .expect("a pooled connection is present until drop")
    }
}
impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a pooled connection is present until drop")
    }
}
impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let mut idle = lock(self.pool.idle_of(self.plans));
            if c.client.is_closed() {
                // the server went away (restart, failover): the idle ones are as dead
                idle.clear();
                drop(idle);
                lock(self.pool.idle_of(other(self.plans))).clear();
            } else if idle.len() < 32 {
                idle.push(c);
            }
        }
    }
}

fn other(p: Plans) -> Plans {
    match p {
        Plans::Custom => Plans::PerMessage,
        Plans::PerMessage => Plans::Custom,
    }
}

/// An SQL expression: how many lease rows of `SCHEMA` other than `$1`'s belong to
/// dispatchers of schema version 1 (NULL grace: they take lock-less leases back at once).
fn old_dispatchers(s: &str) -> String {
    format!("(SELECT count(*) FROM {s}.lease o WHERE o.fence_grace_ms IS NULL AND o.owner <> $1)")
}

/// What a renewal sent at `sent` lets the local fence use: nothing while `old_dispatchers`
/// ([`old_dispatchers`]) is not zero.
fn renewal_for_fence(sent: BootTime, old_dispatchers: i64) -> Option<BootTime> {
    (old_dispatchers == 0).then_some(sent)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The lease connection: holds the session advisory lock of this process's lease row.
struct LeaseConn {
    client: Client,
    lock_key: i32,
}

#[derive(Default)]
struct Wake {
    generation: Mutex<u64>,
    cv: Condvar,
}

impl Wake {
    fn bump(&self) {
        *lock(&self.generation) += 1;
        self.cv.notify_all();
    }
    fn current(&self) -> u64 {
        *lock(&self.generation)
    }
    fn wait_change(&self, seen: u64, d: Duration) {
        let g = lock(&self.generation);
        let _ = self.cv.wait_timeout_while(g, d, |g| *g == seen);
    }
}

pub(crate) struct Inner {
    pub(crate) db: Db,
    pub(crate) opts: PgOptions,
    /// `SCHEMA` (validated), used as the prefix of every table.
    pub(crate) s: String,
    /// Idle connections for [`Inner::conn`] ([`Plans::Custom`]).
    idle: Mutex<Vec<Conn>>,
    /// Idle connections for [`Inner::hot`] ([`Plans::PerMessage`]).
    hot_idle: Mutex<Vec<Conn>>,
    lease: Mutex<Option<LeaseConn>>,
    /// When the lease was last renewed (this process's monotonic clock).
    renewed: Mutex<Option<Instant>>,
    /// The registration and last renewal of the lease, for the local fence (`fence.rs`).
    local: Mutex<LocalLease>,
    /// How fences were answered.
    fences: FenceCounters,
    /// When due scheduled/deferred rows were last made ready by a claim.
    promoted: Mutex<Option<Instant>>,
    /// The connection holding this process's connection-slot advisory locks.
    pub(crate) limits: Mutex<Option<Client>>,
    /// Slot keys this process holds (advisory locks are re-entrant within a session).
    pub(crate) held_slots: Mutex<HashSet<(i32, i32)>>,
    wake: Arc<Wake>,
}

impl Inner {
    /// A connection for any statement ([`Plans::Custom`]).
    pub(crate) fn conn(&self) -> Result<Pooled<'_>, QueueError> {
        self.pooled(Plans::Custom)
    }

    /// A connection for the statements a dispatcher or forwarder runs per message (claim,
    /// fence, settle, import, chunk reads), planned once ([`Plans::PerMessage`]): only for
    /// statements that read by primary key or walk a partial index in its order.
    pub(crate) fn hot(&self) -> Result<Pooled<'_>, QueueError> {
        self.pooled(Plans::PerMessage)
    }

    fn pooled(&self, plans: Plans) -> Result<Pooled<'_>, QueueError> {
        let c = lock(self.idle_of(plans)).pop();
        let c = match c {
            Some(c) => c,
            None => {
                let mut client = self.db.connect_planning(plans)?;
                let identity: String = client
                    .query_one(&format!("SELECT {}", fence::SERVER_IDENTITY), &[])
                    .map_err(db_error)?
                    .get(0);
                Conn {
                    client,
                    stmts: Default::default(),
                    server: fence::server_id(&identity),
                }
            }
        };
        Ok(Pooled {
            conn: Some(c),
            pool: self,
            plans,
        })
    }

    fn idle_of(&self, plans: Plans) -> &Mutex<Vec<Conn>> {
        match plans {
            Plans::Custom => &self.idle,
            Plans::PerMessage => &self.hot_idle,
        }
    }

    pub(crate) fn lease_fresh(&self) -> bool {
        matches!(*lock(&self.renewed), Some(t) if t.elapsed() < self.opts.lease / 2)
    }

    /// The registration a claim statement sent now on a connection to `server` is made under
    /// (read before it leaves).
    pub(crate) fn claimed_under(&self, server: ServerId) -> ClaimedUnder {
        ClaimedUnder {
            epoch: lock(&self.local).epoch,
            sent: BootTime::now(),
            server,
        }
    }

    /// Whether the fence of a claim made under `claimed` may be answered from the lease
    /// (`fence.rs`); counts the answer either way.
    pub(crate) fn fenced_by_lease(&self, claimed: ClaimedUnder) -> bool {
        let yes = fence::locally_fenced(
            &lock(&self.local),
            claimed,
            self.opts.local_fence_window(),
            self.opts.lease,
        );
        self.fences.count(yes);
        yes
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // wakes the listener thread, which then finds the queue gone and exits
        self.wake.bump();
    }
}

/// A queue in a PostgreSQL schema. Cheap to clone (shared connections); safe from many
/// threads.
#[derive(Clone)]
pub struct PgQueue {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for PgQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgQueue")
            .field("schema", &self.inner.s)
            .field("instance", &self.inner.opts.instance)
            .finish()
    }
}

impl PgQueue {
    /// Connects to the queue at `url` and checks its schema is at [`schema::SCHEMA_VERSION`]
    /// (create it with [`PgQueue::init`]). The lease is taken at the first
    /// [`Queue::heartbeat`] (or claim); a forwarder, which only imports, never takes one.
    ///
    /// # Errors
    /// [`QueueError::Corrupt`] for a bad URL or schema name, or a schema at another version;
    /// [`QueueError::Unavailable`] when the database cannot be reached.
    pub fn connect(url: &str, opts: PgOptions) -> Result<PgQueue, QueueError> {
        check_schema(&opts.schema)?;
        let db = parse_url(url, opts.connect_timeout)?;
        if let Some(host) = db.cleartext_host() {
            tracing::warn!(%host, "the queue's database connection may be cleartext: add sslmode=require (or verify-full) to the URL");
        }
        let s = opts.schema.clone();
        let wake = Arc::new(Wake::default());
        let q = PgQueue {
            inner: Arc::new(Inner {
                db,
                s: s.clone(),
                opts,
                idle: Mutex::new(Vec::new()),
                hot_idle: Mutex::new(Vec::new()),
                lease: Mutex::new(None),
                renewed: Mutex::new(None),
                local: Mutex::new(LocalLease::default()),
                fences: FenceCounters::default(),
                promoted: Mutex::new(None),
                limits: Mutex::new(None),
                held_slots: Mutex::new(HashSet::new()),
                wake,
            }),
        };
        {
            let mut c = q.inner.conn()?;
            let v = schema::version(&mut c.client, &s)?;
            if v != schema::SCHEMA_VERSION {
                return Err(QueueError::Corrupt {
                    id: format!("{s}.schema_version"),
                    reason: format!(
                        "the queue schema is at version {v}, this build needs {} (run \
                         `qmail-dispatcher queue init --queue URL`)",
                        schema::SCHEMA_VERSION
                    ),
                });
            }
        }
        q.start_listener();
        Ok(q)
    }

    /// Creates the schema or migrates it to [`schema::SCHEMA_VERSION`] (idempotent); returns
    /// the versions applied.
    ///
    /// # Errors
    /// As [`schema::migrate`]; [`QueueError::Corrupt`] for a bad URL or schema name.
    pub fn init(url: &str, schema_name: &str) -> Result<Vec<i32>, QueueError> {
        check_schema(schema_name)?;
        let mut client = parse_url(url, Duration::from_secs(5))?.connect()?;
        schema::migrate(&mut client, schema_name)
    }

    /// Starts a [`GroupSettler`] for this queue: delivered settles of many threads written
    /// together, at most `max_group` per transaction, each row still fenced.
    pub fn group_settler(&self, max_group: usize) -> GroupSettler {
        GroupSettler::start(Arc::clone(&self.inner), max_group)
    }

    /// This process's owner name.
    pub fn instance(&self) -> &str {
        &self.inner.opts.instance
    }

    /// How the fences of this process's claims were answered so far: from the lease, or by
    /// the database (`fence.rs`).
    pub fn fences(&self) -> FenceCounts {
        self.inner.fences.get()
    }

    /// Counts the fences into `counters` (`[lease, database]`, from
    /// [`crate::Metrics::fence_counters`]) as well, from now on; a second call changes
    /// nothing.
    pub fn export_fences(&self, counters: [prometheus_client::metrics::counter::Counter; 2]) {
        self.inner.fences.export(counters);
    }

    /// One `SELECT 1` on a pooled connection: whether the database answers (the HTTP
    /// listener's `/healthz` of a `run --queue` dispatcher).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] with the driver's or server's message (never the URL).
    pub fn ping(&self) -> Result<(), QueueError> {
        let mut c = self.inner.conn()?;
        c.client.simple_query("SELECT 1").map_err(db_error)?;
        Ok(())
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.inner.s
    }

    fn channel(&self) -> String {
        format!("{}_ready", self.inner.s)
    }

    fn start_listener(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let wake = Arc::clone(&self.inner.wake);
        let db = self.inner.db.clone();
        let channel = self.channel();
        let poll = self.inner.opts.poll;
        let _ = std::thread::Builder::new()
            .name("qmail-pg-listen".into())
            .spawn(move || {
                let mut client: Option<Client> = None;
                while weak.strong_count() > 0 {
                    let c = match client.as_mut() {
                        Some(c) if !c.is_closed() => c,
                        _ => match db.connect() {
                            Ok(mut c) => {
                                if c.batch_execute(&format!("LISTEN {channel}")).is_err() {
                                    std::thread::sleep(poll);
                                    continue;
                                }
                                // something may have arrived while we were not listening
                                wake.bump();
                                client.insert(c)
                            }
                            Err(_) => {
                                std::thread::sleep(poll);
                                continue;
                            }
                        },
                    };
                    use postgres::fallible_iterator::FallibleIterator;
                    let got = {
                        let mut n = c.notifications();
                        let r = n
                            .timeout_iter(Duration::from_millis(500))
                            .next()
                            .map(|o| o.is_some());
                        if matches!(r, Ok(true)) {
                            // coalesce a burst into one wake-up
                            while let Ok(Some(_)) = n.iter().next() {}
                        }
                        r
                    };
                    match got {
                        Ok(true) => wake.bump(),
                        Ok(false) => {}
                        Err(_) => client = None,
                    }
                }
            });
    }

    /// Copies one message into the queue in one transaction, streaming the body (at most one
    /// [`CHUNK_LEN`] in memory); idempotent on the queue id. The row is `ready` (or
    /// `scheduled` until the header's `not_before`), ranked by [`crate::schedule::rank`];
    /// the commit notifies waiting dispatchers. A message whose id is already present (a
    /// re-forward after a crash between COMMIT and unlink, or within the tombstone horizon
    /// after delivery) is [`Imported::Duplicate`] and nothing is written.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the database fails (nothing was committed: retry);
    /// [`QueueError::Io`] when `body` fails or ends before `len` bytes (path: the queue id);
    /// [`QueueError::Corrupt`] when the header does not encode.
    pub fn import(
        &self,
        id: &QueueId,
        header: &SpoolHeader,
        body: &mut dyn Read,
        len: u64,
    ) -> Result<Imported, QueueError> {
        let mut one = [ImportItem {
            id,
            header,
            body,
            len,
        }];
        Ok(self.import_batch(&mut one)?[0])
    }

    /// As [`PgQueue::import`] for several messages in one transaction (one commit, so one
    /// WAL flush, for the lot): all of them are in the queue after `Ok`, none after `Err`.
    /// The answer has one [`Imported`] per item, in order.
    ///
    /// # Errors
    /// As [`PgQueue::import`]; an error in any item fails the whole batch.
    pub fn import_batch(&self, items: &mut [ImportItem<'_>]) -> Result<Vec<Imported>, QueueError> {
        let s = &self.inner.s;
        let mut c = self.inner.hot()?;
        let ins = c.stmt("import", || {
            format!(
                "INSERT INTO {s}.message (id, state, rank, priority, created, due, header, \
                 header_version, body_len, body, chunked) \
                 VALUES ($1, CASE WHEN to_timestamp($5::bigint) > now() THEN 'scheduled' \
                 ELSE 'ready' END, $2, $3, $4, greatest(to_timestamp($5::bigint), now()), $6, \
                 $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING"
            )
        })?;
        let chunk = c.stmt("chunk", || {
            format!("INSERT INTO {s}.chunk (id, seq, data) VALUES ($1, $2, $3)")
        })?;
        let channel = self.channel();
        if items.len() > 1 && items.iter().all(|it| it.len <= INLINE_MAX) {
            return self.import_inline_batch(&mut c, items, &channel);
        }
        let mut tx = c.client.transaction().map_err(db_error)?;
        let mut out = Vec::with_capacity(items.len());
        let mut any_new = false;
        for it in items.iter_mut() {
            let r = self.import_into(&mut tx, &ins, &chunk, it)?;
            any_new |= r == Imported::New;
            out.push(r);
        }
        if any_new {
            tx.execute("SELECT pg_notify($1, '')", &[&channel])
                .map_err(db_error)?;
        }
        tx.commit().map_err(db_error)?;
        Ok(out)
    }

    /// [`PgQueue::import_batch`] of messages that are all stored inline: one `INSERT …
    /// SELECT FROM unnest(…)` for the lot (one round trip instead of one per message), in
    /// one transaction with its notification.
    fn import_inline_batch(
        &self,
        c: &mut Conn,
        items: &mut [ImportItem<'_>],
        channel: &str,
    ) -> Result<Vec<Imported>, QueueError> {
        let s = &self.inner.s;
        let n = items.len();
        let (
            mut ids,
            mut ranks,
            mut prios,
            mut created,
            mut nbs,
            mut headers,
            mut lens,
            mut bodies,
        ) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for it in items.iter_mut() {
            let (id, header, len) = (it.id, it.header, it.len);
            let hbytes = encode_header(header).map_err(|e| QueueError::Corrupt {
                id: id.to_string(),
                reason: e.to_string(),
            })?;
            let io_err = |e: std::io::Error| QueueError::Io {
                path: id.as_str().into(),
                source: e,
            };
            let mut v = Vec::with_capacity(len as usize);
            (&mut *it.body)
                .take(len)
                .read_to_end(&mut v)
                .map_err(io_err)?;
            if v.len() as u64 != len {
                return Err(io_err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the body ended after {} of {len} bytes", v.len()),
                )));
            }
            ids.push(id.as_str());
            ranks.push(crate::schedule::rank(
                header.created,
                header.priority,
                self.inner.opts.priority_step_secs,
            ));
            prios.push(header.priority as i16);
            created.push(header.created);
            nbs.push(header.not_before.unwrap_or(0));
            headers.push(hbytes);
            // len <= INLINE_MAX, so it fits
            lens.push(len as i64);
            bodies.push(v);
        }
        let ins = c.stmt("import_many", || {
            format!(
                "INSERT INTO {s}.message (id, state, rank, priority, created, due, header, \
                 header_version, body_len, body, chunked) \
                 SELECT v.id, CASE WHEN to_timestamp(v.nb) > now() THEN 'scheduled' \
                 ELSE 'ready' END, v.rank, v.prio, v.created, \
                 greatest(to_timestamp(v.nb), now()), v.header, $8, v.len, v.body, false \
                 FROM unnest($1::text[], $2::bigint[], $3::smallint[], $4::bigint[], \
                 $5::bigint[], $6::bytea[], $7::bigint[], $9::bytea[]) \
                 AS v(id, rank, prio, created, nb, header, len, body) \
                 ON CONFLICT (id) DO NOTHING RETURNING id"
            )
        })?;
        let version = FORMAT_VERSION as i16;
        let mut tx = c.client.transaction().map_err(db_error)?;
        let rows = tx
            .query(
                &ins,
                &[
                    &ids, &ranks, &prios, &created, &nbs, &headers, &lens, &version, &bodies,
                ],
            )
            .map_err(db_error)?;
        let new: HashSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        if !new.is_empty() {
            tx.execute("SELECT pg_notify($1, '')", &[&channel])
                .map_err(db_error)?;
        }
        tx.commit().map_err(db_error)?;
        Ok(ids
            .iter()
            .map(|id| {
                if new.contains(*id) {
                    Imported::New
                } else {
                    Imported::Duplicate
                }
            })
            .collect())
    }

    fn import_into(
        &self,
        tx: &mut postgres::Transaction<'_>,
        ins: &postgres::Statement,
        chunk: &postgres::Statement,
        it: &mut ImportItem<'_>,
    ) -> Result<Imported, QueueError> {
        let (id, header, len) = (it.id, it.header, it.len);
        let hbytes = encode_header(header).map_err(|e| QueueError::Corrupt {
            id: id.to_string(),
            reason: e.to_string(),
        })?;
        let io_err = |e: std::io::Error| QueueError::Io {
            path: id.as_str().into(),
            source: e,
        };
        let rank = crate::schedule::rank(
            header.created,
            header.priority,
            self.inner.opts.priority_step_secs,
        );
        let len_i = i64::try_from(len).map_err(|_| QueueError::Corrupt {
            id: id.to_string(),
            reason: format!("body length {len} is too large"),
        })?;
        let inline = len <= INLINE_MAX;
        let small = if inline {
            let mut v = Vec::with_capacity(len as usize);
            (&mut *it.body)
                .take(len)
                .read_to_end(&mut v)
                .map_err(io_err)?;
            if v.len() as u64 != len {
                return Err(io_err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the body ended after {} of {len} bytes", v.len()),
                )));
            }
            Some(v)
        } else {
            None
        };
        let not_before = header.not_before.unwrap_or(0);
        let prio = header.priority as i16;
        let version = FORMAT_VERSION as i16;
        let n = tx
            .execute(
                ins,
                &[
                    &id.as_str(),
                    &rank,
                    &prio,
                    &header.created,
                    &not_before,
                    &hbytes,
                    &version,
                    &len_i,
                    &small,
                    &!inline,
                ],
            )
            .map_err(db_error)?;
        if n == 0 {
            return Ok(Imported::Duplicate);
        }
        if !inline {
            let mut buf = vec![0u8; CHUNK_LEN];
            let mut seq: i32 = 0;
            let mut left = len;
            while left > 0 {
                let want = left.min(CHUNK_LEN as u64) as usize;
                it.body.read_exact(&mut buf[..want]).map_err(io_err)?;
                tx.execute(chunk, &[&id.as_str(), &seq, &&buf[..want]])
                    .map_err(db_error)?;
                seq += 1;
                left -= want as u64;
            }
        }
        Ok(Imported::New)
    }

    fn try_claim(&self, max: usize) -> Result<Vec<PgClaim>, QueueError> {
        let s = &self.inner.s;
        let mut c = self.inner.hot()?;
        let promote = c.stmt("promote", || {
            format!(
                "UPDATE {s}.message SET state = 'ready' WHERE id IN (SELECT id FROM {s}.message \
                 WHERE state IN ('scheduled', 'deferred') AND due <= now() ORDER BY due \
                 LIMIT 1000 FOR UPDATE SKIP LOCKED)"
            )
        })?;
        let take = c.stmt("claim", || {
            format!(
                "UPDATE {s}.message m SET state = 'active', owner = $1, claims = m.claims + 1, \
                 claimed_at = now() FROM (SELECT id FROM {s}.message WHERE state = 'ready' \
                 ORDER BY rank, id LIMIT $2 FOR UPDATE SKIP LOCKED) c WHERE m.id = c.id \
                 RETURNING m.id, m.rank, m.claims, m.header, m.body_len, m.chunked, \
                 m.dstate::text, CASE WHEN m.body_len <= {CLAIM_INLINE_MAX} THEN m.body END"
            )
        })?;
        // due scheduled and deferred rows become ready: at most every PROMOTE_EVERY while
        // claims fill up (a deep queue), and always before a claim comes back short
        let promote_due = lock(&self.inner.promoted).is_none_or(|t| t.elapsed() >= PROMOTE_EVERY);
        if promote_due {
            c.client.execute(&promote, &[]).map_err(db_error)?;
            *lock(&self.inner.promoted) = Some(Instant::now());
        }
        let limit = max.min(10_000) as i64;
        let owner = self.inner.opts.instance.as_str();
        let under = self.inner.claimed_under(c.server);
        let mut rows = c.client.query(&take, &[&owner, &limit]).map_err(db_error)?;
        if !promote_due && (rows.len() as i64) < limit {
            let n = c.client.execute(&promote, &[]).map_err(db_error)?;
            *lock(&self.inner.promoted) = Some(Instant::now());
            if n > 0 {
                let more = limit - rows.len() as i64;
                rows.extend(c.client.query(&take, &[&owner, &more]).map_err(db_error)?);
            }
        }
        drop(c);
        let mut out = Vec::with_capacity(rows.len());
        let mut bad = Vec::new();
        for r in rows {
            let id: String = r.get(0);
            let rank: i64 = r.get(1);
            match PgClaim::from_row(Arc::clone(&self.inner), &r, under) {
                Ok(c) => out.push((rank, c)),
                Err(reason) => bad.push((id, r.get::<_, i64>(2), reason)),
            }
        }
        // a row that does not decode can never be sent: quarantine it at once
        for (id, claims, reason) in bad {
            tracing::error!(id = %id, reason = %reason, "corrupt queue row quarantined");
            let _ =
                PgClaim::settle_raw(&self.inner, &id, claims, super::Settlement::Corrupt(reason));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        Ok(out.into_iter().map(|(_, c)| c).collect())
    }

    /// Takes back every expired claim; removes tombstones older than the horizon. Returns
    /// (claims taken back, tombstones removed).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`].
    pub fn housekeeping(&self) -> Result<(usize, u64), QueueError> {
        let back = self.reclaim_expired()?;
        let purged = self.purge_tombstones()?;
        Ok((back, purged))
    }

    /// Removes tombstones (delivered rows) older than [`PgOptions::tombstone_horizon`].
    ///
    /// # Errors
    /// [`QueueError::Unavailable`].
    pub fn purge_tombstones(&self) -> Result<u64, QueueError> {
        let s = &self.inner.s;
        let mut c = self.inner.conn()?;
        let secs = self.inner.opts.tombstone_horizon.as_secs_f64();
        c.client
            .execute(
                &format!(
                    "DELETE FROM {s}.message WHERE state = 'delivered' AND settled_at < now() - \
                     make_interval(secs => $1)"
                ),
                &[&secs],
            )
            .map_err(db_error)
    }

    /// Messages per state and the age of the oldest, and the live leases; one index-only
    /// pass over `message_state_created`.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`].
    pub fn status(&self) -> Result<QueueStatus, QueueError> {
        let s = &self.inner.s;
        let mut c = self.inner.conn()?;
        let rows = c
            .client
            .query(
                &format!(
                    "SELECT state, count(*), (extract(epoch FROM now())::bigint - min(created)) \
                     FROM {s}.message GROUP BY state"
                ),
                &[],
            )
            .map_err(db_error)?;
        let order = [
            "ready",
            "scheduled",
            "active",
            "deferred",
            "held",
            "failed",
            "corrupt",
            "delivered",
        ];
        let mut states: Vec<StateCount> = rows
            .iter()
            .map(|r| StateCount {
                state: r.get(0),
                count: r.get(1),
                oldest_age_secs: r.get::<_, Option<i64>>(2).map(|a| a.max(0)),
            })
            .collect();
        states.sort_by_key(|st| order.iter().position(|o| *o == st.state));
        let leases: i64 = c
            .client
            .query_one(&format!("SELECT count(*) FROM {s}.lease"), &[])
            .map_err(db_error)?
            .get(0);
        Ok(QueueStatus {
            schema: s.clone(),
            states,
            leases,
        })
    }

    /// Makes deferred (and scheduled) messages due now: those named, or all when `ids` is
    /// empty. Returns the ids changed.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`].
    pub fn retry(&self, ids: &[String]) -> Result<Vec<String>, QueueError> {
        self.move_rows(
            ids,
            "state IN ('deferred', 'scheduled')",
            "state = 'ready', due = now()",
        )
    }

    /// Puts failed messages back in the queue (`ready`, due now): those named, or all when
    /// `ids` is empty. Returns the ids changed.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`].
    pub fn requeue_failed(&self, ids: &[String]) -> Result<Vec<String>, QueueError> {
        self.move_rows(ids, "state = 'failed'", "state = 'ready', due = now()")
    }

    fn move_rows(&self, ids: &[String], from: &str, set: &str) -> Result<Vec<String>, QueueError> {
        let s = &self.inner.s;
        let mut c = self.inner.conn()?;
        let channel = self.channel();
        let mut tx = c.client.transaction().map_err(db_error)?;
        let rows = tx
            .query(
                &format!(
                    "UPDATE {s}.message SET {set} WHERE {from} AND \
                     (cardinality($1::text[]) = 0 OR id = ANY($1)) RETURNING id"
                ),
                &[&ids],
            )
            .map_err(db_error)?;
        tx.execute("SELECT pg_notify($1, '')", &[&channel])
            .map_err(db_error)?;
        tx.commit().map_err(db_error)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The row of one message for `show`: state, owner, claim counter, body length and the
    /// dispatcher state (JSON). `None` when there is no such id.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`].
    pub fn show(&self, id: &str) -> Result<Option<serde_json::Value>, QueueError> {
        let s = &self.inner.s;
        let mut c = self.inner.conn()?;
        let row = c
            .client
            .query_opt(
                &format!(
                    "SELECT state, owner, claims, body_len, dstate::text, reason, rank, \
                     extract(epoch FROM due)::bigint FROM {s}.message WHERE id = $1"
                ),
                &[&id],
            )
            .map_err(db_error)?;
        Ok(row.map(|r| {
            let dstate: Option<String> = r.get(4);
            serde_json::json!({
                "id": id,
                "state": r.get::<_, String>(0),
                "owner": r.get::<_, Option<String>>(1),
                "claims": r.get::<_, i64>(2),
                "size": r.get::<_, i64>(3),
                "dispatch": dstate.and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok()),
                "reason": r.get::<_, Option<String>>(5),
                "rank": r.get::<_, i64>(6),
                "due": r.get::<_, i64>(7),
            })
        }))
    }

    /// Registers (or re-registers after a lost connection) this process's lease: a new
    /// advisory lock key, the session lock on it, the row.
    fn register_lease(&self, slot: &mut Option<LeaseConn>) -> Result<(), QueueError> {
        let s = &self.inner.s;
        let mut client = self.inner.db.connect()?;
        let ns = advisory_key(s, "lease");
        let key: i32 = client
            .query_one(&format!("SELECT nextval('{s}.lease_key')::integer"), &[])
            .map_err(db_error)?
            .get(0);
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&ns, &key])
            .map_err(db_error)?
            .get(0);
        if !got {
            return Err(QueueError::Unavailable(format!(
                "lease lock ({ns}, {key}) is held by another session"
            )));
        }
        let host = crate::claim::my_host();
        let pid = std::process::id() as i32;
        let grace_ms = self.grace_ms();
        // a new registration: claims of the old one are fenced by the database from now on
        let sent = BootTime::now();
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO {s}.lease (owner, lock_key, host, pid, backend_pid, \
                     fence_grace_ms) VALUES ($1, $2, $3, $4, pg_backend_pid(), $5) ON CONFLICT \
                     (owner) DO UPDATE SET lock_key = EXCLUDED.lock_key, backend_pid = \
                     EXCLUDED.backend_pid, fence_grace_ms = EXCLUDED.fence_grace_ms, \
                     renewed = now() RETURNING {identity}, {old}",
                    identity = fence::SERVER_IDENTITY,
                    old = old_dispatchers(s)
                ),
                &[
                    &self.inner.opts.instance.as_str(),
                    &key,
                    &host,
                    &pid,
                    &grace_ms,
                ],
            )
            .map_err(db_error)?;
        let identity: String = row.get(0);
        {
            let mut l = lock(&self.inner.local);
            l.epoch += 1;
            l.renewal_sent = renewal_for_fence(sent, row.get(1));
            l.server = Some(fence::server_id(&identity));
        }
        *slot = Some(LeaseConn {
            client,
            lock_key: key,
        });
        Ok(())
    }

    /// This owner's `lease.fence_grace_ms`: [`PgOptions::lockless_grace`] (at most three
    /// minutes, the window being at most one).
    fn grace_ms(&self) -> i32 {
        self.inner
            .opts
            .lockless_grace()
            .as_millis()
            .min(i32::MAX as u128) as i32
    }

    fn renew_if_due(&self) -> Result<(), QueueError> {
        let due = match *lock(&self.inner.renewed) {
            Some(t) => t.elapsed() >= self.inner.opts.lease / 4,
            None => true,
        };
        if due {
            self.heartbeat()?;
        }
        Ok(())
    }

    /// Gives the lease back at a clean shutdown (after every claim was settled): removes the
    /// row and closes the lease connection (which drops the advisory lock).
    pub fn release_lease(&self) {
        let s = &self.inner.s;
        if let Some(mut l) = lock(&self.inner.lease).take() {
            let _ = l.client.execute(
                &format!("DELETE FROM {s}.lease WHERE owner = $1"),
                &[&self.inner.opts.instance.as_str()],
            );
        }
        *lock(&self.inner.renewed) = None;
        lock(&self.inner.local).renewal_sent = None;
    }
}

impl Queue for PgQueue {
    type Claim = PgClaim;

    fn claim(&self, max: usize, wait: Duration) -> Result<Vec<PgClaim>, QueueError> {
        let deadline = Instant::now() + wait;
        loop {
            let seen = self.inner.wake.current();
            self.renew_if_due()?;
            if !self.inner.lease_fresh() {
                // renewal is failing (the database is unreachable): claim nothing
                return Err(QueueError::Unavailable(
                    "the lease cannot be renewed: claiming nothing until it can".into(),
                ));
            }
            let got = self.try_claim(max)?;
            if !got.is_empty() {
                return Ok(got);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            self.inner
                .wake
                .wait_change(seen, (deadline - now).min(self.inner.opts.poll));
        }
    }

    fn heartbeat(&self) -> Result<LeaseHealth, QueueError> {
        let s = &self.inner.s;
        let mut slot = lock(&self.inner.lease);
        let renewed = {
            let mut renewed = false;
            if let Some(l) = slot.as_mut().filter(|l| !l.client.is_closed()) {
                let ns = advisory_key(s, "lease");
                let sent = BootTime::now();
                match l.client.query_opt(
                    &format!(
                        "UPDATE {s}.lease SET renewed = now(), fence_grace_ms = $4 WHERE owner = \
                         $1 AND lock_key = $2 RETURNING (SELECT count(*) FROM pg_locks WHERE \
                         locktype = 'advisory' AND granted AND pid = pg_backend_pid() AND \
                         classid = $3::integer::oid AND objid = $2::integer::oid AND objsubid = \
                         2), {old}",
                        old = old_dispatchers(s)
                    ),
                    &[
                        &self.inner.opts.instance.as_str(),
                        &l.lock_key,
                        &ns,
                        &self.grace_ms(),
                    ],
                ) {
                    Ok(Some(r)) if r.get::<_, i64>(0) > 0 => {
                        renewed = true;
                        lock(&self.inner.local).renewal_sent = renewal_for_fence(sent, r.get(1));
                    }
                    Ok(_) => {
                        lock(&self.inner.local).renewal_sent = None;
                        tracing::warn!(
                            instance = %self.inner.opts.instance,
                            "the lease row was taken back (this process was stopped or cut off \
                             for longer than the lease): its claims are fenced out; \
                             registering a new lease"
                        );
                        *slot = None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lease renewal failed");
                        lock(&self.inner.local).renewal_sent = None;
                        *slot = None;
                    }
                }
            }
            renewed
        };
        if !renewed && let Err(e) = self.register_lease(&mut slot) {
            // stale while the last renewal is younger than a lease, then the error itself
            let age = lock(&self.inner.renewed).map(|t| t.elapsed());
            return match (e, age) {
                (QueueError::Unavailable(_), Some(age)) if age < self.inner.opts.lease => {
                    Ok(LeaseHealth::Stale { age })
                }
                (e, _) => Err(e),
            };
        }
        *lock(&self.inner.renewed) = Some(Instant::now());
        Ok(LeaseHealth::Fresh)
    }

    fn reclaim_expired(&self) -> Result<usize, QueueError> {
        let s = &self.inner.s;
        let mut c = self.inner.conn()?;
        let ns = advisory_key(s, "lease");
        let lease = self.inner.opts.lease.as_secs_f64();
        let mut tx = c.client.transaction().map_err(db_error)?;
        let dead = tx
            .query(
                &format!(
                    "DELETE FROM {s}.lease l WHERE l.owner <> $1 AND l.renewed < now() - \
                     coalesce(l.fence_grace_ms, 0) * interval '1 millisecond' AND (l.renewed < \
                     now() - make_interval(secs => $2) OR NOT EXISTS (SELECT 1 FROM pg_locks p \
                     WHERE p.locktype = 'advisory' AND p.granted AND p.database = (SELECT oid \
                     FROM pg_database WHERE datname = current_database()) AND p.classid = \
                     $3::integer::oid AND p.objid = l.lock_key::oid AND p.objsubid = 2)) \
                     RETURNING l.owner"
                ),
                &[&self.inner.opts.instance.as_str(), &lease, &ns],
            )
            .map_err(db_error)?;
        let back = tx
            .execute(
                &format!(
                    "UPDATE {s}.message m SET state = 'ready', owner = NULL WHERE m.state = \
                     'active' AND m.owner <> $1 AND NOT EXISTS (SELECT 1 FROM {s}.lease l WHERE \
                     l.owner = m.owner)"
                ),
                &[&self.inner.opts.instance.as_str()],
            )
            .map_err(db_error)?;
        if back > 0 {
            tx.execute("SELECT pg_notify($1, '')", &[&self.channel()])
                .map_err(db_error)?;
        }
        tx.commit().map_err(db_error)?;
        if back > 0 || !dead.is_empty() {
            let owners: Vec<String> = dead.iter().map(|r| r.get(0)).collect();
            tracing::info!(claims = back, owners = ?owners, "expired claims taken back");
        }
        Ok(back as usize)
    }
}
