//! The dispatcher's configuration: spools, relays, retry policy, timeouts, workers.
//!
//! Every struct derives `serde::Deserialize` with defaults for every field, so the binary reads
//! it from TOML (`docs/dispatcher.md` is the reference) and tests build it in code. Durations
//! are whole seconds (`*_secs`) or milliseconds (`*_ms`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use qmail_core::error::{Error, ErrorKind, Result};

fn invalid(field: &'static str, msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, msg).with_field(field)
}

/// How a relay connection uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// STARTTLS must succeed, with a verified certificate, before AUTH or MAIL; otherwise the
    /// attempt fails with a TLS error and nothing else is sent.
    Required,
    /// STARTTLS when the server offers it (and fail the attempt if the handshake fails);
    /// cleartext when it does not.
    Opportunistic,
    /// Never STARTTLS.
    None,
    /// Implicit TLS from the first byte (`smtps://`, port 465).
    Implicit,
}

impl TlsMode {
    fn parse(s: &str) -> Result<TlsMode> {
        match s {
            "required" => Ok(TlsMode::Required),
            "opportunistic" => Ok(TlsMode::Opportunistic),
            "none" => Ok(TlsMode::None),
            "implicit" => Ok(TlsMode::Implicit),
            _ => Err(invalid(
                "tls",
                format!("tls={s:?} is not required, opportunistic, none or implicit"),
            )),
        }
    }
}

/// One relay (smarthost).
///
/// `Debug` never shows the secrets: `password` prints as `Some("<redacted>")` and `url` with
/// its user info removed (`smtp://<redacted>@host:port`), so a logged configuration is safe.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// A name for logs and metrics (default `host:port`).
    pub name: String,
    /// The relay as a URL: `smtp://[user:pass@]host:port?tls=...&priority=N&weight=N` or
    /// `smtps://...`. When set, it fills host, port, tls, username and password.
    pub url: Option<String>,
    /// Host name or IP address (also the name checked against its certificate).
    pub host: String,
    /// TCP port (default 25; 465 for implicit TLS).
    pub port: u16,
    /// TLS mode. Default: `required` when credentials are set, else `opportunistic`.
    pub tls: Option<TlsMode>,
    /// AUTH user name.
    pub username: Option<String>,
    /// AUTH password.
    pub password: Option<String>,
    /// Read the AUTH password from this file (first line), instead of `password`.
    pub password_file: Option<PathBuf>,
    /// AUTH XOAUTH2 with the OAuth 2.0 bearer token on this file's first line, read again at
    /// each AUTH (the operator's token refresher keeps it current); needs `username`.
    pub token_file: Option<PathBuf>,
    /// Lower is tried first; relays of equal priority share the load by weight.
    pub priority: u32,
    /// Share of the messages among relays of equal priority.
    pub weight: u32,
    /// Most connections open to this relay at once, across all workers (0 = workers).
    pub max_connections: usize,
    /// Messages sent over one connection before it is closed and a new one opened.
    pub max_messages_per_connection: u32,
    /// At most this many messages per second to this relay (0 = unlimited).
    pub max_messages_per_second: f64,
    /// How long a relay that refused a connection, greeted with 4xx or failed TLS is skipped.
    pub cooldown_secs: u64,
    /// A PEM file of extra trusted root certificates (e.g. a private CA).
    pub ca_file: Option<PathBuf>,
    /// TESTS ONLY: accept any certificate and host name. Never set this in production.
    pub dangerous_accept_invalid_certs: bool,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // destructured so that a new field cannot be added without deciding how it prints
        let RelayConfig {
            name,
            url,
            host,
            port,
            tls,
            username,
            password,
            password_file,
            token_file,
            priority,
            weight,
            max_connections,
            max_messages_per_connection,
            max_messages_per_second,
            cooldown_secs,
            ca_file,
            dangerous_accept_invalid_certs,
        } = self;
        let url = url.as_deref().map(redact_userinfo);
        f.debug_struct("RelayConfig")
            .field("name", name)
            .field("url", &url)
            .field("host", host)
            .field("port", port)
            .field("tls", tls)
            .field("username", username)
            .field("password", &password.as_ref().map(|_| "<redacted>"))
            .field("password_file", password_file)
            .field("token_file", token_file)
            .field("priority", priority)
            .field("weight", weight)
            .field("max_connections", max_connections)
            .field("max_messages_per_connection", max_messages_per_connection)
            .field("max_messages_per_second", max_messages_per_second)
            .field("cooldown_secs", cooldown_secs)
            .field("ca_file", ca_file)
            .field(
                "dangerous_accept_invalid_certs",
                dangerous_accept_invalid_certs,
            )
            .finish()
    }
}

/// A relay URL with its user info (`user:password@`) replaced by `<redacted>@`.
fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}<redacted>{}", &url[..scheme_end], &rest[at..]),
        None => url.to_owned(),
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            name: String::new(),
            url: None,
            host: String::new(),
            port: 0,
            tls: None,
            username: None,
            password: None,
            password_file: None,
            token_file: None,
            priority: 0,
            weight: 1,
            max_connections: 0,
            max_messages_per_connection: 1000,
            max_messages_per_second: 0.0,
            cooldown_secs: 60,
            ca_file: None,
            dangerous_accept_invalid_certs: false,
        }
    }
}

fn percent_decode(field: &'static str, s: &str) -> Result<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| invalid(field, format!("{field} is not UTF-8 after %-decoding")))
}

/// Parses a whole number of type `T` for URL parameter `key`, naming it and the range when it
/// does not fit (`weight=4294967296` is refused, not wrapped to 0).
fn url_number<T>(key: &str, v: &str) -> Result<T>
where
    T: std::str::FromStr + std::fmt::Display + num_bounds::Bounded,
{
    v.parse::<T>().map_err(|_| {
        let field: &'static str = match key {
            "priority" => "relay.priority",
            "weight" => "relay.weight",
            "max_connections" => "relay.max_connections",
            "max_messages_per_connection" => "relay.max_messages_per_connection",
            "cooldown_secs" => "relay.cooldown_secs",
            _ => "relay",
        };
        invalid(
            field,
            format!(
                "{key}={v:?} is not a whole number within {}..={}",
                T::MIN_V,
                T::MAX_V
            ),
        )
    })
}

mod num_bounds {
    /// The range of an integer type, for error messages.
    pub trait Bounded {
        const MIN_V: Self;
        const MAX_V: Self;
    }
    macro_rules! bounded {
        ($($t:ty),*) => { $(impl Bounded for $t { const MIN_V: Self = <$t>::MIN; const MAX_V: Self = <$t>::MAX; })* };
    }
    bounded!(u32, u64, usize);
}

/// Why the port of a relay URL was refused: out of range (RFC 793 ports are 16 bits) or not a
/// number. Reads only the text after the host (never the user info, which may hold a password).
fn port_problem(raw: &str) -> String {
    let after_scheme = raw.split_once("://").map_or(raw, |(_, r)| r);
    let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = match host_port.rsplit_once(']') {
        Some((_, rest)) => rest.strip_prefix(':'),
        None => host_port.rsplit_once(':').map(|(_, p)| p),
    }
    .unwrap_or("");
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        format!("port {port} is out of range 1..=65535 (RFC 793 ports are 16 bits)")
    } else {
        format!("port {port:?} is not a number")
    }
}

impl RelayConfig {
    /// Parses `smtp://[user:pass@]host[:port][?tls=required|opportunistic|none&priority=N&
    /// weight=N&max_connections=N&max_messages_per_connection=N&max_messages_per_second=X&
    /// cooldown_secs=N&ca_file=PATH&token_file=PATH&dangerous_accept_invalid_certs=true]` or
    /// `smtps://...`.
    /// User and password may be %-encoded.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming `relay`.
    pub fn from_url(url: &str) -> Result<RelayConfig> {
        let mut r = RelayConfig {
            url: Some(url.to_owned()),
            ..RelayConfig::default()
        };
        r.apply_url()?;
        Ok(r)
    }

    fn apply_url(&mut self) -> Result<()> {
        let Some(raw) = self.url.clone() else {
            return Ok(());
        };
        // never echo the URL itself in errors: it may hold a password
        let u = url::Url::parse(&raw).map_err(|e| match e {
            url::ParseError::InvalidPort => invalid("relay.port", port_problem(&raw)),
            e => invalid("relay.url", format!("the relay URL does not parse: {e}")),
        })?;
        // the scheme is case-insensitive (RFC 3986 §3.1); the url crate lowercases it
        let implicit = match u.scheme() {
            "smtp" => false,
            "smtps" => true,
            other => {
                return Err(invalid(
                    "relay.url",
                    format!("scheme {other:?} is not smtp or smtps"),
                ));
            }
        };
        if !matches!(u.path(), "" | "/") {
            return Err(invalid(
                "relay.url",
                format!(
                    "the relay URL has a path ({:?}); only host, port and ?parameters",
                    u.path()
                ),
            ));
        }
        if u.fragment().is_some() {
            return Err(invalid("relay.url", "the relay URL has a #fragment"));
        }
        let host = match u.host() {
            Some(url::Host::Domain(d)) => percent_decode("relay.host", d)?.to_ascii_lowercase(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(invalid("relay.host", "the relay URL has no host")),
        };
        if host.is_empty() {
            return Err(invalid("relay.host", "the relay URL has no host"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            self.username = Some(percent_decode("relay.username", u.username())?);
            self.password = Some(percent_decode(
                "relay.password",
                u.password().unwrap_or(""),
            )?);
        }
        self.host = host;
        self.port = match u.port() {
            Some(0) => {
                return Err(invalid(
                    "relay.port",
                    "port 0 is out of range 1..=65535 (0 is not a relay port)",
                ));
            }
            Some(p) => p,
            None if implicit => 465,
            None => 25,
        };
        if implicit {
            self.tls = Some(TlsMode::Implicit);
        }
        let mut seen: Vec<String> = Vec::new();
        for pair in u.query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode("relay.url", k)?;
            let v = percent_decode("relay.url", v)?;
            if seen.contains(&k) {
                return Err(invalid(
                    "relay.url",
                    format!("relay URL parameter {k:?} is given twice"),
                ));
            }
            seen.push(k.clone());
            match k.as_str() {
                "tls" if !implicit => self.tls = Some(TlsMode::parse(&v)?),
                "tls" => {
                    return Err(invalid(
                        "relay.tls",
                        "smtps:// is implicit TLS; leave out tls=",
                    ));
                }
                "priority" => self.priority = url_number(&k, &v)?,
                "weight" => self.weight = url_number(&k, &v)?,
                "max_connections" => self.max_connections = url_number(&k, &v)?,
                "max_messages_per_connection" => {
                    self.max_messages_per_connection = url_number(&k, &v)?
                }
                "max_messages_per_second" => {
                    self.max_messages_per_second = v
                        .parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite() && *x >= 0.0)
                        .ok_or_else(|| {
                            invalid(
                                "relay.max_messages_per_second",
                                format!(
                                    "{k}={v:?} is not a number of messages per second, 0 or more"
                                ),
                            )
                        })?
                }
                "cooldown_secs" => self.cooldown_secs = url_number(&k, &v)?,
                "name" => self.name = v,
                "ca_file" => self.ca_file = Some(PathBuf::from(v)),
                "token_file" => self.token_file = Some(PathBuf::from(v)),
                "dangerous_accept_invalid_certs" => {
                    self.dangerous_accept_invalid_certs = match v.as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(invalid(
                                "relay.dangerous_accept_invalid_certs",
                                format!("{k}={v:?} is not true or false"),
                            ));
                        }
                    }
                }
                _ => {
                    return Err(invalid(
                        "relay.url",
                        format!("unknown relay URL parameter {k:?}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Fills the URL's fields, the defaults that depend on others, and checks the result.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming `relay`.
    pub fn resolve(mut self) -> Result<RelayConfig> {
        self.apply_url()?;
        if self.host.is_empty() {
            return Err(invalid("relay", "a relay needs a host (or a url)"));
        }
        if let Some(f) = &self.password_file {
            let s = std::fs::read_to_string(f).map_err(|e| {
                invalid(
                    "relay",
                    format!("cannot read password_file {}: {e}", f.display()),
                )
            })?;
            self.password = Some(s.lines().next().unwrap_or("").to_owned());
        }
        if self.port == 0 {
            self.port = if self.tls == Some(TlsMode::Implicit) {
                465
            } else {
                25
            };
        }
        if self.token_file.is_some() && self.username.is_none() {
            return Err(invalid(
                "relay",
                format!(
                    "relay {}: token_file needs a username (XOAUTH2 sends both)",
                    self.host
                ),
            ));
        }
        if self.tls.is_none() {
            self.tls = Some(if self.username.is_some() {
                TlsMode::Required
            } else {
                TlsMode::Opportunistic
            });
        }
        if self.name.is_empty() {
            self.name = format!("{}:{}", self.host, self.port);
        }
        if self.max_messages_per_connection == 0 {
            self.max_messages_per_connection = 1;
        }
        if !(self.max_messages_per_second.is_finite() && self.max_messages_per_second >= 0.0) {
            return Err(invalid(
                "relay.max_messages_per_second",
                format!(
                    "max_messages_per_second = {} is not a rate of 0 or more (0 = unlimited)",
                    self.max_messages_per_second
                ),
            ));
        }
        Ok(self)
    }

    /// True when credentials are set but TLS is not required (`tls = none` or
    /// `opportunistic`, both explicit): the password may cross the network in cleartext.
    /// Allowed, but the dispatcher warns at start and `check-config` says so.
    pub fn cleartext_credentials(&self) -> bool {
        self.username.is_some() && matches!(self.tls_mode(), TlsMode::None | TlsMode::Opportunistic)
    }

    /// The TLS mode after [`RelayConfig::resolve`].
    pub fn tls_mode(&self) -> TlsMode {
        self.tls.unwrap_or(TlsMode::Opportunistic)
    }
}

/// Retry policy for temporary failures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Delay before the first retry (Postfix `minimal_backoff_time`: 300 s).
    pub first_secs: u64,
    /// Upper bound of the delay (Postfix `maximal_backoff_time`: 4000 s).
    pub max_secs: u64,
    /// After this long in the queue a message fails (Postfix `maximal_queue_lifetime`: 5 days).
    pub lifetime_secs: u64,
    /// Random spread of each delay, as a fraction (0.2 = ±20 %).
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            first_secs: 300,
            max_secs: 4000,
            lifetime_secs: 5 * 86400,
            jitter: 0.2,
        }
    }
}

/// SMTP timeouts: each a deadline for one whole reply (however slowly it trickles in), or for
/// one write of the message. The defaults are RFC 5321 §4.5.3.2's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutConfig {
    /// TCP connect, and each TLS handshake (not in the RFC; 30 s).
    pub connect_secs: u64,
    /// Initial 220 greeting (§4.5.3.2.1: 5 min).
    pub greeting_secs: u64,
    /// Reply to MAIL FROM (§4.5.3.2.2: 5 min).
    pub mail_secs: u64,
    /// Reply to each RCPT TO (§4.5.3.2.3: 5 min).
    pub rcpt_secs: u64,
    /// The 354 to DATA (§4.5.3.2.4: 2 min).
    pub data_secs: u64,
    /// Each write of the message, at most 64 KiB (§4.5.3.2.5, "data block": 3 min).
    pub data_block_secs: u64,
    /// Reply to end-of-data (§4.5.3.2.6: 10 min; shorter risks a duplicate, since the relay
    /// may deliver after the client gave up).
    pub data_end_secs: u64,
    /// Every other command: EHLO, STARTTLS, AUTH, RSET, QUIT (5 min, as §4.5.3.2.7 for the
    /// server side).
    pub command_secs: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            connect_secs: 30,
            greeting_secs: 300,
            mail_secs: 300,
            rcpt_secs: 300,
            data_secs: 120,
            data_block_secs: 180,
            data_end_secs: 600,
            command_secs: 300,
        }
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n.max(1))
}

impl TimeoutConfig {
    /// The connect (and TLS handshake) timeout.
    pub fn connect(&self) -> Duration {
        secs(self.connect_secs)
    }
    /// The greeting timeout.
    pub fn greeting(&self) -> Duration {
        secs(self.greeting_secs)
    }
    /// The MAIL FROM timeout.
    pub fn mail(&self) -> Duration {
        secs(self.mail_secs)
    }
    /// The RCPT TO timeout.
    pub fn rcpt(&self) -> Duration {
        secs(self.rcpt_secs)
    }
    /// The DATA (354) timeout.
    pub fn data(&self) -> Duration {
        secs(self.data_secs)
    }
    /// The timeout of each write of the message.
    pub fn data_block(&self) -> Duration {
        secs(self.data_block_secs)
    }
    /// The end-of-data timeout.
    pub fn data_end(&self) -> Duration {
        secs(self.data_end_secs)
    }
    /// The timeout of the other commands.
    pub fn command(&self) -> Duration {
        secs(self.command_secs)
    }
}

/// Delivery status notifications (RFC 3464) for failed recipients.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DsnConfig {
    /// Submit a DSN to the envelope sender (never to `<>`) when recipients fail permanently.
    pub enabled: bool,
    /// The From of the DSN (default `MAILER-DAEMON@<ehlo name>`).
    pub from: Option<String>,
}

/// The whole dispatcher configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// The spool directories served.
    pub spools: Vec<PathBuf>,
    /// Relays; none means the embedded default: deliver to `<spool>/outbox/ID.eml`.
    #[serde(rename = "relay")]
    pub relays: Vec<RelayConfig>,
    /// Worker threads (concurrent SMTP transactions).
    pub workers: usize,
    /// EHLO name (default: this host's name).
    pub ehlo_name: Option<String>,
    /// A claim whose owner has not renewed its lease for this long is taken back.
    pub lease_secs: u64,
    /// Full rescan of the queue directories, for filesystems without notifications (NFS, SMB).
    pub rescan_ms: u64,
    /// Higher-priority messages go first, but a message's rank improves by one priority step
    /// per this many seconds of waiting, so none starves.
    pub priority_step_secs: u64,
    /// Close a relay connection idle this long.
    pub idle_close_ms: u64,
    /// On SIGTERM, wait this long for in-flight transactions before releasing their claims.
    pub shutdown_grace_secs: u64,
    /// Keep delivered messages in `<spool>/sent/` for this long (0 = delete at once).
    pub sent_retention_secs: u64,
    /// Files in `<spool>/tmp/` older than this (a submitter that died mid-write) are removed
    /// at the start of `run` and `drain` and hourly; 36 h by default, as qmail's.
    pub tmp_max_age_secs: u64,
    /// Remove messages from `failed/` this long after they failed (0 = keep forever).
    /// Default 5 days, as Postfix's `bounce_queue_lifetime` / `maximal_queue_lifetime`.
    pub failed_retention_secs: u64,
    /// Remove files from `corrupt/` this long after they were quarantined (0 = keep
    /// forever). Default 5 days.
    pub corrupt_retention_secs: u64,
    /// fsync state changes (directory renames, state files). On by default.
    pub durable: bool,
    /// Append one JSON line per delivery attempt to this file (also logged at target
    /// `qmail::delivery`).
    pub delivery_log: Option<PathBuf>,
    /// Retry policy.
    pub retry: RetryConfig,
    /// SMTP timeouts.
    pub timeouts: TimeoutConfig,
    /// DSNs.
    pub dsn: DsnConfig,
    /// DKIM signing keys, `[[dkim]]` in TOML (see [`crate::dkim`]); none = nothing is signed.
    pub dkim: Vec<crate::dkim::DkimConfig>,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            spools: Vec::new(),
            relays: Vec::new(),
            workers: 8,
            ehlo_name: None,
            lease_secs: 60,
            rescan_ms: 5000,
            priority_step_secs: 60,
            idle_close_ms: 5000,
            shutdown_grace_secs: 30,
            sent_retention_secs: 0,
            tmp_max_age_secs: 36 * 3600,
            failed_retention_secs: 5 * 86400,
            corrupt_retention_secs: 5 * 86400,
            durable: true,
            delivery_log: None,
            retry: RetryConfig::default(),
            timeouts: TimeoutConfig::default(),
            dsn: DsnConfig::default(),
            dkim: Vec::new(),
        }
    }
}

impl DispatchConfig {
    /// Resolves every relay, checks the values and fills derived defaults.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming the field at fault.
    pub fn resolve(mut self) -> Result<DispatchConfig> {
        if self.spools.is_empty() {
            return Err(
                Error::new(ErrorKind::NoSpoolConfigured, "no spool configured")
                    .with_field("spools"),
            );
        }
        if self.workers == 0 {
            return Err(invalid("workers", "workers must be at least 1"));
        }
        if self.lease_secs < 2 {
            return Err(invalid("lease_secs", "lease_secs must be at least 2"));
        }
        if !(0.0..=1.0).contains(&self.retry.jitter) {
            return Err(invalid("retry.jitter", "jitter must be within 0..=1"));
        }
        self.relays = self
            .relays
            .into_iter()
            .map(RelayConfig::resolve)
            .collect::<Result<_>>()?;
        if self.ehlo_name.as_deref().unwrap_or("").is_empty() {
            self.ehlo_name = Some(
                hostname::get()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "localhost".into()),
            );
        }
        // the EHLO argument goes into an SMTP command: a domain or an address literal only
        // (RFC 5321 §4.1.1.1), never CR, LF or spaces
        let ehlo = self.ehlo();
        let ok = if let Some(lit) = ehlo.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            lit.parse::<std::net::Ipv4Addr>().is_ok()
                || lit
                    .strip_prefix("IPv6:")
                    .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok())
        } else {
            ehlo.len() <= 255
                && ehlo.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        if !ok {
            return Err(invalid(
                "ehlo_name",
                format!(
                    "ehlo_name {ehlo:?} is not a host name or an address literal (RFC 5321 §4.1.1.1)"
                ),
            ));
        }
        if self.rescan_ms == 0 {
            self.rescan_ms = 5000;
        }
        // loads every DKIM key once: a bad key is an error here, so at start, in check-config
        // and at SIGHUP (the old configuration stays)
        crate::dkim::resolve(&mut self.dkim)?;
        Ok(self)
    }

    /// The EHLO name after [`DispatchConfig::resolve`].
    pub fn ehlo(&self) -> &str {
        self.ehlo_name.as_deref().unwrap_or("localhost")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let mut r = RelayConfig::from_url("smtp://user:s3cret%21@mx.example:587?tls=required")
            .and_then(RelayConfig::resolve)
            .unwrap();
        r.url = Some("smtp://user:s3cret%21@mx.example:587/?tls=required".into());
        let shown = format!("{r:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("smtp://<redacted>@mx.example:587/?tls=required"),
            "{shown}"
        );
        assert!(shown.contains(r#"password: Some("<redacted>")"#), "{shown}");
        assert!(shown.contains(r#"username: Some("user")"#), "{shown}");
        assert_eq!(
            redact_userinfo("smtp://mx.example:25"),
            "smtp://mx.example:25"
        );
        assert_eq!(redact_userinfo("no url"), "no url");
    }

    #[test]
    fn relay_urls() {
        let r = RelayConfig::from_url(
            "smtp://u%40x:p%3Aw@mx.example:587?tls=required&weight=3&priority=1",
        )
        .and_then(RelayConfig::resolve)
        .unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.tls, r.weight, r.priority),
            ("mx.example", 587, Some(TlsMode::Required), 3, 1)
        );
        assert_eq!(
            (r.username.as_deref(), r.password.as_deref()),
            (Some("u@x"), Some("p:w"))
        );
        let r = RelayConfig::from_url("smtps://mx.example")
            .and_then(RelayConfig::resolve)
            .unwrap();
        assert_eq!((r.port, r.tls), (465, Some(TlsMode::Implicit)));
        // credentials make TLS required by default
        let r = RelayConfig::from_url("smtp://u:p@mx.example:25")
            .and_then(RelayConfig::resolve)
            .unwrap();
        assert_eq!(r.tls, Some(TlsMode::Required));
        let r = RelayConfig::from_url("smtp://[::1]:2525?tls=none")
            .and_then(RelayConfig::resolve)
            .unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.tls),
            ("::1", 2525, Some(TlsMode::None))
        );
        assert!(RelayConfig::from_url("http://x").is_err());
        assert!(RelayConfig::from_url("smtp://x:25?tls=maybe").is_err());
    }

    #[test]
    fn relay_urls_are_checked_strictly() {
        // the scheme is case-insensitive (RFC 3986 §3.1), the host too
        let r = RelayConfig::from_url("SMTP://MX.Example:2525?TLS=none");
        assert!(
            r.is_err(),
            "parameter names are case-sensitive: TLS is unknown"
        );
        let r = RelayConfig::from_url("SMTP://MX.Example:2525?tls=none").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("mx.example", 2525));
        let r = RelayConfig::from_url("Smtps://mx.example").unwrap();
        assert_eq!(r.tls, Some(TlsMode::Implicit));
        let field = |u: &str| {
            RelayConfig::from_url(u)
                .unwrap_err()
                .field()
                .unwrap_or("")
                .to_owned()
        };
        assert_eq!(field("smtp://mx.example?weight=4294967296"), "relay.weight");
        assert_eq!(field("smtp://mx.example?priority=-1"), "relay.priority");
        assert_eq!(field("smtp://mx.example:99999"), "relay.port");
        assert_eq!(field("smtp://mx.example:0"), "relay.port");
        assert_eq!(field("smtp://mx.example?weight=1&weight=2"), "relay.url");
        assert_eq!(field("smtp://mx.example/path"), "relay.url");
        assert_eq!(
            field("smtp://mx.example?max_messages_per_second=NaN"),
            "relay.max_messages_per_second"
        );
        assert_eq!(
            field("smtp://mx.example?dangerous_accept_invalid_certs=yes"),
            "relay.dangerous_accept_invalid_certs"
        );
        let e = RelayConfig::from_url("smtp://u:secret@mx.example?weight=x").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let r = RelayConfig::from_url("smtp://mx.example?weight=4294967295").unwrap();
        assert_eq!(r.weight, u32::MAX);
    }

    #[test]
    fn defaults() {
        let t = TimeoutConfig::default();
        assert!(t.data_end_secs >= 600, "RFC 5321 §4.5.3.2.6");
        assert_eq!(
            (
                t.greeting_secs,
                t.mail_secs,
                t.rcpt_secs,
                t.data_secs,
                t.data_block_secs
            ),
            (300, 300, 300, 120, 180),
            "RFC 5321 §4.5.3.2"
        );
        let r = RetryConfig::default();
        assert_eq!(
            (r.first_secs, r.max_secs, r.lifetime_secs),
            (300, 4000, 432000)
        );
    }
}
