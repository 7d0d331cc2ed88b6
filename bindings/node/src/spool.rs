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
use qmail_core::{Error, ErrorKind, SpoolOptions, Target};

use crate::error::to_js;
use crate::message::{Message, Prepared};

/// Options of a submit call.
#[napi(object)]
pub struct SubmitOptions {
    /// The spool directory for this message (created with its state directories when
    /// missing), instead of the default spool(s). An absolute path without surrounding spaces.
    pub spool: Option<String>,
    /// The mode of the spool file written into `spool` (e.g. `0o640`); default the core's
    /// (the two-user layout's, docs/spool-format.md). Needs `spool` (the default spools take
    /// theirs from {@link setDefaultSpool}).
    pub file_mode: Option<u32>,
}

/// The core's spool options for a `fileMode` (the other fields at their defaults).
pub(crate) fn spool_options(
    spool: Option<&str>,
    file_mode: Option<u32>,
) -> qmail_core::Result<Option<SpoolOptions>> {
    match (spool, file_mode) {
        (_, None) => Ok(None),
        (None, Some(_)) => Err(Error::new(
            ErrorKind::InvalidArgument,
            "fileMode applies to the spool given with it; the default spools take theirs from \
             setDefaultSpool",
        )
        .with_field("file_mode")),
        (Some(_), Some(m)) => Ok(Some(SpoolOptions {
            file_mode: m,
            ..SpoolOptions::default()
        })),
    }
}

/// Spools a prepared message where the core's routing rule sends it; returns the queue id.
pub(crate) fn spool_prepared(p: &Prepared) -> qmail_core::Result<String> {
    let id = match p {
        Prepared::Built(m, spool, options) => {
            qmail_core::route(spool.as_deref(), *options)?.submit(m)?
        }
        Prepared::Raw(raw, spool, options) => {
            qmail_core::route(spool.as_deref(), *options)?.submit_raw(raw)?
        }
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
    let (spool, file_mode) = options.map_or((None, None), |o| (o.spool, o.file_mode));
    SpoolTask::new(move || {
        let options = spool_options(spool.as_deref(), file_mode)?;
        message
            .prepare(spool.as_deref(), options)
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
    let (spool, file_mode) = options.map_or((None, None), |o| (o.spool, o.file_mode));
    spool_options(spool.as_deref(), file_mode)
        .and_then(|options| message.prepare(spool.as_deref(), options))
        .and_then(|p| spool_prepared(&p))
        .map_err(|e| to_js(&env, &e))
}

/// Options of {@link setDefaultSpool}.
#[napi(object)]
pub struct DefaultSpoolOptions {
    /// fsync on submit (default true).
    pub durable: Option<bool>,
    /// The mode of spool files (default: the core's).
    pub file_mode: Option<u32>,
}

/// The spool directories a submit with this `spool` would write to (the core's routing: the
/// given one, else the default spool(s), else `QMAIL_SPOOL`). Used by the nodemailer
/// transport's `verify()`.
///
/// Throws `QMAIL_NO_SPOOL_CONFIGURED`, `QMAIL_INVALID_ARGUMENT` (a relative or space-padded
/// path), `QMAIL_SPOOL_UNAVAILABLE` (a named spool that cannot be created).
#[napi]
pub fn spool_directories(env: Env, spool: Option<String>) -> napi::Result<Vec<String>> {
    let target =
        qmail_core::route(spool.as_deref().map(Path::new), None).map_err(|e| to_js(&env, &e))?;
    Ok(match target {
        Target::Spool(s) => vec![s.path().display().to_string()],
        Target::Pool(i) => i.spools().iter().map(|p| p.display().to_string()).collect(),
    })
}

/// Sets the process-wide default spool(s): one directory, a list, or a path list in
/// `QMAIL_SPOOL` syntax (`'/var/spool/qmail:/mnt/nfs/qmail'`). Messages are spread over several
/// spools round-robin, skipping one that fails. Until this is called, `QMAIL_SPOOL` is read at
/// the first submit. Shared by all worker threads of the process.
///
/// Throws `QMAIL_NO_SPOOL_CONFIGURED` for an empty list, `QMAIL_INVALID_ARGUMENT` for a list
/// element that contains the path-list separator.
#[napi]
pub fn set_default_spool(
    env: Env,
    spool: Either<String, Vec<String>>,
    options: Option<DefaultSpoolOptions>,
) -> napi::Result<()> {
    let defaults = SpoolOptions::default();
    let spool_options = SpoolOptions {
        durable: options
            .as_ref()
            .and_then(|o| o.durable)
            .unwrap_or(defaults.durable),
        file_mode: options
            .as_ref()
            .and_then(|o| o.file_mode)
            .unwrap_or(defaults.file_mode),
    };
    let list = match spool {
        Either::A(list) => Ok(list),
        Either::B(paths) => std::env::join_paths(paths.iter().map(Path::new))
            .map(|l| l.to_string_lossy().into_owned())
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, e.to_string()).with_field("spool")),
    };
    list.and_then(|l| qmail_core::set_default_spool_with(&l, spool_options))
        .map_err(|e| to_js(&env, &e))
}
