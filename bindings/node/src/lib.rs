/*!
The `qmail` npm package: Node initiators submit mail into a qmail spool.

# Brief overview
- [`spool::submit`] / [`spool::submit_sync`]: build a message from nodemailer-style options
  ([`message::Message`]) and write it durably into a spool; `submit` does the work on the libuv
  thread pool and returns a Promise of the queue id.
- [`raw::submit_raw`] / [`raw::submit_raw_sync`]: spool a message composed elsewhere (nodemailer's
  own composer, see the `transport()` in `qmail.js`).
- [`spool::set_default_spool`]: where submits go when they name no spool (else `QMAIL_SPOOL`).
- [`status::status`]: where a submitted message is (queued, deferred with the last reply, ...).
- [`error::error_codes`]: every `err.code` a call can fail with.

Every rule (address syntax, header checks, MIME, durability) lives in `qmail-core`; this crate
converts JS values into core calls and core errors into JS `Error`s, and nothing else.

# Diagnostics
A failed call throws (sync) or rejects (Promise) with an `Error` whose `code` is
`QMAIL_<KIND>` (one per `qmail_core::ErrorKind`, e.g. `QMAIL_INVALID_ADDRESS`), `kind` the core
name (`InvalidAddress`), `field` the option at fault (`replyTo`, `headers.X-Trace`,
`attachments[2]`, `envelope.to`) or `null`, and `transient` true when a later try may succeed.
*/
#![deny(missing_docs)]
// deny, not forbid: the code napi-derive generates says allow(unsafe_code); ours has none
#![deny(unsafe_code)]

pub mod error;
pub mod message;
pub mod raw;
pub mod spool;
pub mod status;
