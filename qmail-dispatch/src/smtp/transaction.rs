//! One mail transaction (RFC 5321 §3.3): MAIL FROM, RCPT TO per recipient, DATA, the
//! message, end-of-data; with PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152)
//! and SMTPUTF8 (RFC 6531).
//!
//! - With PIPELINING, `[RSET] MAIL RCPT… DATA` go in one write and the replies are matched
//!   in order (RFC 2920 §3.1); a relay that refused every recipient but answered 354 to DATA
//!   gets a lone `.` (RFC 2920 §3.1) and nothing is delivered.
//! - On a reused connection RSET goes first only when the previous transaction was abandoned
//!   before its end-of-data reply (a refused MAIL, every RCPT refused, a refused DATA): the
//!   reply to end-of-data, whatever its code, already resets the relay's state (RFC 5321
//!   §4.1.1.4), so a transaction that ended cleanly is followed directly by MAIL.
//! - Without it, one command per reply; no RCPT after a refused MAIL, no DATA without an
//!   accepted recipient.
//! - `SIZE=` (the prefix plus the spooled message, before dot-stuffing) is declared when the
//!   relay offers SIZE; a message over the relay's limit is not sent to it at all
//!   ([`TxError::TooBig`]), nor an 8-bit one to a relay without 8BITMIME, nor one that needs
//!   SMTPUTF8 to a relay without it ([`TxError::Unsupported`]): the route tries another relay.
//! - Each recipient gets its own outcome; "accepted" becomes delivered only with the 2xx to
//!   end-of-data.

use std::io::Read;

use super::data::{CHUNK, DotStuffer};
use super::session::{Phase, Session, SmtpError};
use super::{Command, Response};
use crate::content::ContentScanner;
use crate::state::{RcptResult, RcptStatus, Reply};

/// Messages up to this size are read whole and sent, stuffed and terminated, in one write.
pub const SMALL_BODY: u64 = 64 * 1024;

/// The parts of a message a transaction needs.
pub struct Transaction<'a> {
    /// MAIL FROM address (empty = `<>`).
    pub mail_from: &'a str,
    /// The recipients to do in this attempt.
    pub rcpts: &'a [String],
    /// Needs SMTPUTF8 (RFC 6531); also implied by a non-ASCII address.
    pub smtputf8: bool,
    /// Has 8-bit content: `BODY=8BITMIME` (RFC 6152).
    pub eight_bit: bool,
    /// Length of the spooled message in bytes.
    pub body_len: u64,
    /// The message ends with CRLF (informational: the terminator is chosen from the bytes
    /// actually sent).
    pub ends_with_crlf: bool,
    /// The fence (contract C1): called right before the end-of-data of every message (the
    /// point of no return: a relay delivers nothing without it, RFC 5321 §4.1.1.4), and,
    /// without PIPELINING, also right before `DATA`. With PIPELINING, `DATA` leaves in the
    /// same write as MAIL and RCPT, so the check after the `354` is the one that stops a
    /// dispatcher that stalled while waiting for the RCPT replies; one check per message
    /// (for a database queue, one round trip). `false` means the claim may have been taken
    /// back: the connection is dropped without the final dot (or `DATA` is not sent),
    /// nothing is delivered, and the send returns [`TxError::Fenced`].
    pub fence: &'a dyn Fn() -> bool,
    /// The body passed to [`Session::send`] is bytes in memory that already passed
    /// [`crate::content::scan`] (a small message read once): they cannot change in between,
    /// so they are not scanned a second time. `false` = the body is re-checked as it is
    /// streamed (a large message read again from the spool).
    pub checked: bool,
    /// Bytes written before the spooled message inside DATA (a CRLF-terminated header field
    /// such as `DKIM-Signature:`), dot-stuffed like the rest, counted in `SIZE=`. Empty =
    /// nothing.
    pub prefix: &'a [u8],
    /// Asked once, right before the end-of-data is written (the fence already said yes), for
    /// the next message to send on this session ([`NextTx`]): its commands then follow the
    /// end-of-data in the same write, when the relay offers PIPELINING and can take it (SIZE,
    /// 8BITMIME, SMTPUTF8). `None`, or a `None` answer: nothing follows. The caller decides
    /// what may be chained (same relay, no rate limit, under `max_messages_per_connection`).
    pub next: Option<&'a dyn Fn() -> Option<NextTx>>,
}

/// The envelope of the next message to send on this session, offered by
/// [`Transaction::next`] while the current message's body is written: its `MAIL`, `RCPT`s
/// and `DATA` go out in the same write as the current end-of-data (RFC 2920 §3.1: the message
/// content may be the first "command" of a pipelined group, `DATA` its last), so each message
/// costs one write and one read instead of two. Its [`Session::send`] must carry exactly this
/// envelope ([`NextTx::matches`]); it then reads the replies without writing the commands
/// again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextTx {
    /// MAIL FROM address (empty = `<>`).
    pub mail_from: String,
    /// The recipients.
    pub rcpts: Vec<String>,
    /// Needs SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// `BODY=8BITMIME` (RFC 6152).
    pub eight_bit: bool,
    /// Length of the message in bytes (no prefix: a message with one is not chained).
    pub body_len: u64,
}

impl NextTx {
    /// True when `tx` is the transaction this envelope announced.
    pub fn matches(&self, tx: &Transaction<'_>) -> bool {
        self.mail_from == tx.mail_from
            && self.rcpts == tx.rcpts
            && self.smtputf8 == tx.smtputf8
            && self.eight_bit == tx.eight_bit
            && self.body_len == tx.body_len
            && tx.prefix.is_empty()
    }

    fn transaction(&self) -> Transaction<'_> {
        Transaction {
            mail_from: &self.mail_from,
            rcpts: &self.rcpts,
            smtputf8: self.smtputf8,
            eight_bit: self.eight_bit,
            body_len: self.body_len,
            ends_with_crlf: true,
            fence: &yes,
            checked: true,
            prefix: b"",
            next: None,
        }
    }
}

/// A required extension the relay does not offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// RFC 6152.
    EightBitMime,
    /// RFC 6531.
    SmtpUtf8,
}

/// Why the body was not sent to the end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The content fails the re-check (bare CR/LF, NUL, long line): never sent.
    #[error("{0}")]
    Refused(String),
    /// The spool file could not be read to its end.
    #[error("{0}")]
    Read(String),
}

/// How a transaction ended, when not with a result per recipient.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// The connection died (network error, timeout, protocol error or 421) before
    /// end-of-data was sent: nothing was delivered, the transaction may be retried on a new
    /// connection.
    #[error("{0}")]
    DiedBefore(SmtpError),
    /// The connection died after the end-of-data was sent and before its reply: the message
    /// may or may not have been delivered (the duplicate window). The results mark the
    /// accepted recipients deferred.
    #[error("no reply to end-of-data")]
    DiedAfterData(Vec<RcptResult>),
    /// The body could not be read, or changed under us: the connection must be dropped
    /// without end-of-data (nothing was delivered).
    #[error("{0}")]
    Body(BodyError),
    /// The fence said the claim may have been taken back: nothing was delivered; drop the
    /// connection.
    #[error("the claim may have been taken back: abandoned before end-of-data")]
    Fenced,
    /// The message is larger than the relay's SIZE limit (RFC 1870 §6): nothing was sent, the
    /// session is still usable.
    #[error("the message is {size} bytes and the relay accepts at most {limit} (SIZE, RFC 1870)")]
    TooBig {
        /// The message's size (prefix included).
        size: u64,
        /// The relay's limit.
        limit: u64,
    },
    /// The message needs an extension the relay does not offer: nothing was sent, the
    /// session is still usable.
    #[error("{}", match .0 {
        Extension::EightBitMime => "the message has 8-bit content and the relay does not offer 8BITMIME (RFC 6152)",
        Extension::SmtpUtf8 => "the message needs SMTPUTF8 and the relay does not offer it (RFC 6531)",
    })]
    Unsupported(Extension),
}

impl TxError {
    /// True when the session can be used for another transaction.
    pub fn session_usable(&self) -> bool {
        matches!(self, TxError::TooBig { .. } | TxError::Unsupported(_))
    }
}

/// The outcome of one command: accepted (2xx, or 354 to DATA), or refused for now (4xx) or
/// for good (5xx).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    /// 2xx (or the 3xx the command expects).
    Accepted(Response),
    /// 4xx (or an unexpected reply): try again later.
    Transient(Response),
    /// 5xx.
    Permanent(Response),
}

impl CommandOutcome {
    fn of(r: Response, expect_intermediate: bool) -> CommandOutcome {
        let ok = if expect_intermediate {
            r.code == 354
        } else {
            r.is_positive()
        };
        if ok {
            CommandOutcome::Accepted(r)
        } else if r.is_permanent() {
            CommandOutcome::Permanent(r)
        } else {
            CommandOutcome::Transient(r)
        }
    }

    /// The recipient status this outcome gives.
    pub fn status(&self) -> RcptStatus {
        match self {
            CommandOutcome::Accepted(_) => RcptStatus::Delivered,
            CommandOutcome::Transient(_) => RcptStatus::Deferred,
            CommandOutcome::Permanent(_) => RcptStatus::Failed,
        }
    }

    /// The reply.
    pub fn response(&self) -> &Response {
        match self {
            CommandOutcome::Accepted(r)
            | CommandOutcome::Transient(r)
            | CommandOutcome::Permanent(r) => r,
        }
    }

    fn accepted(&self) -> bool {
        matches!(self, CommandOutcome::Accepted(_))
    }

    /// 421: the relay is closing the connection (RFC 5321 §3.8).
    fn closing(&self) -> bool {
        self.response().code == 421
    }
}

fn dead_421(phase: Phase, o: &CommandOutcome) -> TxError {
    TxError::DiedBefore(SmtpError::Rejected {
        phase,
        response: o.response().clone(),
    })
}

impl Session {
    /// Runs one transaction. On `Ok`, one result per recipient of `tx.rcpts`, in order. On
    /// `Err`, the session must be dropped (aborted) unless [`TxError::session_usable`].
    ///
    /// # Errors
    /// [`TxError`].
    pub fn send(
        &mut self,
        tx: &Transaction<'_>,
        body: impl Read,
    ) -> Result<Vec<RcptResult>, TxError> {
        // commands written behind the last end-of-data: this must be their transaction
        let preissued = match self.preissued.take() {
            Some(p) if p.matches(tx) => true,
            Some(_) => {
                // the relay is inside DATA for another envelope: abandon the session (no dot,
                // nothing delivered); the caller reconnects
                return Err(TxError::DiedBefore(SmtpError::Closed {
                    phase: Phase::Idle,
                }));
            }
            None => false,
        };
        if let Some(e) = self.unfit(tx) {
            if preissued {
                // cannot happen (checked before it was chained); never send into its DATA
                return Err(TxError::DiedBefore(SmtpError::Closed {
                    phase: Phase::Idle,
                }));
            }
            return Err(e);
        }
        let smtputf8 = tx.smtputf8 || needs_smtputf8(tx);
        let size = tx.body_len + tx.prefix.len() as u64;
        if self.transactions > 0 && !preissued && !self.is_alive() {
            return Err(TxError::DiedBefore(SmtpError::Closed {
                phase: Phase::Idle,
            }));
        }
        // RFC 5321 §4.1.1.4: the end-of-data reply (whatever its code) resets the receiver's
        // state, so RSET only follows a transaction abandoned before it (a refused MAIL, no
        // accepted recipient, a refused DATA)
        let reset = self.needs_reset && !preissued;
        self.transactions += 1;
        self.needs_reset = true;
        let t = self.timeouts.clone();
        let mail = Command::MailFrom {
            from: tx.mail_from,
            size: self.caps.size.map(|_| size),
            eight_bit: tx.eight_bit,
            smtputf8,
        };
        let mut rcpt_out: Vec<CommandOutcome> = Vec::with_capacity(tx.rcpts.len());
        let mail_out;
        let data_out;
        let read = |s: &mut Session, phase, timeout, inter| {
            s.conn
                .read_reply(phase, timeout)
                .map(|r| CommandOutcome::of(r, inter))
                .map_err(TxError::DiedBefore)
        };
        if self.caps.pipelining {
            // no fence here: DATA leaves in this write, and the one check that matters is
            // right before the end-of-data (`send_body`), the point of no return
            if !preissued {
                let mut batch = Vec::with_capacity(64 * (tx.rcpts.len() + 3));
                if reset {
                    Command::Rset.encode(&mut batch).map_err(cmd_err)?;
                }
                encode_group(&mail, tx.rcpts, &mut batch).map_err(cmd_err)?;
                self.conn
                    .write_all(&batch, Phase::Mail, t.command())
                    .map_err(TxError::DiedBefore)?;
            }
            if reset {
                let o = read(self, Phase::Rset, t.command(), false)?;
                if !o.accepted() {
                    return Err(dead_421(Phase::Rset, &o));
                }
            }
            let m = read(self, Phase::Mail, t.mail(), false)?;
            if m.closing() {
                return Err(dead_421(Phase::Mail, &m));
            }
            mail_out = m;
            for _ in tx.rcpts {
                let o = read(self, Phase::Rcpt, t.rcpt(), false)?;
                if o.closing() {
                    return Err(dead_421(Phase::Rcpt, &o));
                }
                rcpt_out.push(o);
            }
            let d = read(self, Phase::Data, t.data(), true)?;
            if d.closing() {
                return Err(dead_421(Phase::Data, &d));
            }
            let wanted = mail_out.accepted() && rcpt_out.iter().any(CommandOutcome::accepted);
            if d.accepted() && !wanted {
                // RFC 2920 §3.1: DATA accepted with no valid recipient: send an empty message
                // terminator; the relay delivers nothing
                self.conn
                    .write_all(b".\r\n", Phase::Body, t.data_block())
                    .map_err(TxError::DiedBefore)?;
                let _ = read(self, Phase::DataEnd, t.data_end(), false)?;
                self.needs_reset = false;
            }
            data_out = Some(d);
        } else {
            if reset {
                let o = self
                    .conn
                    .command(Command::Rset, Phase::Rset, t.command())
                    .map_err(TxError::DiedBefore)?;
                if !o.is_positive() {
                    return Err(TxError::DiedBefore(SmtpError::Rejected {
                        phase: Phase::Rset,
                        response: o,
                    }));
                }
            }
            let m = self.command(mail, Phase::Mail, t.mail(), false)?;
            mail_out = m;
            if mail_out.accepted() {
                for r in tx.rcpts {
                    let o = self.command(Command::RcptTo(r), Phase::Rcpt, t.rcpt(), false)?;
                    rcpt_out.push(o);
                }
            }
            data_out = if rcpt_out.iter().any(CommandOutcome::accepted) {
                if !(tx.fence)() {
                    return Err(TxError::Fenced);
                }
                Some(self.command(Command::Data, Phase::Data, t.data(), true)?)
            } else {
                None
            };
        }
        // per-recipient outcomes so far ("Delivered" = RCPT accepted)
        if !mail_out.accepted() {
            let reply = mail_out.response().to_reply();
            let st = mail_out.status();
            return Ok(tx
                .rcpts
                .iter()
                .map(|r| RcptResult {
                    rcpt: r.clone(),
                    status: st,
                    reply: reply.clone(),
                })
                .collect());
        }
        let mut results: Vec<RcptResult> = tx
            .rcpts
            .iter()
            .zip(&rcpt_out)
            .map(|(r, o)| RcptResult {
                rcpt: r.clone(),
                status: o.status(),
                reply: o.response().to_reply(),
            })
            .collect();
        let set_accepted = |results: &mut Vec<RcptResult>, st: RcptStatus, reply: &Reply| {
            for r in results
                .iter_mut()
                .filter(|r| r.status == RcptStatus::Delivered)
            {
                r.status = st;
                r.reply = reply.clone();
            }
        };
        let Some(data_out) = data_out else {
            return Ok(results);
        };
        if !results.iter().any(|r| r.status == RcptStatus::Delivered) {
            return Ok(results);
        }
        if !data_out.accepted() {
            set_accepted(
                &mut results,
                data_out.status(),
                &data_out.response().to_reply(),
            );
            return Ok(results);
        }
        match self.send_body(tx, body)? {
            Ok(end) => {
                self.needs_reset = false;
                let o = CommandOutcome::of(end, false);
                let reply = o.response().to_reply();
                if o.accepted() {
                    for r in results
                        .iter_mut()
                        .filter(|r| r.status == RcptStatus::Delivered)
                    {
                        r.reply = reply.clone();
                    }
                } else {
                    set_accepted(&mut results, o.status(), &reply);
                }
                Ok(results)
            }
            Err(e) => {
                let r = Reply::local(format!(
                    "no reply to end-of-data (the message may have been delivered): {e}"
                ));
                set_accepted(&mut results, RcptStatus::Deferred, &r);
                Err(TxError::DiedAfterData(results))
            }
        }
    }

    fn command(
        &mut self,
        cmd: Command<'_>,
        phase: Phase,
        timeout: std::time::Duration,
        inter: bool,
    ) -> Result<CommandOutcome, TxError> {
        let o = self
            .conn
            .command(cmd, phase, timeout)
            .map(|r| CommandOutcome::of(r, inter))
            .map_err(TxError::DiedBefore)?;
        if o.closing() {
            return Err(dead_421(phase, &o));
        }
        Ok(o)
    }

    /// Writes the prefix and the message, stuffed, then end-of-data, and reads its reply.
    /// The outer `Err` is a failure before end-of-data was complete on the wire (nothing
    /// delivered); the inner `Err` a failure after (the duplicate window).
    fn send_body(
        &mut self,
        tx: &Transaction<'_>,
        mut body: impl Read,
    ) -> Result<Result<Response, SmtpError>, TxError> {
        let t = self.timeouts.clone();
        let mut stuffer = DotStuffer::new();
        let mut scanner = ContentScanner::new();
        let total = tx.body_len;
        let mut out: Vec<u8> =
            Vec::with_capacity((total.min(SMALL_BODY) as usize + tx.prefix.len()) * 33 / 32 + 8);
        stuffer.stuff(tx.prefix, &mut out);
        let mut buf = vec![0u8; (total.min(CHUNK as u64) as usize).max(1)];
        let mut sent: u64 = 0;
        let large = total > SMALL_BODY;
        while sent < total {
            let want = ((total - sent) as usize).min(buf.len());
            let n = match body.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(TxError::Body(BodyError::Read(format!(
                        "the spool file ended at byte {sent} of {total}"
                    ))));
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(TxError::Body(BodyError::Read(format!(
                        "cannot read the spool file: {e}"
                    ))));
                }
            };
            let chunk = &buf[..n];
            if !tx.checked {
                scanner
                    .feed(chunk)
                    .map_err(|r| TxError::Body(BodyError::Refused(r)))?;
            }
            stuffer.stuff(chunk, &mut out);
            sent += n as u64;
            if large && out.len() >= CHUNK && sent < total {
                self.conn
                    .write_all(&out, Phase::Body, t.data_block())
                    .map_err(TxError::DiedBefore)?;
                out.clear();
            }
        }
        if !tx.checked {
            scanner
                .finish()
                .map_err(|r| TxError::Body(BodyError::Refused(r)))?;
        }
        // the last check before the point of no return (a stat of the claim and the lease's
        // age for the directory queue): for a small body this is also the first write after
        // the 354
        if !(tx.fence)() {
            return Err(TxError::Fenced);
        }
        out.extend_from_slice(stuffer.terminator());
        let next = self.chain(tx, &mut out);
        if let Err(e) = self.conn.write_all(&out, Phase::Body, t.data_block()) {
            return Ok(Err(e));
        }
        self.preissued = next;
        Ok(self.conn.read_reply(Phase::DataEnd, t.data_end()))
    }

    /// Appends the next transaction's `MAIL`, `RCPT`s and `DATA` to `out` (after the
    /// end-of-data) when [`Transaction::next`] offers one this relay can take; returns it.
    fn chain(&self, tx: &Transaction<'_>, out: &mut Vec<u8>) -> Option<NextTx> {
        if !self.caps.pipelining {
            return None;
        }
        let next = (tx.next?)()?;
        let ntx = next.transaction();
        if self.unfit(&ntx).is_some() {
            return None;
        }
        let size = ntx.body_len;
        let mail = Command::MailFrom {
            from: &next.mail_from,
            size: self.caps.size.map(|_| size),
            eight_bit: next.eight_bit,
            smtputf8: next.smtputf8 || needs_smtputf8(&ntx),
        };
        let mark = out.len();
        if encode_group(&mail, &next.rcpts, out).is_err() {
            out.truncate(mark);
            return None;
        }
        Some(next)
    }

    /// Why this relay cannot take `tx` (nothing sent), if it cannot.
    fn unfit(&self, tx: &Transaction<'_>) -> Option<TxError> {
        if (tx.smtputf8 || needs_smtputf8(tx)) && !self.caps.smtputf8 {
            return Some(TxError::Unsupported(Extension::SmtpUtf8));
        }
        if tx.eight_bit && !self.caps.eight_bit_mime {
            return Some(TxError::Unsupported(Extension::EightBitMime));
        }
        let size = tx.body_len + tx.prefix.len() as u64;
        if let Some(limit) = self.caps.size_limit()
            && size > limit
        {
            return Some(TxError::TooBig { size, limit });
        }
        None
    }
}

fn yes() -> bool {
    true
}

/// A non-ASCII address needs SMTPUTF8 (RFC 6531 §3.4).
fn needs_smtputf8(tx: &Transaction<'_>) -> bool {
    !tx.mail_from.is_ascii() || tx.rcpts.iter().any(|r| !r.is_ascii())
}

/// `MAIL`, one `RCPT` per recipient, `DATA`: one pipelined group (RFC 2920 §3.1).
fn encode_group(
    mail: &Command<'_>,
    rcpts: &[String],
    out: &mut Vec<u8>,
) -> Result<(), super::command::CommandError> {
    mail.encode(out)?;
    for r in rcpts {
        Command::RcptTo(r).encode(out)?;
    }
    Command::Data.encode(out)
}

fn cmd_err(e: super::command::CommandError) -> TxError {
    TxError::DiedBefore(SmtpError::Command(e))
}
