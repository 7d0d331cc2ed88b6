//! One claimed row: its header, state, body stream, fence and settle.

use std::io::{self, Read};
use std::sync::Arc;

use qmail_core::SpoolHeader;

use super::{Inner, db_error};
use crate::queue::{Claim, QueueError, SettleError, Settlement};
use crate::state::MessageState;

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
    pub(crate) fn from_row(inner: Arc<Inner>, r: &postgres::Row) -> Result<PgClaim, String> {
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
        let guard = "id = $1 AND owner = $2 AND claims = $3 AND state = 'active'";
        let json = |st: &MessageState| {
            serde_json::to_string(st).map_err(|e| {
                SettleError::Queue(QueueError::Corrupt {
                    id: id.to_owned(),
                    reason: format!("state does not encode: {e}"),
                })
            })
        };
        let mut c = inner.conn()?;
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
            let mut c = self.inner.conn()?;
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
    fn still_mine(&self) -> bool {
        if !self.inner.lease_fresh() {
            return false;
        }
        let s = &self.inner.s;
        let Ok(mut c) = self.inner.conn() else {
            return false;
        };
        let Ok(st) = c.stmt("fence", || {
            format!(
                "SELECT 1 FROM {s}.message WHERE id = $1 AND owner = $2 AND claims = $3 AND \
                 state = 'active'"
            )
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
            let mut c = self.inner.conn().map_err(io::Error::other)?;
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
