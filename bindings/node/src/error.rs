//! Core errors as JS `Error` objects with a stable `code`.
//!
//! `qmail_core::ErrorKind` is the one taxonomy; its stable name (`InvalidAddress`) becomes the
//! JS code `QMAIL_INVALID_ADDRESS` by one rule (upper snake case, `QMAIL_` prefix), so a kind
//! added to the core gets its code here without an edit. Field names are the JS option names
//! (`replyTo`, `notBefore`, `envelope.from`, `envelope.to`), not the core's snake_case ones.

use napi::JsValue;
use napi::bindgen_prelude::{Env, Null, Object, Status};
use napi_derive::napi;
use qmail_core::{Error, ErrorKind};

/// One entry of {@link errorCodes}.
#[napi(object)]
pub struct ErrorCode {
    /// The JS error code, e.g. `QMAIL_INVALID_ADDRESS`.
    pub code: String,
    /// The core's stable kind name, e.g. `InvalidAddress` (the same string in every binding).
    pub kind: String,
    /// True for failures a later try (or another spool) may not have: spool and I/O errors.
    pub transient: bool,
}

/// Every error code a qmail call can fail with, one per core error kind, in a fixed order.
#[napi]
pub fn error_codes() -> Vec<ErrorCode> {
    ErrorKind::ALL
        .iter()
        .map(|&k| ErrorCode {
            code: code(k),
            kind: k.as_str().to_owned(),
            transient: k.is_transient(),
        })
        .collect()
}

/// `InvalidAddress` → `QMAIL_INVALID_ADDRESS`.
pub(crate) fn code(kind: ErrorKind) -> String {
    let mut out = String::from("QMAIL");
    for c in kind.as_str().chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The JS name of a core field: the option the caller wrote.
pub(crate) fn js_field(core: &str) -> &str {
    match core {
        "reply_to" => "replyTo",
        "not_before" => "notBefore",
        "envelope_from" => "envelope.from",
        "recipients" => "envelope.to",
        "envelope_to" => "envelope.to",
        "list_unsubscribe.url" => "listUnsubscribe.url",
        "list_unsubscribe.mailto" => "listUnsubscribe.mailto",
        "read_receipt_to" => "readReceiptTo",
        "file_mode" => "fileMode",
        other => other,
    }
}

/// Converts a core error into a JS `Error` carrying `code`, `kind`, `field` and `transient`.
/// Must run on the JS thread (it creates the object); the result is thrown or rejected as is.
pub(crate) fn to_js(env: &Env, e: &Error) -> napi::Error {
    let field = e.field().map(js_field);
    let message = match field {
        Some(f) => format!("{f}: {}", e.message()),
        None => e.message().to_owned(),
    };
    let made = (|| -> napi::Result<napi::Error> {
        let mut obj: Object =
            env.create_error(napi::Error::new(Status::GenericFailure, message.clone()))?;
        obj.set("code", code(e.kind()))?;
        obj.set("kind", e.kind().as_str())?;
        match field {
            Some(f) => obj.set("field", f)?,
            None => obj.set("field", Null)?,
        }
        obj.set("transient", e.is_transient())?;
        Ok(napi::Error::from(obj.to_unknown()))
    })();
    // creating the object only fails when the VM is out of memory or terminating
    made.unwrap_or_else(|_| napi::Error::new(Status::GenericFailure, message))
}
