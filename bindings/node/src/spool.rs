//! Submitting built messages, and the default spool.
//!
//! A submit renders the message into `SPOOL/tmp/ID`, fsyncs it, renames it into `ready/` (or
//! `scheduled/` when `notBefore` is in the future) and fsyncs the directory: when the Promise
//! resolves (or `submitSync` returns) the message survives a crash or power loss. Where it goes:
//! the call's `{ spool }`, else the default set by [`set_default_spool`], else `QMAIL_SPOOL`.

use std::path::Path;

use napi::Task;
use napi::bindgen_prelude::{AsyncTask, Either, Env};
use napi_derive::napi;
use qmail_core::{Error, ErrorKind, Spool};

use crate::error::to_js;
use crate::message::{Message, Prepared};

/// Options of a submit call.
#[napi(object)]
pub struct SubmitOptions {
    /// The spool directory for this message (created with its state directories when
    /// missing), instead of the default spool(s).
    pub spool: Option<String>,
}

/// Spools a prepared message and returns the queue id.
pub(crate) fn spool_prepared(p: &Prepared) -> qmail_core::Result<String> {
    let id = match p {
        Prepared::Built(m) => qmail_core::submit(m)?,
        Prepared::Raw(raw, Some(spool)) => Spool::open(spool)?.submit_raw(raw)?,
        Prepared::Raw(raw, None) => qmail_core::default_initiator()?.submit_raw(raw, None)?,
    };
    Ok(id.to_string())
}

/// A submit's work, run on the libuv thread pool (build, render, write, fsync); a qmail error
/// keeps its kind and field for the rejection. Shared by [`submit`] and `submitRaw`.
pub struct SpoolTask {
    work: Box<dyn FnMut() -> qmail_core::Result<String> + Send>,
    failure: Option<Error>,
}

impl SpoolTask {
    pub(crate) fn new(
        work: impl FnMut() -> qmail_core::Result<String> + Send + 'static,
    ) -> AsyncTask<SpoolTask> {
        AsyncTask::new(SpoolTask {
            work: Box::new(work),
            failure: None,
        })
    }
}

impl Task for SpoolTask {
    type Output = String;
    type JsValue = String;

    fn compute(&mut self) -> napi::Result<String> {
        (self.work)().map_err(|e| {
            let placeholder = napi::Error::from_reason(e.to_string());
            self.failure = Some(e);
            placeholder
        })
    }

    fn resolve(&mut self, _env: Env, id: String) -> napi::Result<String> {
        Ok(id)
    }

    fn reject(&mut self, env: Env, err: napi::Error) -> napi::Result<String> {
        Err(match self.failure.take() {
            Some(e) => to_js(&env, &e),
            None => err,
        })
    }
}

/// Builds the message, writes it durably into the spool and resolves to its queue id (the
/// spool file name, e.g. `1764441600.123456.4242.7.9f1c03a2b4d5e6f7.web1`; not the
/// Message-ID header). The work runs on the libuv thread pool, off the main thread.
///
/// Rejects with a qmail `Error` (`code`, `field`): `QMAIL_INVALID_ADDRESS`,
/// `QMAIL_INVALID_HEADER`, `QMAIL_INVALID_MESSAGE`, `QMAIL_INVALID_ARGUMENT` and
/// `QMAIL_ATTACHMENT` are permanent; `QMAIL_SPOOL_UNAVAILABLE` is transient (try again later);
/// `QMAIL_NO_SPOOL_CONFIGURED` when no spool was named, set or found in `QMAIL_SPOOL`.
#[napi(ts_return_type = "Promise<string>")]
pub fn submit(message: Message, options: Option<SubmitOptions>) -> AsyncTask<SpoolTask> {
    let spool = options.and_then(|o| o.spool);
    SpoolTask::new(move || {
        message
            .prepare(spool.as_deref())
            .and_then(|p| spool_prepared(&p))
    })
}

/// {@link submit} on the calling thread: returns the queue id once the message is durable, or
/// throws the same errors. Blocks the event loop for the fsyncs (about a millisecond on SSD).
#[napi]
pub fn submit_sync(
    env: Env,
    message: Message,
    options: Option<SubmitOptions>,
) -> napi::Result<String> {
    let spool = options.and_then(|o| o.spool);
    message
        .prepare(spool.as_deref())
        .and_then(|p| spool_prepared(&p))
        .map_err(|e| to_js(&env, &e))
}

/// Sets the process-wide default spool(s): one directory, a list, or a path list in
/// `QMAIL_SPOOL` syntax (`'/var/spool/qmail:/mnt/nfs/qmail'`). Messages are spread over several
/// spools round-robin, skipping one that fails. Until this is called, `QMAIL_SPOOL` is read at
/// the first submit. Shared by all worker threads of the process.
///
/// Throws `QMAIL_NO_SPOOL_CONFIGURED` for an empty list, `QMAIL_INVALID_ARGUMENT` for a list
/// element that contains the path-list separator.
#[napi]
pub fn set_default_spool(env: Env, spool: Either<String, Vec<String>>) -> napi::Result<()> {
    let list = match spool {
        Either::A(list) => Ok(list),
        Either::B(paths) => std::env::join_paths(paths.iter().map(Path::new))
            .map(|l| l.to_string_lossy().into_owned())
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, e.to_string()).with_field("spool")),
    };
    list.and_then(|l| qmail_core::set_default_spool(&l))
        .map_err(|e| to_js(&env, &e))
}
