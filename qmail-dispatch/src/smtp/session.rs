//! One connection to a relay: connect, greeting, EHLO, STARTTLS, AUTH; replies read with a
//! deadline each; reuse, liveness check and QUIT.
//!
//! # Deadlines
//! Each reply has its own deadline, measured from when the client starts waiting for it
//! (RFC 5321 §4.5.3.2: the timeouts are per command, "the time to wait for a reply"), not per
//! socket read: a relay that trickles one byte every half second still hits the deadline.
//! The defaults are those of §4.5.3.2 (see [`TimeoutConfig`]).
//!
//! # STARTTLS (RFC 3207)
//! After the `220` to STARTTLS the server must say nothing until the handshake. Any byte
//! already received past that reply (buffered here, or waiting in the socket) is the
//! response-injection attack class (CVE-2011-0411): the connection is dropped, the relay put
//! in cooldown, the message deferred. Inside TLS every capability learned before is forgotten
//! and EHLO is sent again (RFC 3207 §4.2); otherwise EHLO is sent once.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::auth::{self, Credentials};
use super::command::{Command, CommandError};
use super::reply::{self, ReplyError, Response};
use super::tls::{Stream, TlsSetup};
use crate::config::{RelayConfig, TimeoutConfig, TlsMode};
use crate::state::Reply;

/// Where in the session something happened (for diagnoses and deadlines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect.
    Connect,
    /// Waiting for the 220 greeting.
    Greeting,
    /// EHLO.
    Ehlo,
    /// STARTTLS and its reply.
    StartTls,
    /// The TLS handshake.
    Handshake,
    /// AUTH.
    Auth,
    /// RSET.
    Rset,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA (up to its 354).
    Data,
    /// Writing the message.
    Body,
    /// Waiting for the reply to end-of-data.
    DataEnd,
    /// QUIT.
    Quit,
    /// Between transactions (the liveness check of a reused connection).
    Idle,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::Greeting => "greeting",
            Phase::Ehlo => "EHLO",
            Phase::StartTls => "STARTTLS",
            Phase::Handshake => "TLS handshake",
            Phase::Auth => "AUTH",
            Phase::Rset => "RSET",
            Phase::Mail => "MAIL FROM",
            Phase::Rcpt => "RCPT TO",
            Phase::Data => "DATA",
            Phase::Body => "message body",
            Phase::DataEnd => "end-of-data",
            Phase::Quit => "QUIT",
            Phase::Idle => "idle connection",
        })
    }
}

/// What went wrong with the connection or a command.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The error.
        source: io::Error,
    },
    /// No complete reply within the phase's deadline.
    #[error("{phase}: no complete reply within {secs} s (timeout)")]
    Timeout {
        /// The phase.
        phase: Phase,
        /// The deadline, seconds.
        secs: u64,
    },
    /// The relay closed the connection.
    #[error("{phase}: the relay closed the connection")]
    Closed {
        /// The phase.
        phase: Phase,
    },
    /// A network error.
    #[error("{phase}: {source}")]
    Io {
        /// The phase.
        phase: Phase,
        /// The error.
        source: io::Error,
    },
    /// Bytes that are not a reply.
    #[error("{phase}: {source}")]
    Protocol {
        /// The phase.
        phase: Phase,
        /// What was wrong, with the bytes quoted.
        source: ReplyError,
    },
    /// Bytes received after the 220 to STARTTLS, before the handshake (CVE-2011-0411 class).
    #[error(
        "STARTTLS failed: protocol error: the relay sent bytes after its 220 to STARTTLS, before the TLS handshake (STARTTLS response injection, CVE-2011-0411): \"{quoted}\"; connection dropped"
    )]
    Injected {
        /// The bytes, escaped.
        quoted: String,
    },
    /// The TLS handshake failed.
    #[error("STARTTLS failed: {0}")]
    Tls(String),
    /// A reply other than the one expected.
    #[error("{phase}: {response}")]
    Rejected {
        /// The phase.
        phase: Phase,
        /// The reply.
        response: Response,
    },
    /// The session cannot go on under the configured policy (TLS required but not offered,
    /// AUTH in cleartext, no common AUTH mechanism, unreadable token file).
    #[error("{0}")]
    Policy(String),
    /// An argument that cannot be sent.
    #[error(transparent)]
    Command(#[from] CommandError),
}

impl SmtpError {
    /// As a [`Reply`] for the state file: the relay's code when it replied; a failure during
    /// AUTH or STARTTLS says so first (`AUTH failed: …`, `STARTTLS failed: …`).
    pub fn reply(&self) -> Reply {
        let mut r = match self {
            SmtpError::Rejected { response, .. } => response.to_reply(),
            e => Reply::local(e.to_string()),
        };
        let lead = match self.phase() {
            Some(Phase::Auth) => "AUTH failed: ",
            Some(Phase::StartTls | Phase::Handshake) => "STARTTLS failed: ",
            _ => "",
        };
        if !r.text.starts_with(lead) {
            r.text.insert_str(0, lead);
        }
        r
    }

    /// The phase, when the error has one.
    pub fn phase(&self) -> Option<Phase> {
        match self {
            SmtpError::Timeout { phase, .. }
            | SmtpError::Closed { phase }
            | SmtpError::Io { phase, .. }
            | SmtpError::Protocol { phase, .. }
            | SmtpError::Rejected { phase, .. } => Some(*phase),
            SmtpError::Connect { .. } => Some(Phase::Connect),
            SmtpError::Injected { .. } | SmtpError::Tls(_) => Some(Phase::Handshake),
            SmtpError::Policy(_) | SmtpError::Command(_) => None,
        }
    }

    /// True when the connection cannot be used any more (anything but a refusal, or a 421,
    /// RFC 5321 §3.8).
    pub fn is_dead(&self) -> bool {
        !matches!(self, SmtpError::Rejected { response, .. } if response.code != 421)
    }
}

/// A failure to open a session.
#[derive(Debug)]
pub struct SessionError {
    /// What happened.
    pub error: SmtpError,
    /// The relay is at fault (refused the connection, 4xx/5xx greeting, TLS or AUTH failure,
    /// protocol error): put it in cooldown.
    pub relay_fault: bool,
}

impl SessionError {
    /// As a [`Reply`].
    pub fn reply(&self) -> Reply {
        self.error.reply()
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// What a relay offers in its EHLO reply (RFC 5321 §4.1.1.1), the extensions the client
/// uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870: `Some(0)` = SIZE without a limit, `Some(n)` = at most n bytes.
    pub size: Option<u64>,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 2034.
    pub enhanced_status_codes: bool,
    /// RFC 4954 mechanisms, upper case.
    pub auth: Vec<String>,
}

impl Capabilities {
    /// Reads the EHLO reply's lines after the first (keywords are case-insensitive).
    pub fn parse(r: &Response) -> Capabilities {
        let mut c = Capabilities::default();
        for line in r.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(kw) = words.next() else { continue };
            // old servers send AUTH=PLAIN LOGIN
            let (kw, first) = match kw.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (kw, None),
            };
            match kw.to_ascii_uppercase().as_str() {
                "PIPELINING" => c.pipelining = true,
                "SIZE" => c.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => c.eight_bit_mime = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "STARTTLS" => c.starttls = true,
                "ENHANCEDSTATUSCODES" => c.enhanced_status_codes = true,
                "AUTH" => {
                    for m in first.into_iter().chain(words) {
                        let m = m.to_ascii_uppercase();
                        if !c.auth.contains(&m) {
                            c.auth.push(m);
                        }
                    }
                }
                _ => {}
            }
        }
        c
    }

    /// The relay's message size limit, when it has one.
    pub fn size_limit(&self) -> Option<u64> {
        self.size.filter(|&n| n > 0)
    }
}

/// The byte stream with a read buffer: replies are framed here, with deadlines.
pub(crate) struct Connection {
    stream: Stream,
    /// Received, not yet consumed from `start`.
    buf: Vec<u8>,
    start: usize,
    /// Each read lands here (zeroed once per connection, not per read).
    scratch: Box<[u8]>,
    /// The socket's receive timeout as last set (`SO_RCVTIMEO`): set again only when it would
    /// outlast the current reply's deadline, so a reply costs no `setsockopt(2)` in the
    /// usual case (a shorter one only wakes the loop early, which then sets the rest).
    read_timeout: Option<Duration>,
    /// The socket's send timeout as last set (`SO_SNDTIMEO`).
    write_timeout: Option<Duration>,
}

fn io_err(phase: Phase, e: io::Error, secs: u64) -> SmtpError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => SmtpError::Timeout { phase, secs },
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => SmtpError::Closed { phase },
        _ => SmtpError::Io { phase, source: e },
    }
}

impl Connection {
    fn new(stream: Stream) -> Connection {
        Connection {
            stream,
            buf: Vec::with_capacity(4096),
            start: 0,
            scratch: vec![0u8; 8192].into_boxed_slice(),
            read_timeout: None,
            write_timeout: None,
        }
    }

    /// Bytes received and not yet consumed.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Reads one reply within `timeout` from now (the whole reply, however it trickles in).
    pub(crate) fn read_reply(
        &mut self,
        phase: Phase,
        timeout: Duration,
    ) -> Result<Response, SmtpError> {
        let deadline = Instant::now() + timeout;
        let secs = timeout.as_secs();
        loop {
            match reply::parse(&self.buf[self.start..]) {
                Ok(Some((r, n))) => {
                    self.start += n;
                    if self.start == self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                    }
                    return Ok(r);
                }
                Ok(None) => {}
                Err(source) => return Err(SmtpError::Protocol { phase, source }),
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SmtpError::Timeout { phase, secs });
            }
            if self.read_timeout.is_none_or(|t| t > left) {
                self.stream
                    .tcp()
                    .set_read_timeout(Some(left))
                    .map_err(|e| io_err(phase, e, secs))?;
                self.read_timeout = Some(left);
            }
            match self.stream.read(&mut self.scratch[..]) {
                Ok(0) => return Err(SmtpError::Closed { phase }),
                Ok(n) => self.buf.extend_from_slice(&self.scratch[..n]),
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut => {}
                    _ => return Err(io_err(phase, e, secs)),
                },
            }
        }
    }

    /// Writes all of `bytes` (one write call where the kernel takes it), within `timeout`.
    ///
    /// On a cleartext connection the socket's send timeout (`SO_SNDTIMEO`) is set again only
    /// when it would outlast the deadline, as for reads: the command batches (`command_secs`)
    /// and the message (`data_block_secs`) alternate on a reused connection, and the shorter
    /// timeout set once only wakes a longer write early, which then goes on until its own
    /// deadline. Inside TLS the timeout is set as asked (a write that timed out part-way
    /// cannot be resumed through the TLS layer).
    pub(crate) fn write_all(
        &mut self,
        bytes: &[u8],
        phase: Phase,
        timeout: Duration,
    ) -> Result<(), SmtpError> {
        let secs = timeout.as_secs();
        if let Stream::Plain(tcp) = &mut self.stream {
            let deadline = Instant::now() + timeout;
            let mut rest = bytes;
            while !rest.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(SmtpError::Timeout { phase, secs });
                }
                if self.write_timeout.is_none_or(|t| t > left) {
                    tcp.set_write_timeout(Some(left))
                        .map_err(|e| io_err(phase, e, secs))?;
                    self.write_timeout = Some(left);
                }
                match io::Write::write(tcp, rest) {
                    Ok(0) => return Err(SmtpError::Closed { phase }),
                    Ok(n) => rest = &rest[n..],
                    Err(e) => match e.kind() {
                        io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut => {}
                        _ => return Err(io_err(phase, e, secs)),
                    },
                }
            }
            return Ok(());
        }
        if self.write_timeout != Some(timeout) {
            self.stream
                .tcp()
                .set_write_timeout(Some(timeout))
                .map_err(|e| io_err(phase, e, secs))?;
            self.write_timeout = Some(timeout);
        }
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .map_err(|e| io_err(phase, e, secs))
    }

    /// Writes a command and reads its reply.
    pub(crate) fn command(
        &mut self,
        cmd: Command<'_>,
        phase: Phase,
        timeout: Duration,
    ) -> Result<Response, SmtpError> {
        let mut out = Vec::with_capacity(64);
        cmd.encode(&mut out)?;
        self.write_all(&out, phase, timeout)?;
        self.read_reply(phase, timeout)
    }

    /// True when something arrived while nothing was asked (a 421 before closing, a TLS
    /// alert), or the relay closed: checked without blocking.
    fn closed_or_unsolicited(&mut self) -> bool {
        if !self.pending().is_empty() {
            return true;
        }
        // one recv(2) with MSG_PEEK | MSG_DONTWAIT: the socket stays blocking
        let mut b = [0u8; 1];
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        match rustix::net::recv(self.stream.tcp(), &mut b[..], flags) {
            Ok(_) => true, // 0 = closed; data = unsolicited
            Err(e) => e != rustix::io::Errno::AGAIN && e != rustix::io::Errno::INTR,
        }
    }
}

/// A relay prepared once: its configuration, TLS settings and credentials.
pub struct RelayEndpoint {
    /// The configuration.
    pub cfg: RelayConfig,
    tls: Option<TlsSetup>,
    credentials: Option<Credentials>,
}

impl fmt::Debug for RelayEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // never the credentials
        f.debug_struct("RelayEndpoint")
            .field("name", &self.cfg.name)
            .field("tls", &self.cfg.tls)
            .finish_non_exhaustive()
    }
}

impl RelayEndpoint {
    /// Prepares TLS (system trust store plus `ca_file`; no verification only with
    /// `dangerous_accept_invalid_certs`) and the credentials.
    ///
    /// # Errors
    /// A bad `ca_file` or host name, naming the relay.
    pub fn new(cfg: RelayConfig) -> Result<RelayEndpoint, String> {
        let tls = if cfg.tls_mode() == TlsMode::None {
            None
        } else {
            Some(
                TlsSetup::new(
                    &cfg.host,
                    cfg.ca_file.as_deref(),
                    cfg.dangerous_accept_invalid_certs,
                )
                .map_err(|e| format!("relay {}: {e}", cfg.name))?,
            )
        };
        let credentials = Credentials::from_config(&cfg);
        Ok(RelayEndpoint {
            cfg,
            tls,
            credentials,
        })
    }
}

/// An open, greeted (and, as configured, encrypted and authenticated) session.
pub struct Session {
    pub(crate) conn: Connection,
    /// What the relay offers (after TLS, when TLS is used).
    pub caps: Capabilities,
    /// Transactions started on it.
    pub transactions: u32,
    /// The last transaction was abandoned before its end-of-data reply (a refused MAIL, no
    /// accepted recipient, a refused DATA): RSET before the next (RFC 5321 §4.1.1.5). False
    /// after an end-of-data reply, which resets the relay's state itself (§4.1.1.4).
    pub(crate) needs_reset: bool,
    pub(crate) timeouts: TimeoutConfig,
    /// The next transaction's `MAIL`, `RCPT`s and `DATA`, already written behind the last
    /// end-of-data (RFC 2920 §3.1) and not yet taken up by [`Session::send`]: their replies are
    /// on their way, and the relay is (or will be) inside DATA.
    pub(crate) preissued: Option<super::transaction::NextTx>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("caps", &self.caps)
            .field("transactions", &self.transactions)
            .finish_non_exhaustive()
    }
}

fn fault(error: SmtpError) -> SessionError {
    SessionError {
        error,
        relay_fault: true,
    }
}

fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, SmtpError> {
    let addr = format!("{host}:{port}");
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|source| SmtpError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name has no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                // commands and small bodies go in one write each: no Nagle wait for the
                // delayed ACK of the previous segment
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(SmtpError::Connect { addr, source: last })
}

impl Session {
    /// Connects, reads the greeting, sends EHLO, STARTTLS as the TLS mode says (EHLO again
    /// inside TLS), AUTH when credentials are set.
    ///
    /// # Errors
    /// A [`SessionError`]; `relay_fault` for refused connections, 4xx/5xx greetings, TLS,
    /// AUTH and protocol failures.
    pub fn open(
        relay: &RelayEndpoint,
        ehlo: &str,
        timeouts: &TimeoutConfig,
    ) -> Result<Session, SessionError> {
        let mode = relay.cfg.tls_mode();
        let tcp = connect(&relay.cfg.host, relay.cfg.port, timeouts.connect()).map_err(fault)?;
        let stream = if mode == TlsMode::Implicit {
            let Some(tls) = &relay.tls else {
                return Err(fault(SmtpError::Policy("no TLS settings".into())));
            };
            tls.handshake(tcp, timeouts.connect())
                .map_err(|e| fault(SmtpError::Tls(e.to_string())))?
        } else {
            Stream::Plain(tcp)
        };
        let mut s = Session {
            conn: Connection::new(stream),
            caps: Capabilities::default(),
            transactions: 0,
            needs_reset: false,
            timeouts: timeouts.clone(),
            preissued: None,
        };
        match s.handshake(relay, ehlo) {
            Ok(()) => Ok(s),
            Err(e) => {
                if !e.is_dead() {
                    let _ = s
                        .conn
                        .command(Command::Quit, Phase::Quit, Duration::from_secs(2));
                }
                s.conn.stream.close();
                Err(fault(e))
            }
        }
    }

    fn handshake(&mut self, relay: &RelayEndpoint, ehlo: &str) -> Result<(), SmtpError> {
        let t = self.timeouts.clone();
        let mode = relay.cfg.tls_mode();
        let greeting = self.conn.read_reply(Phase::Greeting, t.greeting())?;
        if greeting.code != 220 {
            return Err(SmtpError::Rejected {
                phase: Phase::Greeting,
                response: greeting,
            });
        }
        self.ehlo(ehlo)?;
        if matches!(mode, TlsMode::Required | TlsMode::Opportunistic) {
            if self.caps.starttls {
                self.starttls(relay)?;
                self.caps = Capabilities::default();
                self.ehlo(ehlo)?;
            } else if mode == TlsMode::Required {
                return Err(SmtpError::Policy(
                    "TLS is required but the server does not offer STARTTLS".into(),
                ));
            }
        }
        if let Some(creds) = &relay.credentials {
            // cleartext AUTH only when the operator wrote tls = "none" (RelayConfig::
            // cleartext_credentials warns about it at start)
            if !self.conn.stream.is_tls() && mode != TlsMode::None {
                return Err(SmtpError::Policy(
                    "refusing AUTH over a cleartext connection (set tls = \"none\" to allow it)"
                        .into(),
                ));
            }
            auth::authenticate(&mut self.conn, creds, &self.caps.auth, t.command())?;
        }
        Ok(())
    }

    fn ehlo(&mut self, name: &str) -> Result<(), SmtpError> {
        let r = self
            .conn
            .command(Command::Ehlo(name), Phase::Ehlo, self.timeouts.command())?;
        if !r.is_positive() {
            return Err(SmtpError::Rejected {
                phase: Phase::Ehlo,
                response: r,
            });
        }
        self.caps = Capabilities::parse(&r);
        Ok(())
    }

    fn starttls(&mut self, relay: &RelayEndpoint) -> Result<(), SmtpError> {
        let Some(tls) = &relay.tls else {
            return Err(SmtpError::Policy("no TLS settings".into()));
        };
        let r = self
            .conn
            .command(Command::StartTls, Phase::StartTls, self.timeouts.command())?;
        if r.code != 220 {
            return Err(SmtpError::Rejected {
                phase: Phase::StartTls,
                response: r,
            });
        }
        if !self.conn.pending().is_empty() {
            return Err(SmtpError::Injected {
                quoted: reply::quote(self.conn.pending()),
            });
        }
        // bytes in flight behind the 220 (not yet read): the same attack
        let tcp = self.conn.stream.tcp();
        let mut peek = [0u8; 256];
        let _ = tcp.set_nonblocking(true);
        let waiting = tcp.peek(&mut peek);
        let _ = tcp.set_nonblocking(false);
        if let Ok(n) = waiting
            && n > 0
        {
            return Err(SmtpError::Injected {
                quoted: reply::quote(&peek[..n]),
            });
        }
        let placeholder = tcp.try_clone().map_err(|e| SmtpError::Io {
            phase: Phase::Handshake,
            source: e,
        })?;
        let Stream::Plain(tcp) =
            std::mem::replace(&mut self.conn.stream, Stream::Plain(placeholder))
        else {
            return Err(SmtpError::Policy("STARTTLS inside TLS".into()));
        };
        let stream = tls
            .handshake(tcp, self.timeouts.connect())
            .map_err(|e| SmtpError::Tls(e.to_string()))?;
        self.conn = Connection::new(stream);
        Ok(())
    }

    /// True when the session is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.conn.stream.is_tls()
    }

    /// False when the relay closed the connection (or sent something unasked, such as a
    /// 421 on its idle timeout) since the last transaction: checked without blocking.
    pub fn is_alive(&mut self) -> bool {
        !self.conn.closed_or_unsolicited()
    }

    /// True when the next transaction's commands already went out behind the last
    /// end-of-data ([`crate::smtp::Transaction::next`]): the next [`Session::send`] must be
    /// that transaction, or the session is abandoned ([`Session::abort`]).
    pub fn has_preissued(&self) -> bool {
        self.preissued.is_some()
    }

    /// Sends QUIT, waits briefly for its reply, and closes. A session with a pre-issued
    /// transaction is aborted instead (the relay is inside DATA: without the final dot it
    /// delivers nothing, RFC 5321 §4.1.1.4).
    pub fn quit(mut self) {
        if self.preissued.is_some() {
            return self.abort();
        }
        let t = self.timeouts.command().min(Duration::from_secs(5));
        let _ = self.conn.command(Command::Quit, Phase::Quit, t);
        self.conn.stream.close();
    }

    /// Closes without QUIT (after an error, or to abandon a transaction: a server discards a
    /// transaction whose end-of-data never came, RFC 5321 §4.1.1.4).
    pub fn abort(self) {
        let _ = self.conn.stream.tcp().shutdown(std::net::Shutdown::Both);
    }
}
