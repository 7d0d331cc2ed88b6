//! qmail's own SMTP client (RFC 5321), blocking, over std TCP and rustls.
//!
//! - [`reply`]: reply framing (multi-line, code-only lines, enhanced status codes kept apart,
//!   bounds; garbage is a protocol error quoting the bytes).
//! - [`command`]: the commands on the wire (no CR/LF from input, ever).
//! - [`session`]: connect, greeting, EHLO, STARTTLS, AUTH; a deadline per reply (RFC 5321
//!   §4.5.3.2); liveness of a reused connection; QUIT.
//! - [`tls`]: rustls, verified against the system trust store plus a per-relay `ca_file`.
//! - [`auth`]: PLAIN, LOGIN, XOAUTH2 (token read from `token_file` at each AUTH).
//! - [`transaction`]: MAIL/RCPT/DATA with PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME
//!   (RFC 6152), SMTPUTF8 (RFC 6531); one outcome per recipient.
//! - [`data`]: dot-stuffing across chunk boundaries and the terminator.
//!
//! The envelope commands are written verbatim from the (re-checked) spool envelope, so an
//! address such as `-X/tmp/x@example.com` is sent as is, and nothing ever reaches a shell.

pub mod auth;
pub mod command;
pub mod data;
pub mod reply;
pub mod session;
pub mod tls;
pub mod transaction;

pub use command::Command;
pub use reply::{EnhancedCode, ReplyError, Response};
pub use session::{Capabilities, Phase, RelayEndpoint, Session, SessionError, SmtpError};
pub use transaction::{
    BodyError, CommandOutcome, Extension, NextTx, SMALL_BODY, Transaction, TxError,
};
