//! One claimed row: its header, state, body stream, fence and settle.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

use qmail_core::SpoolHeader;

use super::fence::ClaimedUnder;
use super::{Inner, db_error};
use crate::queue::{Claim, QueueError, SettleError, Settlement};
use crate::state::MessageState;

/// The fence of every settle and of `still_mine` (`$1` id, `$2` owner, `$3` claim counter):
/// the row is still this claim. `owner = $2` implies `state = 'active'` (constraint
/// `message_owner`), so the state is not repeated: with it the planner may pick the partial
/// index `message_active` and read every row the owner holds (one per worker) for each
/// fence, where the primary key reads one.
const FENCE: &str = "id = $1 AND owner = $2 AND claims = $3";

/// A message claimed from a [`super::PgQueue`]: the row is `active` under this process's
/// owner name with claim counter [`PgClaim::fence_token`].
pub struct PgClaim {
    inner: Arc<Inner>,
    pub(crate) id: String,
    claims: i64,
    header: SpoolHeader,
    state: MessageState,
    body_len: u64,
    chunked: bool,
    /// The body when it came with the claim (small messages).
    body: Option<Vec<u8>>,
    /// When and under which lease registration the claim statement was sent (the local
    /// fence, `fence.rs`).
    under: ClaimedUnder,
}

impl std::fmt::Debug for PgClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgClaim")
            .field("id", &self.id)
            .field("claims", &self.claims)
            .field("body_len", &self.body_len)
            .finish()
    }
}

impl PgClaim {
    pub(crate) fn from_row(
        inner: Arc<Inner>,
        r: &postgres::Row,
        under: ClaimedUnder,
    ) -> Result<PgClaim, String> {
        let id: String = r.get(0);
        let claims: i64 = r.get(2);
        let hbytes: Vec<u8> = r.get(3);
        let body_len: i64 = r.get(4);
        let chunked: bool = r.get(5);
        let dstate: Option<String> = r.get(6);
        let body: Option<Vec<u8>> = r.get(7);
        let header: SpoolHeader = postcard_header(&hbytes)?;
        let state = match dstate {
            Some(j) => {
                serde_json::from_str(&j).map_err(|e| format!("dstate does not parse: {e}"))?
            }
            None => MessageState::default(),
        };
        if let Some(b) = &body
            && b.len() as i64 != body_len
        {
            return Err(format!(
                "body is {} bytes, body_len says {body_len}",
                b.len()
            ));
        }
        Ok(PgClaim {
            inner,
            id,
            claims,
            header,
            state,
            body_len: body_len.max(0) as u64,
            chunked,
            body,
            under,
        })
    }

    /// The claim counter this claim holds (the fencing token of every settle).
    pub fn fence_token(&self) -> i64 {
        self.claims
    }

    /// [`Claim::settle`] without giving the claim up, so a settle that could not be written
    /// ([`SettleError::Queue`]: the database is failing over) can be retried with the same
    /// fencing token. A retry after a COMMIT whose reply was lost finds the row already
    /// settled and says [`SettleError::LostClaim`]: the first settle took effect.
    ///
    /// # Errors
    /// As [`Claim::settle`].
    pub fn settle_ref(&self, outcome: Settlement) -> Result<(), SettleError> {
        PgClaim::settle_raw(&self.inner, &self.id, self.claims, outcome)
    }

    /// The guarded settle, also used to quarantine rows that do not decode. One statement
    /// (autocommit) per settle: the guard, the state change, the chunks of a delivered
    /// message and the notification of a release happen together or not at all.
    pub(crate) fn settle_raw(
        inner: &Inner,
        id: &str,
        claims: i64,
        outcome: Settlement,
    ) -> Result<(), SettleError> {
        let s = &inner.s;
        let owner = inner.opts.instance.as_str();
        let guard = FENCE;
        let json = |st: &MessageState| {
            serde_json::to_string(st).map_err(|e| {
                SettleError::Queue(QueueError::Corrupt {
                    id: id.to_owned(),
                    reason: format!("state does not encode: {e}"),
                })
            })
        };
        let mut c = inner.hot()?;
        let count = |u: &str| format!("WITH u AS ({u} RETURNING id) SELECT count(*) FROM u");
        let row = match &outcome {
            Settlement::Delivered(st) => {
                let j = json(st)?;
                let q = c.stmt("settle_delivered", || {
                    format!(
                        "WITH u AS (UPDATE {s}.message SET state = 'delivered', owner = NULL, \
                         body = NULL, chunked = false, dstate = $4::text::jsonb, \
                         settled_at = now() WHERE {guard} RETURNING id), \
                         d AS (DELETE FROM {s}.chunk WHERE id IN (SELECT id FROM u)) \
                         SELECT count(*) FROM u"
                    )
                })?;
                c.client.query_one(&q, &[&id, &owner, &claims, &j])
            }
            Settlement::Deferred { state, due } => {
                let j = json(state)?;
                let q = c.stmt("settle_deferred", || {
                    count(&format!(
                        "UPDATE {s}.message SET state = 'deferred', owner = NULL, \
                         dstate = $4::text::jsonb, due = to_timestamp($5::bigint), \
                         settled_at = now() WHERE {guard}"
                    ))
                })?;
                c.client.query_one(&q, &[&id, &owner, &claims, &j, due])
            }
            Settlement::Failed(st) => {
                let j = json(st)?;
                let q = c.stmt("settle_failed", || {
                    count(&format!(
                        "UPDATE {s}.message SET state = 'failed', owner = NULL, \
                         dstate = $4::text::jsonb, settled_at = now() WHERE {guard}"
                    ))
                })?;
                c.client.query_one(&q, &[&id, &owner, &claims, &j])
            }
            Settlement::Corrupt(reason) => {
                let q = c.stmt("settle_corrupt", || {
                    count(&format!(
                        "UPDATE {s}.message SET state = 'corrupt', owner = NULL, reason = $4, \
                         settled_at = now() WHERE {guard}"
                    ))
                })?;
                c.client.query_one(&q, &[&id, &owner, &claims, reason])
            }
            Settlement::Held => {
                let q = c.stmt("settle_held", || {
                    count(&format!(
                        "UPDATE {s}.message SET state = 'held', owner = NULL WHERE {guard}"
                    ))
                })?;
                c.client.query_one(&q, &[&id, &owner, &claims])
            }
            Settlement::Release => {
                let q = c.stmt("settle_release", || {
                    format!(
                        "WITH u AS (UPDATE {s}.message SET state = 'ready', owner = NULL \
                         WHERE {guard} RETURNING id) \
                         SELECT count(*) FROM (SELECT pg_notify($4, '') FROM u) n"
                    )
                })?;
                let channel = format!("{s}_ready");
                c.client.query_one(&q, &[&id, &owner, &claims, &channel])
            }
        };
        let n: i64 = row.map_err(db_error)?.get(0);
        if n == 0 {
            tracing::warn!(
                id = %id,
                owner = %owner,
                claims,
                "settle refused: the claim was taken back by another dispatcher (stale owner); \
                 nothing changed"
            );
            return Err(SettleError::LostClaim);
        }
        Ok(())
    }
}

/// One request to the [`GroupSettler`] thread.
struct GroupReq {
    id: String,
    claims: i64,
    dstate: String,
    /// The caller wants its next row claimed in the same statement.
    want_next: bool,
    reply: mpsc::SyncSender<Result<Option<PgClaim>, SettleError>>,
}

/// Writes the [`Settlement::Delivered`] settles of many workers together: one transaction
/// (one statement, so one commit and one WAL flush) for every settle that arrived while the
/// previous one was being written. Each row keeps its own fence (`owner`, claim counter,
/// `state = 'active'`): a row whose claim was taken back changes nothing and only its
/// caller hears [`SettleError::LostClaim`]; the others commit. A transaction that fails
/// answers [`SettleError::Queue`] to every caller in it (nothing of it was written), and
/// each retries with the same fencing token, as for [`PgClaim::settle_ref`] (rule 4 of
/// `queue/mod.rs`). The collection window is the previous transaction's duration: an idle
/// queue's settle is written at once, under load the groups grow by themselves.
///
/// A caller may also ask for its next row ([`GroupSettler::settle_and_claim`]): the same
/// statement then claims, as [`crate::queue::Queue::claim`] does (`FOR UPDATE SKIP LOCKED`,
/// the claim counter bumped), one ready row for each caller of the group that asked, so a
/// worker's settle and its next claim cost one round trip and one commit, not two. Rows are
/// claimed only while this process's lease is fresh; a caller that gets none claims as usual.
///
/// The other outcomes (rare in the steady state) are written by the caller's thread with
/// [`PgClaim::settle_ref`]. Dropping the settler stops its thread after the settles in hand.
pub struct GroupSettler {
    tx: Option<mpsc::Sender<GroupReq>>,
    thread: Option<std::thread::JoinHandle<()>>,
    counts: Arc<GroupCounts>,
}

/// What a [`GroupSettler`] has done so far.
#[derive(Debug, Default)]
struct GroupCounts {
    /// Settles handed to the thread and not yet taken into a transaction.
    queued: AtomicUsize,
    /// Transactions written (committed or failed).
    transactions: AtomicU64,
}

impl std::fmt::Debug for GroupSettler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupSettler").finish_non_exhaustive()
    }
}

impl GroupSettler {
    /// Starts the settler thread for the queue `inner`, writing at most `max_group` settles
    /// per transaction (at least 1).
    pub(crate) fn start(inner: Arc<Inner>, max_group: usize) -> GroupSettler {
        let max_group = max_group.max(1);
        let (tx, rx) = mpsc::channel::<GroupReq>();
        let counts = Arc::new(GroupCounts::default());
        let c2 = Arc::clone(&counts);
        let thread = std::thread::Builder::new()
            .name("qmail-pg-settle".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    while group.len() < max_group {
                        match rx.try_recv() {
                            Ok(r) => group.push(r),
                            Err(_) => break,
                        }
                    }
                    c2.queued.fetch_sub(group.len(), Ordering::SeqCst);
                    let rows: Vec<(&str, i64, &str)> = group
                        .iter()
                        .map(|r| (r.id.as_str(), r.claims, r.dstate.as_str()))
                        .collect();
                    // rows for the next attempts only under a fresh lease (as `Queue::claim`)
                    let want = if inner.lease_fresh() {
                        group.iter().filter(|r| r.want_next).count()
                    } else {
                        0
                    };
                    let written = settle_delivered_group(&inner, &rows, want);
                    c2.transactions.fetch_add(1, Ordering::SeqCst);
                    match written {
                        Ok((done, claimed)) => {
                            let mut claimed = claimed.into_iter();
                            for r in group {
                                let res = if done.contains(r.id.as_str()) {
                                    Ok(if r.want_next { claimed.next() } else { None })
                                } else {
                                    lost_claim_log(&inner, &r.id, r.claims);
                                    Err(SettleError::LostClaim)
                                };
                                let _ = r.reply.send(res);
                            }
                            // a row nobody took (its asker's settle was refused): given back
                            for c in claimed {
                                let _ = c.settle_ref(Settlement::Release);
                            }
                        }
                        Err(e) => {
                            let text = e.to_string();
                            for r in group {
                                let _ = r.reply.send(Err(SettleError::Queue(
                                    QueueError::Unavailable(text.clone()),
                                )));
                            }
                        }
                    }
                }
            });
        match thread {
            Ok(t) => GroupSettler {
                tx: Some(tx),
                thread: Some(t),
                counts,
            },
            Err(e) => {
                // no thread: every settle is written by its caller
                tracing::warn!(error = %e, "cannot start the settle thread; settling one by one");
                GroupSettler {
                    tx: None,
                    thread: None,
                    counts,
                }
            }
        }
    }

    /// Settles `claim` as [`PgClaim::settle_ref`] does, grouping a
    /// [`Settlement::Delivered`] with other workers' (see [`GroupSettler`]). Blocks until the
    /// outcome is written or refused.
    ///
    /// # Errors
    /// As [`PgClaim::settle_ref`]: [`SettleError::LostClaim`] for this row alone;
    /// [`SettleError::Queue`] when its transaction failed (retry with the same claim).
    pub fn settle(&self, claim: &PgClaim, outcome: Settlement) -> Result<(), SettleError> {
        self.settle_and_claim(claim, outcome, false).map(|_| ())
    }

    /// [`GroupSettler::settle`], and when `want_next` and the outcome is
    /// [`Settlement::Delivered`], the next ready row claimed for this caller in the same
    /// statement (see [`GroupSettler`]): `Ok(Some(row))`, or `Ok(None)` when there was none
    /// (or the lease was not fresh: claim as usual then). The row is `active` under this
    /// process's owner name: the caller attempts it or gives it back.
    ///
    /// # Errors
    /// As [`GroupSettler::settle`]; no row is claimed for a caller that gets an error.
    pub fn settle_and_claim(
        &self,
        claim: &PgClaim,
        outcome: Settlement,
        want_next: bool,
    ) -> Result<Option<PgClaim>, SettleError> {
        let (Settlement::Delivered(st), Some(tx)) = (&outcome, &self.tx) else {
            return claim.settle_ref(outcome).map(|()| None);
        };
        let dstate = encode_state(&claim.id, st)?;
        let (reply, answer) = mpsc::sync_channel(1);
        let req = GroupReq {
            id: claim.id.clone(),
            claims: claim.claims,
            dstate,
            want_next,
            reply,
        };
        self.counts.queued.fetch_add(1, Ordering::SeqCst);
        if tx.send(req).is_err() {
            self.counts.queued.fetch_sub(1, Ordering::SeqCst);
            return claim.settle_ref(outcome).map(|()| None);
        }
        match answer.recv() {
            Ok(r) => r,
            // the thread is gone (it panicked): whether the group committed is unknown, and
            // a retry with the same token says which (LostClaim: it did)
            Err(_) => Err(SettleError::Queue(QueueError::Unavailable(
                "the settle thread stopped".into(),
            ))),
        }
    }
}

impl GroupSettler {
    /// Delivered settles waiting for the next transaction (handed over, not yet written).
    pub fn queued(&self) -> usize {
        self.counts.queued.load(Ordering::SeqCst)
    }

    /// Transactions the settler has run so far (each holds one or more settles).
    pub fn transactions(&self) -> u64 {
        self.counts.transactions.load(Ordering::SeqCst)
    }
}

impl Drop for GroupSettler {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn encode_state(id: &str, st: &MessageState) -> Result<String, SettleError> {
    serde_json::to_string(st).map_err(|e| {
        SettleError::Queue(QueueError::Corrupt {
            id: id.to_owned(),
            reason: format!("state does not encode: {e}"),
        })
    })
}

fn lost_claim_log(inner: &Inner, id: &str, claims: i64) {
    tracing::warn!(
        id = %id,
        owner = %inner.opts.instance,
        claims,
        "settle refused: the claim was taken back by another dispatcher (stale owner); \
         nothing changed"
    );
}

/// Settles several claims of this owner as delivered in one statement (one transaction),
/// each row guarded by its own fence; returns the ids that took effect (the others were
/// taken back: nothing changed for them). Rows are `(id, claim counter, state JSON)`. The
/// same statement claims up to `claim` ready rows for this owner (`FOR UPDATE SKIP LOCKED`,
/// in rank order, as `PgQueue::try_claim`), returned in rank order; a claimed row that does
/// not decode is quarantined (`corrupt`) and left out.
///
/// # Errors
/// [`QueueError::Unavailable`]: nothing of the group was written, nothing claimed.
pub(crate) fn settle_delivered_group(
    inner: &Arc<Inner>,
    rows: &[(&str, i64, &str)],
    claim: usize,
) -> Result<(std::collections::HashSet<String>, Vec<PgClaim>), QueueError> {
    let s = &inner.s;
    let owner = inner.opts.instance.as_str();
    let ids: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let claims: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let states: Vec<&str> = rows.iter().map(|r| r.2).collect();
    let limit = claim.min(10_000) as i64;
    let mut c = inner.hot()?;
    let under = inner.claimed_under(c.server);
    // columns 0..8 as the claim statement's (`PgClaim::from_row`), then "is a settle"
    let q = c.stmt("settle_claim_group", || {
        format!(
            "WITH v AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) \
             AS v(id, claims, dstate)), \
             u AS (UPDATE {s}.message m SET state = 'delivered', owner = NULL, body = NULL, \
             chunked = false, dstate = v.dstate::jsonb, settled_at = now() FROM v \
             WHERE m.id = v.id AND m.owner = $4 AND m.claims = v.claims \
             RETURNING m.id), \
             d AS (DELETE FROM {s}.chunk WHERE id IN (SELECT id FROM u)), \
             c AS (UPDATE {s}.message m SET state = 'active', owner = $4, \
             claims = m.claims + 1, claimed_at = now() FROM (SELECT id FROM {s}.message \
             WHERE state = 'ready' ORDER BY rank, id LIMIT $5 FOR UPDATE SKIP LOCKED) n \
             WHERE m.id = n.id RETURNING m.id, m.rank, m.claims, m.header, m.body_len, \
             m.chunked, m.dstate::text, \
             CASE WHEN m.body_len <= {CLAIM_INLINE_MAX} THEN m.body END) \
             SELECT id, NULL::bigint, NULL::bigint, NULL::bytea, NULL::bigint, NULL::boolean, \
             NULL::text, NULL::bytea, true FROM u \
             UNION ALL SELECT c.*, false FROM c",
            CLAIM_INLINE_MAX = super::CLAIM_INLINE_MAX
        )
    })?;
    let got = c
        .client
        .query(&q, &[&ids, &claims, &states, &owner, &limit])
        .map_err(db_error)?;
    drop(c);
    let mut done = std::collections::HashSet::new();
    let mut next = Vec::new();
    for r in &got {
        if r.get::<_, bool>(8) {
            done.insert(r.get::<_, String>(0));
            continue;
        }
        match PgClaim::from_row(Arc::clone(inner), r, under) {
            Ok(c) => next.push((r.get::<_, i64>(1), c)),
            Err(reason) => {
                let id: String = r.get(0);
                tracing::error!(id = %id, reason = %reason, "corrupt queue row quarantined");
                let _ = PgClaim::settle_raw(inner, &id, r.get(2), Settlement::Corrupt(reason));
            }
        }
    }
    next.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
    Ok((done, next.into_iter().map(|(_, c)| c).collect()))
}

/// Decodes the `header` column: the postcard bytes a spool file holds after its 14-byte
/// prefix (`docs/spool-format.md`).
fn postcard_header(bytes: &[u8]) -> Result<SpoolHeader, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("header does not decode: {e}"))
}

impl Claim for PgClaim {
    fn id(&self) -> &str {
        &self.id
    }
    fn header(&self) -> &SpoolHeader {
        &self.header
    }
    fn state(&self) -> &MessageState {
        &self.state
    }
    fn body_len(&self) -> u64 {
        self.body_len
    }
    fn body(&self) -> Result<Box<dyn Read + Send + '_>, QueueError> {
        if let Some(b) = &self.body {
            return Ok(Box::new(io::Cursor::new(b.as_slice())));
        }
        if !self.chunked {
            // inline but larger than what comes with a claim: one query
            let s = &self.inner.s;
            let mut c = self.inner.hot()?;
            let row = c
                .client
                .query_opt(
                    &format!("SELECT body FROM {s}.message WHERE id = $1"),
                    &[&self.id],
                )
                .map_err(db_error)?;
            let b: Option<Vec<u8>> = row.and_then(|r| r.get(0));
            let b = b.ok_or_else(|| QueueError::Corrupt {
                id: self.id.clone(),
                reason: "the row has no body".into(),
            })?;
            if b.len() as u64 != self.body_len {
                return Err(QueueError::Corrupt {
                    id: self.id.clone(),
                    reason: format!("body is {} bytes, body_len says {}", b.len(), self.body_len),
                });
            }
            return Ok(Box::new(io::Cursor::new(b)));
        }
        Ok(Box::new(BodyReader {
            inner: Arc::clone(&self.inner),
            id: self.id.clone(),
            seq: 0,
            buf: Vec::new(),
            pos: 0,
            read: 0,
            len: self.body_len,
        }))
    }
    /// From the lease while it is fresh enough (`fence.rs`), else from the database.
    fn still_mine(&self) -> bool {
        if !self.inner.lease_fresh() {
            return false;
        }
        if self.inner.fenced_by_lease(self.under) {
            return true;
        }
        let s = &self.inner.s;
        let Ok(mut c) = self.inner.hot() else {
            return false;
        };
        let Ok(st) = c.stmt("fence", || {
            format!("SELECT 1 FROM {s}.message WHERE {FENCE}")
        }) else {
            return false;
        };
        matches!(
            c.client.query_opt(
                &st,
                &[&self.id, &self.inner.opts.instance.as_str(), &self.claims]
            ),
            Ok(Some(_))
        )
    }
    fn settle(self, outcome: Settlement) -> Result<(), SettleError> {
        PgClaim::settle_raw(&self.inner, &self.id, self.claims, outcome)
    }
}

/// A chunked body, read one chunk (one query) at a time: at most one [`super::CHUNK_LEN`]
/// in memory.
pub struct BodyReader {
    inner: Arc<Inner>,
    id: String,
    seq: i32,
    buf: Vec<u8>,
    pos: usize,
    read: u64,
    len: u64,
}

impl Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.read == self.len {
                return Ok(0);
            }
            let s = &self.inner.s;
            let mut c = self.inner.hot().map_err(io::Error::other)?;
            let st = c
                .stmt("chunk_get", || {
                    format!("SELECT data FROM {s}.chunk WHERE id = $1 AND seq = $2")
                })
                .map_err(io::Error::other)?;
            let row = c
                .client
                .query_opt(&st, &[&self.id, &self.seq])
                .map_err(|e| io::Error::other(db_error(e)))?;
            drop(c);
            let Some(row) = row else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{}: chunk {} missing after {} of {} bytes",
                        self.id, self.seq, self.read, self.len
                    ),
                ));
            };
            self.buf = row.get(0);
            self.pos = 0;
            self.seq += 1;
            if self.read + self.buf.len() as u64 > self.len || self.buf.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: chunks do not add up to {} bytes", self.id, self.len),
                ));
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.read += n as u64;
        Ok(n)
    }
}
