//! TLS to the PostgreSQL queue against a real PostgreSQL with `ssl=on` (a certificate for
//! `db.test` made by the openssl CLI): verified against `sslrootcert` (chain and host name,
//! libpq's `verify-full`), refused when the certificate is not trusted or names another host,
//! cleartext only when asked for, and the queue itself (schema, lease) served over TLS.

#[path = "dispatch_common/mod.rs"]
mod dispatch_common;
mod pg_common;

use std::time::Duration;

use qmail_dispatch::queue::postgres::{Db, PgOptions, PgQueue};
use qmail_dispatch::queue::{LeaseHealth, Queue, QueueError};

fn start() -> Option<(pg_common::Pg, tempfile::TempDir, std::path::PathBuf)> {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = dispatch_common::make_cert(certs.path(), "db.test", "DNS:db.test");
    let pg = pg_common::Pg::start_with(
        &[
            "-c",
            "ssl=on",
            "-c",
            "ssl_cert_file=server.crt",
            "-c",
            "ssl_key_file=server.key",
        ],
        |data| {
            std::fs::copy(&cert, data.join("server.crt")).unwrap();
            std::fs::copy(&key, data.join("server.key")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        },
    )?;
    Some((pg, certs, cert))
}

fn ssl_in_use(db: &Db) -> Result<bool, QueueError> {
    let mut c = db.connect()?;
    Ok(c.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .unwrap()
    .get(0))
}

fn unavailable(r: Result<bool, QueueError>) -> String {
    match r {
        Err(QueueError::Unavailable(why)) => why,
        other => panic!("expected the connection to be refused, got {other:?}"),
    }
}

#[test]
fn tls_to_the_queue_is_verified_by_chain_and_host_name() {
    let Some((pg, _certs, ca)) = start() else {
        return;
    };
    let t = Duration::from_secs(5);
    let base = format!(
        "host=db.test hostaddr=127.0.0.1 port={} user=qmail dbname=postgres",
        pg.port
    );
    let ca = ca.display();
    // verify-full with the private CA: TLS, verified
    let db = Db::parse(&format!("{base} sslmode=verify-full sslrootcert={ca}"), t).unwrap();
    assert!(ssl_in_use(&db).unwrap());
    assert_eq!(db.cleartext_host(), None);
    // the URL form, percent-encoded path
    let url = format!(
        "postgres://qmail@db.test:{}/postgres?hostaddr=127.0.0.1&sslmode=require&sslrootcert={}",
        pg.port,
        ca.to_string().replace('/', "%2F")
    );
    assert!(ssl_in_use(&Db::parse(&url, t).unwrap()).unwrap());
    // prefer (the default) takes TLS when the server offers it, and verifies it too
    let db = Db::parse(&format!("{base} sslrootcert={ca}"), t).unwrap();
    assert!(ssl_in_use(&db).unwrap());
    assert_eq!(db.cleartext_host().as_deref(), Some("db.test"));
    // a certificate no root vouches for
    let why = unavailable(ssl_in_use(
        &Db::parse(&format!("{base} sslmode=require"), t).unwrap(),
    ));
    assert!(why.to_lowercase().contains("certificate"), "{why}");
    // the right certificate for another name: 127.0.0.1 is not db.test
    let why = unavailable(ssl_in_use(
        &Db::parse(
            &format!(
                "host=127.0.0.1 port={} user=qmail dbname=postgres sslmode=require sslrootcert={ca}",
                pg.port
            ),
            t,
        )
        .unwrap(),
    ));
    assert!(why.to_lowercase().contains("certificate"), "{why}");
    // prefer never falls back to cleartext after a failed verification
    let why = unavailable(ssl_in_use(&Db::parse(&base, t).unwrap()));
    assert!(why.to_lowercase().contains("certificate"), "{why}");
    // cleartext only when asked for
    let db = Db::parse(&format!("{base} sslmode=disable"), t).unwrap();
    assert!(!ssl_in_use(&db).unwrap());

    // the queue over TLS: schema, lease (its own connection), the pool
    let url = format!("{base} sslmode=verify-full sslrootcert={ca}");
    PgQueue::init(&url, "qmail").unwrap();
    let q = PgQueue::connect(&url, PgOptions::default()).unwrap();
    assert_eq!(q.heartbeat().unwrap(), LeaseHealth::Fresh);
    let tls_sessions: i64 = pg
        .client()
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE s.ssl AND a.application_name = 'qmail-dispatcher'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(tls_sessions >= 1, "{tls_sessions}");
    q.release_lease();
}
