//! One SMTP session with a relay, driven command by command through lettre's
//! [`SmtpConnection`] so each recipient gets its own outcome.
//!
//! - Connect (implicit TLS for `smtps`), EHLO, STARTTLS when required or offered (EHLO again
//!   after it: lettre does), then AUTH PLAIN or LOGIN, using only the post-TLS capabilities.
//!   With `tls = required` (the default when credentials are set) a server without STARTTLS,
//!   a 454, or a certificate that does not verify ends the session before AUTH or MAIL.
//! - A transaction: RSET when the connection was used before, MAIL FROM, one RCPT per
//!   recipient (each accepted, deferred on 4xx or failed on 5xx), DATA, the body streamed from
//!   the spool file with dot-stuffing done exactly once, end-of-data. When the server offers
//!   PIPELINING (RFC 2920), RSET, MAIL and the RCPTs go in one write and their replies are
//!   read in order (lettre's `read_response`); DATA waits for them.
//! - The envelope commands are written verbatim from the (re-checked) spool envelope, so an
//!   address such as `-X/tmp/x@example.com` is sent as is, and nothing ever reaches a shell.

use std::fmt;
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, SmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension};
use lettre::transport::smtp::{Error as SmtpError, response::Response};

use super::config::{RelayConfig, TimeoutConfig, TlsMode};
use super::content::ContentScanner;
use super::state::{RcptResult, RcptStatus, Reply};

/// `MAIL FROM:<addr> [params]` written verbatim (the address was checked by
/// `Envelope::check_wire_safe`).
struct MailFrom<'a> {
    from: &'a str,
    params: &'a [&'a str],
}

impl fmt::Display for MailFrom<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MAIL FROM:<{}>", self.from)?;
        for p in self.params {
            write!(f, " {p}")?;
        }
        f.write_str("\r\n")
    }
}

/// `RCPT TO:<addr>`.
struct RcptTo<'a>(&'a str);

impl fmt::Display for RcptTo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RCPT TO:<{}>\r\n", self.0)
    }
}

/// A failure of the session (not of one recipient).
#[derive(Debug, Clone)]
pub struct SessionError {
    /// The reply or local error.
    pub reply: Reply,
    /// A TLS or AUTH problem, or the relay refused us: put the relay in cooldown.
    pub relay_fault: bool,
}

/// The reply carried by a lettre error: its code and text when the server replied.
pub fn reply_of(e: &SmtpError) -> Reply {
    let text = e.to_string();
    match e.status() {
        Some(code) => {
            let code: u16 = code.to_string().parse().unwrap_or(0);
            // lettre's Display is "permanent error (550): text"
            let t = text
                .split_once("): ")
                .map(|(_, t)| t.to_owned())
                .unwrap_or(text);
            Reply::smtp(code, t)
        }
        None => Reply::local(text),
    }
}

fn reply_ok(r: &Response) -> Reply {
    let code: u16 = r.code().to_string().parse().unwrap_or(0);
    Reply::smtp(code, r.message().collect::<Vec<_>>().join(" "))
}

/// What a relay needs at connect time, prepared once.
pub struct RelayEndpoint {
    /// The configuration.
    pub cfg: RelayConfig,
    tls: Option<TlsParameters>,
    credentials: Option<Credentials>,
}

impl fmt::Debug for RelayEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayEndpoint")
            .field("name", &self.cfg.name)
            .field("tls", &self.cfg.tls)
            .finish()
    }
}

impl RelayEndpoint {
    /// Prepares TLS parameters (certificate and host-name verification on unless the
    /// configuration sets `dangerous_accept_invalid_certs`).
    ///
    /// # Errors
    /// A bad `ca_file` or TLS set-up.
    pub fn new(cfg: RelayConfig) -> Result<RelayEndpoint, String> {
        let tls = if cfg.tls_mode() == TlsMode::None {
            None
        } else {
            let mut b = TlsParameters::builder(cfg.host.clone());
            if let Some(ca) = &cfg.ca_file {
                let pem = std::fs::read(ca).map_err(|e| {
                    format!(
                        "relay {}: cannot read ca_file {}: {e}",
                        cfg.name,
                        ca.display()
                    )
                })?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| format!("relay {}: ca_file {}: {e}", cfg.name, ca.display()))?;
                b = b.add_root_certificate(cert);
            }
            if cfg.dangerous_accept_invalid_certs {
                b = b
                    .dangerous_accept_invalid_certs(true)
                    .dangerous_accept_invalid_hostnames(true);
            }
            Some(
                b.build_rustls()
                    .map_err(|e| format!("relay {}: TLS set-up: {e}", cfg.name))?,
            )
        };
        let credentials = cfg
            .username
            .as_ref()
            .map(|u| Credentials::new(u.clone(), cfg.password.clone().unwrap_or_default()));
        Ok(RelayEndpoint {
            cfg,
            tls,
            credentials,
        })
    }
}

/// An open, greeted (and, as configured, encrypted and authenticated) session.
pub struct Session {
    conn: SmtpConnection,
    /// The server offers PIPELINING (RFC 2920): MAIL and RCPT go in one write.
    pub pipelining: bool,
    /// Transactions started on it.
    pub transactions: u32,
    needs_reset: bool,
}

fn session_err(e: &SmtpError, relay_fault: bool) -> SessionError {
    SessionError {
        reply: reply_of(e),
        relay_fault,
    }
}

impl Session {
    /// Connects, greets, secures and authenticates.
    ///
    /// # Errors
    /// A [`SessionError`]; `relay_fault` for refused connections, 4xx/5xx greetings, TLS and
    /// AUTH failures.
    pub fn open(
        relay: &RelayEndpoint,
        ehlo: &str,
        timeouts: &TimeoutConfig,
    ) -> Result<Session, SessionError> {
        let hello = ClientId::Domain(ehlo.to_owned());
        let mode = relay.cfg.tls_mode();
        let implicit = if mode == TlsMode::Implicit {
            relay.tls.as_ref()
        } else {
            None
        };
        let addr = (relay.cfg.host.as_str(), relay.cfg.port);
        let mut conn =
            SmtpConnection::connect(addr, Some(timeouts.connect()), &hello, implicit, None)
                .map_err(|e| session_err(&e, true))?;
        let fail = |conn: &mut SmtpConnection, text: String| {
            let _ = conn.quit();
            Err(SessionError {
                reply: Reply::local(text),
                relay_fault: true,
            })
        };
        if let Err(e) = conn.set_timeout(Some(timeouts.command())) {
            return fail(&mut conn, format!("cannot set the timeout: {e}"));
        }
        match mode {
            TlsMode::Required | TlsMode::Opportunistic => {
                if conn.can_starttls() {
                    let Some(tls) = relay.tls.as_ref() else {
                        return fail(&mut conn, "no TLS parameters".into());
                    };
                    // lettre sends EHLO again after the handshake and keeps only the new
                    // capabilities (RFC 3207 §4.2)
                    conn.starttls(tls, &hello).map_err(|e| {
                        let mut r = reply_of(&e);
                        r.text = format!("STARTTLS failed: {}", r.text);
                        SessionError {
                            reply: r,
                            relay_fault: true,
                        }
                    })?;
                } else if mode == TlsMode::Required {
                    return fail(
                        &mut conn,
                        "TLS is required but the server does not offer STARTTLS".into(),
                    );
                }
            }
            TlsMode::None | TlsMode::Implicit => {}
        }
        // lettre keeps only the EHLO keywords it knows, and PIPELINING is not one: ask again
        // (before AUTH, after TLS, so these are the capabilities that count)
        let pipelining = match conn.command(Ehlo::new(hello.clone())) {
            Ok(r) => r.message().any(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|k| k.eq_ignore_ascii_case("PIPELINING"))
            }),
            Err(e) => return Err(session_err(&e, true)),
        };
        if let Some(creds) = &relay.credentials {
            if !conn.is_encrypted() && mode != TlsMode::None {
                return fail(
                    &mut conn,
                    "refusing AUTH over a cleartext connection (set tls = \"none\" to allow it)"
                        .into(),
                );
            }
            conn.auth(&[Mechanism::Plain, Mechanism::Login], creds)
                .map_err(|e| {
                    let mut r = reply_of(&e);
                    r.text = format!("AUTH failed: {}", r.text);
                    SessionError {
                        reply: r,
                        relay_fault: true,
                    }
                })?;
        }
        Ok(Session {
            conn,
            pipelining,
            transactions: 0,
            needs_reset: false,
        })
    }

    /// True when the server offers an ESMTP extension.
    pub fn supports(&self, ext: Extension) -> bool {
        self.conn.server_info().supports_feature(ext)
    }

    /// True when the session is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.conn.is_encrypted()
    }

    /// Sends QUIT and closes.
    pub fn quit(mut self) {
        let _ = self.conn.quit();
    }

    /// Closes without QUIT (after an error).
    pub fn abort(mut self) {
        self.conn.abort();
    }
}

/// The parts of a message a transaction needs.
pub struct Transaction<'a> {
    /// MAIL FROM address (empty = `<>`).
    pub mail_from: &'a str,
    /// The recipients to do in this attempt.
    pub rcpts: &'a [String],
    /// Needs SMTPUTF8.
    pub smtputf8: bool,
    /// Needs 8BITMIME.
    pub eight_bit: bool,
    /// Length of the message in bytes.
    pub body_len: u64,
    /// The message ends with CRLF.
    pub ends_with_crlf: bool,
    /// Bytes sent inside DATA before the spooled message (the `DKIM-Signature` fields,
    /// CRLF-terminated), dot-stuffed like the rest; empty = nothing (contract C1).
    pub prefix: &'a [u8],
}

/// How a transaction ended, when not with a result per recipient.
#[derive(Debug)]
pub enum TxError {
    /// The connection died (network error, timeout or 421) before end-of-data was sent:
    /// nothing was delivered, the transaction may be retried on a new connection.
    DiedBefore(Reply),
    /// The connection died after the body was sent and before the reply to end-of-data: the
    /// message may or may not have been delivered (the duplicate window). The results mark
    /// the accepted recipients deferred.
    DiedAfterData(Vec<RcptResult>),
    /// The body could not be read or changed under us: the transaction was aborted (the
    /// connection closed without end-of-data, so nothing was delivered).
    Body(Result<String, String>),
}

/// Messages up to this size are sent in one write (see `Session::stream_body`).
pub const SMALL_BODY: u64 = 64 * 1024;

/// Pre-stuffed DATA content with its terminator, written by lettre's `command` in one write.
struct DataBlock<'a>(&'a str);

impl fmt::Display for DataBlock<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Dot-stuffing (RFC 5321 §4.5.2) of CRLF-clean text: a line that starts with `.` gets one
/// more. The same rule as lettre's codec, for the one-write path.
pub fn dot_stuff(text: &str, out: &mut String) {
    let mut line_start = true;
    let mut prev_cr = false;
    for c in text.chars() {
        if line_start && c == '.' {
            out.push('.');
        }
        out.push(c);
        line_start = prev_cr && c == '\n';
        prev_cr = c == '\r';
    }
}

/// Why the body iterator stopped the DATA phase.
struct BodyAbort(Result<String, String>);

fn is_dead(e: &SmtpError) -> bool {
    e.status().is_none_or(|c| c.to_string() == "421")
}

impl Session {
    /// Runs one transaction. On `Ok`, one result per recipient of `tx.rcpts`, in order. On
    /// `Err`, the session must be dropped (aborted).
    ///
    /// # Errors
    /// [`TxError`].
    pub fn send(
        &mut self,
        tx: &Transaction<'_>,
        body: impl Read,
        timeouts: &TimeoutConfig,
    ) -> Result<Vec<RcptResult>, TxError> {
        let all = |status: RcptStatus, reply: &Reply| -> Vec<RcptResult> {
            tx.rcpts
                .iter()
                .map(|r| RcptResult {
                    rcpt: r.clone(),
                    status,
                    reply: reply.clone(),
                })
                .collect()
        };
        let mut params: Vec<&str> = Vec::new();
        let non_ascii = !tx.mail_from.is_ascii() || tx.rcpts.iter().any(|r| !r.is_ascii());
        if tx.smtputf8 || non_ascii {
            if !self.supports(Extension::SmtpUtfEight) {
                return Ok(all(
                    RcptStatus::Failed,
                    &Reply::local(
                        "the message needs SMTPUTF8 and the relay does not offer it (RFC 6531)",
                    ),
                ));
            }
            params.push("SMTPUTF8");
        }
        if tx.eight_bit {
            if !self.supports(Extension::EightBitMime) {
                return Ok(all(
                    RcptStatus::Failed,
                    &Reply::local(
                        "the message has 8-bit content and the relay does not offer 8BITMIME (RFC 6152)",
                    ),
                ));
            }
            params.push("BODY=8BITMIME");
        }
        let reset = self.transactions > 0 || self.needs_reset;
        self.transactions += 1;
        self.needs_reset = true;
        let mail = MailFrom {
            from: tx.mail_from,
            params: &params,
        }
        .to_string();
        // replies to [RSET], MAIL, RCPT...: all commands in one write when the server offers
        // PIPELINING (RFC 2920), else one by one (no RCPT after a refused MAIL)
        let expected = usize::from(reset) + 1 + tx.rcpts.len();
        let mut replies: Vec<Result<Response, SmtpError>> = Vec::with_capacity(expected);
        if self.pipelining {
            let mut batch = String::with_capacity(64 * expected);
            if reset {
                batch.push_str("RSET\r\n");
            }
            batch.push_str(&mail);
            for r in tx.rcpts {
                batch.push_str(&RcptTo(r).to_string());
            }
            replies.push(self.conn.command(DataBlock(&batch)));
            while replies.len() < expected
                && !replies
                    .last()
                    .is_some_and(|r| r.as_ref().is_err_and(|e| e.status().is_none()))
            {
                replies.push(self.conn.read_response());
            }
        } else {
            if reset {
                replies.push(self.conn.command(Rset));
            }
            if replies.iter().all(Result::is_ok) {
                replies.push(self.conn.command(DataBlock(&mail)));
                if replies.last().is_some_and(Result::is_ok) {
                    for r in tx.rcpts {
                        let rep = self.conn.command(RcptTo(r));
                        let dead = rep.as_ref().is_err_and(is_dead);
                        replies.push(rep);
                        if dead {
                            break;
                        }
                    }
                }
            }
        }
        let mut it = replies.into_iter();
        if reset {
            match it.next() {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(TxError::DiedBefore(reply_of(&e))),
                None => return Err(TxError::DiedBefore(Reply::local("no reply to RSET"))),
            }
        }
        let mail_failed = match it.next() {
            Some(Ok(_)) => None,
            Some(Err(e)) if is_dead(&e) => return Err(TxError::DiedBefore(reply_of(&e))),
            Some(Err(e)) => Some((
                if e.is_permanent() {
                    RcptStatus::Failed
                } else {
                    RcptStatus::Deferred
                },
                reply_of(&e),
            )),
            None => return Err(TxError::DiedBefore(Reply::local("no reply to MAIL"))),
        };
        let rcpt_replies: Vec<Result<Response, SmtpError>> = it.collect();
        if let Some(Err(e)) = rcpt_replies
            .iter()
            .find(|r| r.as_ref().is_err_and(|e| e.status().is_none()))
        {
            return Err(TxError::DiedBefore(reply_of(e)));
        }
        if let Some((st, r)) = mail_failed {
            // pipelined RCPTs after a refused MAIL were answered (503) and are ignored
            return Ok(all(st, &r));
        }
        let mut results: Vec<RcptResult> = Vec::with_capacity(tx.rcpts.len());
        for (i, rcpt) in tx.rcpts.iter().enumerate() {
            match rcpt_replies.get(i) {
                Some(Ok(resp)) => results.push(RcptResult {
                    rcpt: rcpt.clone(),
                    status: RcptStatus::Delivered,
                    reply: reply_ok(resp),
                }),
                Some(Err(e)) if is_dead(e) => return Err(TxError::DiedBefore(reply_of(e))),
                Some(Err(e)) => {
                    let st = if e.is_permanent() {
                        RcptStatus::Failed
                    } else {
                        RcptStatus::Deferred
                    };
                    results.push(RcptResult {
                        rcpt: rcpt.clone(),
                        status: st,
                        reply: reply_of(e),
                    });
                }
                None => return Err(TxError::DiedBefore(Reply::local("no reply to RCPT"))),
            }
        }
        // "Delivered" so far means "RCPT accepted"; it becomes final only with 250 to end-of-data
        if !results.iter().any(|r| r.status == RcptStatus::Delivered) {
            return Ok(results);
        }
        let set_accepted = |results: &mut Vec<RcptResult>, st: RcptStatus, reply: &Reply| {
            for r in results
                .iter_mut()
                .filter(|r| r.status == RcptStatus::Delivered)
            {
                r.status = st;
                r.reply = reply.clone();
            }
        };
        match self.conn.command(Data) {
            Ok(_) => {}
            Err(e) if is_dead(&e) => return Err(TxError::DiedBefore(reply_of(&e))),
            Err(e) => {
                let st = if e.is_permanent() {
                    RcptStatus::Failed
                } else {
                    RcptStatus::Deferred
                };
                set_accepted(&mut results, st, &reply_of(&e));
                return Ok(results);
            }
        }
        // DATA phase: the reply to end-of-data may take long (RFC 5321 §4.5.3.2.6)
        let _ = self.conn.set_timeout(Some(timeouts.data_end()));
        let sent = self.stream_body(tx, body);
        let _ = self.conn.set_timeout(Some(timeouts.command()));
        match sent {
            Ok(Ok(resp)) => {
                self.needs_reset = false;
                let reply = reply_ok(&resp);
                for r in results
                    .iter_mut()
                    .filter(|r| r.status == RcptStatus::Delivered)
                {
                    r.reply = reply.clone();
                }
                Ok(results)
            }
            Ok(Err(e)) if e.status().is_some() && !is_dead(&e) => {
                let st = if e.is_permanent() {
                    RcptStatus::Failed
                } else {
                    RcptStatus::Deferred
                };
                set_accepted(&mut results, st, &reply_of(&e));
                self.needs_reset = false;
                Ok(results)
            }
            Ok(Err(e)) => {
                let mut r = reply_of(&e);
                r.text = format!(
                    "no reply to end-of-data (the message may have been delivered): {}",
                    r.text
                );
                set_accepted(&mut results, RcptStatus::Deferred, &r);
                Err(TxError::DiedAfterData(results))
            }
            Err(abort) => Err(TxError::Body(abort.0)),
        }
    }

    /// Sends the body and end-of-data; returns the reply to end-of-data.
    ///
    /// - A message of at most [`SMALL_BODY`] bytes is read, re-checked, dot-stuffed
    ///   ([`dot_stuff`]) and written together with the terminator in one write. One write
    ///   matters: a second small write right after the first waits for the server's delayed
    ///   ACK under Nagle's algorithm (lettre sets no `TCP_NODELAY`), ~40 ms per message.
    /// - A larger one streams through lettre's `message_iter` in 64 KiB chunks (its codec does
    ///   the dot-stuffing, keeping its state across chunks), so memory does not grow with the
    ///   message. lettre always ends with `CRLF.CRLF`, so a message that ends with CRLF is fed
    ///   without that final CRLF: the wire then carries exactly the message followed by `.CRLF`.
    ///
    /// The iterator cannot return an error, and lettre would then send end-of-data and
    /// deliver a truncated message. So a read error, or content that fails the re-check, ends
    /// the DATA phase by unwinding out of `message_iter` (`resume_unwind`, which runs no panic
    /// hook) before the terminator is written; the caller then drops the connection, and the
    /// server discards the transaction.
    fn stream_body(
        &mut self,
        tx: &Transaction<'_>,
        body: impl Read,
    ) -> Result<Result<Response, SmtpError>, BodyAbort> {
        let mut reader = body;
        if tx.body_len <= SMALL_BODY {
            let mut buf = Vec::with_capacity(tx.body_len as usize);
            let read = (&mut reader).take(tx.body_len).read_to_end(&mut buf);
            match read {
                Err(e) => return Err(BodyAbort(Err(format!("cannot read the spool file: {e}")))),
                Ok(n) if (n as u64) < tx.body_len => {
                    return Err(BodyAbort(Err(format!(
                        "the spool file ended at byte {n} of {}",
                        tx.body_len
                    ))));
                }
                Ok(_) => {}
            }
            let mut scanner = ContentScanner::new();
            scanner.feed(&buf).map_err(|r| BodyAbort(Ok(r)))?;
            let summary = scanner.finish().map_err(|r| BodyAbort(Ok(r)))?;
            if let (Ok(text), Ok(prefix)) =
                (std::str::from_utf8(&buf), std::str::from_utf8(tx.prefix))
            {
                let mut wire = String::with_capacity(prefix.len() + buf.len() + buf.len() / 32 + 8);
                dot_stuff(prefix, &mut wire);
                dot_stuff(text, &mut wire);
                wire.push_str(if summary.ends_with_crlf || buf.is_empty() {
                    ".\r\n"
                } else {
                    "\r\n.\r\n"
                });
                if buf.is_empty() && prefix.is_empty() {
                    wire.insert_str(0, "\r\n");
                }
                return Ok(self.conn.command(DataBlock(&wire)));
            }
            let limit = if summary.ends_with_crlf {
                buf.len() - 2
            } else {
                buf.len()
            };
            buf.truncate(limit);
            let mut all = Vec::with_capacity(tx.prefix.len() + buf.len());
            all.extend_from_slice(tx.prefix);
            all.extend_from_slice(&buf);
            return Ok(self.conn.message_iter(std::iter::once(all)));
        }
        let limit = if tx.ends_with_crlf {
            tx.body_len - 2
        } else {
            tx.body_len
        };
        let mut scanner = ContentScanner::new();
        // the prefix goes in the first chunk (lettre's codec stuffs it like the rest)
        let mut prefix = Some(tx.prefix.to_vec());
        let mut sent: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        let total = tx.body_len;
        let iter = std::iter::from_fn(move || {
            if sent >= total {
                return None;
            }
            let want = ((total - sent) as usize).min(buf.len());
            let n = loop {
                match reader.read(&mut buf[..want]) {
                    Ok(0) => resume_unwind(Box::new(BodyAbort(Err(format!(
                        "the spool file ended at byte {sent} of {total}"
                    ))))),
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => resume_unwind(Box::new(BodyAbort(Err(format!(
                        "cannot read the spool file: {e}"
                    ))))),
                }
            };
            let chunk = &buf[..n];
            if let Err(reason) = scanner.feed(chunk) {
                resume_unwind(Box::new(BodyAbort(Ok(reason))));
            }
            let start = sent;
            sent += n as u64;
            if sent >= total
                && let Err(reason) = scanner.finish()
            {
                resume_unwind(Box::new(BodyAbort(Ok(reason))));
            }
            // hold back the final CRLF (it is part of lettre's terminator)
            let end = if sent > limit {
                (limit.saturating_sub(start)) as usize
            } else {
                n
            };
            let mut out = prefix.take().unwrap_or_default();
            out.extend_from_slice(&chunk[..end]);
            Some(out)
        });
        let conn = &mut self.conn;
        match catch_unwind(AssertUnwindSafe(move || conn.message_iter(iter))) {
            Ok(r) => Ok(r),
            Err(payload) => match payload.downcast::<BodyAbort>() {
                Ok(abort) => Err(*abort),
                Err(other) => resume_unwind(other),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dot_stuff;

    #[test]
    fn stuffing() {
        let cases = [
            (".", ".."),
            (".\r\n", "..\r\n"),
            ("a\r\n.\r\n", "a\r\n..\r\n"),
            ("a\r\n..b\r\n...\r\n", "a\r\n...b\r\n....\r\n"),
            ("a.b\r\n .\r\n", "a.b\r\n .\r\n"),
            ("\r\n.\r\n\r\n.", "\r\n..\r\n\r\n.."),
        ];
        for (i, o) in cases {
            let mut s = String::new();
            dot_stuff(i, &mut s);
            assert_eq!(s, o, "{i:?}");
        }
    }
}
