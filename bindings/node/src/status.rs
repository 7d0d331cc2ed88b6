//! `status(queueId, { spool, deliveryLog })`: where a submitted message is, over the core's
//! read-only view (`qmail_core::spool::status`; the same answer as the dispatcher's `list`,
//! Python's `Spool.status()` and C's `qmail_message_state()`). Nothing here writes.

use std::path::{Path, PathBuf};

use napi::Task;
use napi::bindgen_prelude::{AsyncTask, Either, Env};
use napi_derive::napi;
use qmail_core::Error;
use qmail_core::spool::status::{self, State};

use crate::error::to_js;

/// Options of {@link status}.
#[napi(object)]
pub struct StatusOptions {
    /// The spool directory (or directories) to look in; default: the default spool(s) of
    /// `setDefaultSpool()`, else `QMAIL_SPOOL`.
    pub spool: Option<Either<String, Vec<String>>>,
    /// The dispatcher's `delivery_log` file: tells a delivered message from an unknown one
    /// when `sent/` does not keep delivered messages.
    pub delivery_log: Option<String>,
}

/// Where a message is. Times are Unix seconds.
#[napi(object)]
pub struct MessageStatus {
    /// The queue id.
    pub id: String,
    /// `queued`, `scheduled`, `active`, `deferred`, `held`, `failed`, `delivered` or
    /// `unknown`.
    #[napi(
        ts_type = "'queued' | 'scheduled' | 'active' | 'deferred' | 'held' | 'failed' | 'delivered' | 'unknown'"
    )]
    pub state: String,
    /// The spool directory it was found in, or null.
    pub spool: Option<String>,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (retry time, or not-before time), or null.
    pub next_attempt: Option<i64>,
    /// The last reply (a deferral's reason, e.g. `451 4.7.1 try later`), or null.
    pub last_reply: Option<String>,
    /// Why it failed: the message-level reason, then `<rcpt>: reply` per recipient.
    pub reasons: Vec<String>,
    /// When it was delivered, or null.
    pub delivered_at: Option<i64>,
}

fn lookup(spools: &[PathBuf], id: &str, log: Option<&Path>) -> qmail_core::Result<MessageStatus> {
    if spools.is_empty() {
        return Err(Error::new(
            qmail_core::ErrorKind::NoSpoolConfigured,
            "no spool to look in",
        )
        .with_field("spool"));
    }
    let mut answer = None;
    for sp in spools {
        let s = status::status(sp, id, log)?;
        let found = s.state != State::Unknown;
        answer = Some(MessageStatus {
            id: s.id,
            state: s.state.as_str().to_owned(),
            spool: found.then(|| sp.display().to_string()),
            attempts: s.attempts,
            next_attempt: s.next_attempt,
            last_reply: s.last_reply,
            reasons: s.reasons,
            delivered_at: s.delivered_at,
        });
        if found {
            break;
        }
    }
    answer.ok_or_else(|| Error::new(qmail_core::ErrorKind::NoSpoolConfigured, "no spool"))
}

/// The lookup, on the libuv thread pool.
pub struct StatusTask {
    spools: Option<Vec<PathBuf>>,
    id: String,
    log: Option<PathBuf>,
    failure: Option<Error>,
}

impl Task for StatusTask {
    type Output = MessageStatus;
    type JsValue = MessageStatus;

    fn compute(&mut self) -> napi::Result<MessageStatus> {
        let r = match &self.spools {
            Some(s) => lookup(s, &self.id, self.log.as_deref()),
            None => qmail_core::default_initiator()
                .and_then(|i| lookup(i.spools(), &self.id, self.log.as_deref())),
        };
        r.map_err(|e| {
            let placeholder = napi::Error::from_reason(e.to_string());
            self.failure = Some(e);
            placeholder
        })
    }

    fn resolve(&mut self, _env: Env, s: MessageStatus) -> napi::Result<MessageStatus> {
        Ok(s)
    }

    fn reject(&mut self, env: Env, err: napi::Error) -> napi::Result<MessageStatus> {
        Err(match self.failure.take() {
            Some(e) => to_js(&env, &e),
            None => err,
        })
    }
}

/// Resolves to where message `queueId` (the id `submit()` resolved to) is: the first spool
/// that knows it answers, else `unknown`. Read-only, safe beside running dispatchers; the
/// directory reads run on the libuv thread pool.
///
/// Rejects with `QMAIL_INVALID_ARGUMENT` (field `queue_id`) for a string that is not a queue
/// id, `QMAIL_SPOOL_UNAVAILABLE` (field `spool`) for a spool that cannot be read,
/// `QMAIL_NO_SPOOL_CONFIGURED` when no spool is given, set or in `QMAIL_SPOOL`.
#[napi(ts_return_type = "Promise<MessageStatus>")]
pub fn status(queue_id: String, options: Option<StatusOptions>) -> AsyncTask<StatusTask> {
    let (spools, log) = match options {
        Some(o) => (
            o.spool.map(|s| match s {
                Either::A(one) => std::env::split_paths(&one).collect(),
                Either::B(list) => list.into_iter().map(PathBuf::from).collect(),
            }),
            o.delivery_log.map(PathBuf::from),
        ),
        None => (None, None),
    };
    AsyncTask::new(StatusTask {
        spools,
        id: queue_id,
        log,
        failure: None,
    })
}
