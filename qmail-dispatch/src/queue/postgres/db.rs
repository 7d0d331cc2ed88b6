//! How the queue reaches its database: the connection string and TLS.
//!
//! The connection string is libpq's (the URL form `postgres://user@h1,h2/db?k=v` or the
//! keyword form `host=h1,h2 dbname=db k=v`), read by the `postgres` driver, with two of
//! libpq's TLS keywords the driver does not know read here first:
//! - `sslrootcert=PATH`: PEM certificates trusted besides the system trust store (a private
//!   CA, as the relays' `ca_file`);
//! - `sslmode=verify-full` and `sslmode=verify-ca`: TLS required (the driver's `require`).
//!
//! Every TLS connection is verified by rustls, chain and host name (RFC 6125), against the
//! system trust store (`rustls-native-certs`) plus `sslrootcert`: `require` already means
//! libpq's `verify-full` here. `sslmode=prefer` (the default, as libpq's) takes TLS when the
//! server offers it and cleartext when it does not; `disable` never asks. A queue on another
//! host without `sslmode=require` (or `verify-full`) is named by [`Db::cleartext_host`], and
//! the queue warns about it once.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use postgres::Client;
use postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::db_error;
use crate::queue::QueueError;

/// TCP keepalives start after this much idleness on every connection.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// `tcp_user_timeout` when the connection string sets none (TCP_USER_TIMEOUT, RFC 5482).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// How a connection plans its prepared statements: set once, when it is opened.
///
/// A queue's table grows and shrinks by orders of magnitude between two autovacuums, so its
/// statistics are stale by nature. After five executions PostgreSQL may switch a prepared
/// statement to a generic plan made from the statistics and the table size of that moment,
/// and keep it for as long as the connection lives (until the next `VACUUM` or `ANALYZE` of
/// the table). Made while the table was small, the generic plan of the grouped settle
/// (`claim.rs`) was a sequential scan of `message` joined by hash: one scan of the whole
/// table per statement, 2.8 ms at 30,000 rows and growing with the queue, against 0.3 ms by
/// primary key (`bench/postgres/profile.sh`, docs/benchmarks.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plans {
    /// Every execution planned with its parameters (`plan_cache_mode = force_custom_plan`):
    /// right whatever the statistics say, at the price of planning each time. For every
    /// statement but the few a dispatcher runs per message.
    Custom,
    /// The per-message statements (claim, fence, settle, import, chunk reads): planned once
    /// per connection (`force_generic_plan`; planning was 44 % of the backends' CPU), with
    /// the methods a stale plan could turn into a pass over the whole table made a last resort
    /// (`enable_seqscan`, `enable_bitmapscan`, `enable_sort`, `enable_hashjoin` off). Each of
    /// these statements reads by the primary key or walks a partial index in its order
    /// (`message_ready`, `message_due`), so that plan is the right one at any size. Never for
    /// an operator's query, which may need a scan.
    PerMessage,
}

impl Plans {
    fn setup(self) -> &'static str {
        match self {
            Plans::Custom => "SET plan_cache_mode = force_custom_plan",
            Plans::PerMessage => {
                "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; \
                 SET enable_bitmapscan = off; SET enable_sort = off; SET enable_hashjoin = off"
            }
        }
    }
}

/// A parsed connection string with its TLS connector; connects as often as asked.
#[derive(Clone)]
pub struct Db {
    config: postgres::Config,
    tls: MakeRustlsConnect,
    ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the driver's Config Debug redacts the password
        f.debug_struct("Db")
            .field("config", &self.config)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Parses `url` (see the module documentation); `connect_timeout` applies when the URL
    /// sets none. Sets `application_name=qmail-dispatcher` unless given, TCP keepalives (10 s
    /// idle, then every 2 s, 3 lost: `keepalives_interval`, `keepalives_retries`) and
    /// `tcp_user_timeout=10s` unless given, so that a vanished database host is noticed in
    /// seconds and a half-open connection cannot hold a claim's fence forever.
    ///
    /// # Errors
    /// [`QueueError::Corrupt`] naming `queue.url` for a string the driver refuses, and naming
    /// `queue.url.sslrootcert` for a certificate file that cannot be read or used. The
    /// password is never part of a message.
    pub fn parse(url: &str, connect_timeout: Duration) -> Result<Db, QueueError> {
        let (rewritten, ca_file) = take_tls_keywords(url)?;
        let mut config =
            postgres::Config::from_str(&rewritten).map_err(|e| QueueError::Corrupt {
                id: "queue.url".into(),
                reason: format!("not a PostgreSQL connection string: {e}"),
            })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("qmail-dispatcher");
        }
        // a vanished host (power cut, partition: no FIN, no RST) must not hold a connection
        // for TCP's ~15 minutes of retransmissions: sent data unacknowledged for 10 s, or an
        // idle connection whose keepalives go unanswered for 10 + 3 × 2 s, fails, and the
        // reconnect follows `target_session_attrs` to the promoted standby
        config.keepalives(true).keepalives_idle(KEEPALIVE_IDLE);
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(Duration::from_secs(2));
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(3);
        }
        let tls = crate::smtp::tls::client_config(ca_file.as_deref(), false).map_err(|e| {
            QueueError::Corrupt {
                id: "queue.url.sslrootcert".into(),
                reason: e,
            }
        })?;
        Ok(Db {
            config,
            tls: MakeRustlsConnect::new(tls),
            ca_file,
        })
    }

    /// Opens a new connection (TLS as the string's `sslmode` says, verified) that plans every
    /// execution of a prepared statement with its parameters ([`Plans::Custom`]).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] with the driver's reason (refused, timed out, a
    /// certificate that does not verify, authentication failed).
    pub fn connect(&self) -> Result<Client, QueueError> {
        self.connect_planning(Plans::Custom)
    }

    /// [`Db::connect`], planning as `plans` says.
    ///
    /// # Errors
    /// As [`Db::connect`].
    pub(crate) fn connect_planning(&self, plans: Plans) -> Result<Client, QueueError> {
        let mut client = self.config.connect(self.tls.clone()).map_err(db_error)?;
        match client.batch_execute(plans.setup()) {
            Ok(()) => {}
            // PostgreSQL before 12 has no plan_cache_mode: its own choice there
            Err(e) if e.code() == Some(&postgres::error::SqlState::UNDEFINED_OBJECT) => {}
            Err(e) => return Err(db_error(e)),
        }
        Ok(client)
    }

    /// The driver's view of the string.
    pub fn config(&self) -> &postgres::Config {
        &self.config
    }

    /// The first host that is neither a Unix socket nor loopback, when TLS is not required:
    /// the connection to it may be cleartext.
    pub fn cleartext_host(&self) -> Option<String> {
        if matches!(self.config.get_ssl_mode(), SslMode::Require) {
            return None;
        }
        self.config.get_hosts().iter().find_map(|h| match h {
            Host::Tcp(name) if !is_loopback(name) => Some(name.clone()),
            _ => None,
        })
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads and removes `sslrootcert`, and turns `sslmode=verify-full|verify-ca` into
/// `sslmode=require`, in either form of the string.
fn take_tls_keywords(url: &str) -> Result<(String, Option<PathBuf>), QueueError> {
    let bad = |reason: String| QueueError::Corrupt {
        id: "queue.url".into(),
        reason,
    };
    let mut ca_file = None;
    let mut keep = |key: &str, value: &str| -> Option<String> {
        match (key, value) {
            ("sslrootcert", v) => {
                ca_file = Some(PathBuf::from(v));
                None
            }
            ("sslmode", "verify-full" | "verify-ca") => Some("require".into()),
            (_, v) => Some(v.to_owned()),
        }
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), None));
        };
        let mut pairs = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_encoding::percent_decode_str(k).decode_utf8_lossy();
            let value = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| bad(format!("the value of {key} is not UTF-8")))?;
            match keep(&key, &value) {
                None => {}
                Some(nv) if nv == *value => pairs.push(pair.to_owned()),
                Some(nv) => pairs.push(format!("{k}={nv}")),
            }
        }
        let rewritten = if pairs.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", pairs.join("&"))
        };
        return Ok((rewritten, ca_file));
    }
    // the keyword form: `key=value` words (a quoted or spaced sslrootcert is left to the
    // driver, which names it as unknown)
    let mut words = Vec::new();
    for word in url.split_ascii_whitespace() {
        match word.split_once('=') {
            Some((k, v)) if !v.starts_with('\'') => match keep(k, v) {
                None => {}
                Some(nv) => words.push(format!("{k}={nv}")),
            },
            _ => words.push(word.to_owned()),
        }
    }
    Ok((words.join(" "), ca_file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_tls_keywords_are_read_in_both_forms() {
        let (u, ca) = take_tls_keywords(
            "postgres://q:p%40ss@db1,db2:5433/mail?sslmode=verify-full&sslrootcert=%2Fetc%2Fqmail%2Fca.pem&target_session_attrs=read-write",
        )
        .unwrap();
        assert_eq!(
            u,
            "postgres://q:p%40ss@db1,db2:5433/mail?sslmode=require&target_session_attrs=read-write"
        );
        assert_eq!(ca, Some(PathBuf::from("/etc/qmail/ca.pem")));
        let (u, ca) =
            take_tls_keywords("host=db1 sslmode=verify-ca sslrootcert=/ca.pem dbname=mail")
                .unwrap();
        assert_eq!(u, "host=db1 sslmode=require dbname=mail");
        assert_eq!(ca, Some(PathBuf::from("/ca.pem")));
        let (u, ca) = take_tls_keywords("postgres://q@localhost/db").unwrap();
        assert_eq!((u.as_str(), ca), ("postgres://q@localhost/db", None));
        let (u, _) = take_tls_keywords("postgres://q@h/db?sslrootcert=/x").unwrap();
        assert_eq!(u, "postgres://q@h/db");
    }

    #[test]
    fn a_remote_host_without_required_tls_is_named() {
        let t = Duration::from_secs(1);
        let host = |u: &str| Db::parse(u, t).unwrap().cleartext_host();
        assert_eq!(
            host("postgres://q@db.example:5432/x").as_deref(),
            Some("db.example")
        );
        assert_eq!(
            host("postgres://q@localhost,db2.example/x?sslmode=prefer").as_deref(),
            Some("db2.example")
        );
        assert_eq!(host("postgres://q@db.example/x?sslmode=verify-full"), None);
        assert_eq!(host("postgres://q@127.0.0.1:5432/x"), None);
        assert_eq!(host("postgres://q@[::1]:5432/x"), None);
        assert_eq!(host("host=/run/postgresql dbname=x"), None);
    }

    #[test]
    fn a_vanished_host_is_noticed_in_seconds_unless_the_string_says_otherwise() {
        let t = Duration::from_secs(1);
        let db = Db::parse("postgres://q@h1,h2/x", t).unwrap();
        let c = db.config();
        assert_eq!(c.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(2)));
        assert_eq!(c.get_keepalives_retries(), Some(3));
        assert_eq!(c.get_keepalives_idle(), KEEPALIVE_IDLE);
        let db = Db::parse("host=h tcp_user_timeout=30 keepalives_retries=9", t).unwrap();
        assert_eq!(
            db.config().get_tcp_user_timeout(),
            Some(&Duration::from_secs(30))
        );
        assert_eq!(db.config().get_keepalives_retries(), Some(9));
    }

    #[test]
    fn a_bad_root_certificate_file_is_named() {
        let e = Db::parse(
            "postgres://q@db.example/x?sslmode=require&sslrootcert=/nonexistent/ca.pem",
            Duration::from_secs(1),
        )
        .unwrap_err();
        let QueueError::Corrupt { id, reason } = e else {
            panic!("{e:?}")
        };
        assert_eq!(id, "queue.url.sslrootcert");
        assert!(reason.contains("/nonexistent/ca.pem"), "{reason}");
        // the driver's refusal of the string never shows the password
        let e = Db::parse("postgres://q:secret@h/x?nosuch=1", Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
    }
}
