//! The schema and its versioned migrations (the contract is `docs/scale-out.md`, "Schema").
//!
//! Every migration runs in its own transaction under a transaction-scoped advisory lock, so
//! two `queue init` runs at once (or a dispatcher starting during one) apply each version
//! exactly once; a version already in `SCHEMA.schema_version` is skipped. Migrations only ever
//! add: a released version is never edited.

use postgres::Client;

use super::{advisory_key, db_error};
use crate::queue::QueueError;

/// The newest schema version this build knows (and requires).
pub const SCHEMA_VERSION: i32 = 3;

/// Migration `version` for schema `s` (a validated identifier).
fn migration(version: i32, s: &str) -> Option<String> {
    match version {
        1 => Some(format!(
            r#"
CREATE TABLE {s}.message (
    id            text PRIMARY KEY,
    state         text NOT NULL,
    rank          bigint NOT NULL,
    priority      smallint NOT NULL,
    created       bigint NOT NULL,
    due           timestamptz NOT NULL,
    owner         text,
    claims        bigint NOT NULL DEFAULT 0,
    header        bytea NOT NULL,
    header_version smallint NOT NULL,
    body_len      bigint NOT NULL,
    body          bytea,
    chunked       boolean NOT NULL DEFAULT false,
    dstate        jsonb,
    reason        text,
    imported_at   timestamptz NOT NULL DEFAULT now(),
    claimed_at    timestamptz,
    settled_at    timestamptz,
    CONSTRAINT message_state CHECK (state IN
        ('ready', 'scheduled', 'active', 'deferred', 'failed', 'corrupt', 'held', 'delivered')),
    CONSTRAINT message_owner CHECK ((state = 'active') = (owner IS NOT NULL)),
    CONSTRAINT message_body CHECK (body_len >= 0 AND NOT (chunked AND body IS NOT NULL))
);
ALTER TABLE {s}.message ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE INDEX message_ready ON {s}.message (rank, id) WHERE state = 'ready';
CREATE INDEX message_due ON {s}.message (due) WHERE state IN ('scheduled', 'deferred');
CREATE INDEX message_active ON {s}.message (owner) WHERE state = 'active';
CREATE INDEX message_tombstone ON {s}.message (settled_at) WHERE state = 'delivered';
CREATE INDEX message_state_created ON {s}.message (state, created);

CREATE TABLE {s}.chunk (
    id   text NOT NULL REFERENCES {s}.message (id) ON DELETE CASCADE,
    seq  integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (id, seq)
);
ALTER TABLE {s}.chunk ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE SEQUENCE {s}.lease_key AS integer MINVALUE 1 CYCLE;
CREATE TABLE {s}.lease (
    owner       text PRIMARY KEY,
    lock_key    integer NOT NULL,
    host        text NOT NULL,
    pid         integer NOT NULL,
    backend_pid integer NOT NULL,
    started     timestamptz NOT NULL DEFAULT now(),
    renewed     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {s}.rate (
    relay   text PRIMARY KEY,
    tokens  double precision NOT NULL,
    updated timestamptz NOT NULL
);
"#
        )),
        // the grace other dispatchers give a lease before they take it back, chosen by its
        // owner (`PgOptions::lockless_grace`); NULL: the row of a version-1 dispatcher (which
        // takes lock-less leases back at once, so while one runs nobody fences locally)
        2 => Some(format!(
            "ALTER TABLE {s}.lease ADD COLUMN fence_grace_ms integer \
             CONSTRAINT lease_fence_grace CHECK (fence_grace_ms >= 0);"
        )),
        // a row up to a heap page (8160 bytes) stays whole in the heap: a typical message's
        // body is not moved to TOAST (one heap tuple, one TOAST tuple and one TOAST index
        // entry fewer at import, and again at the tombstone's settle, which drops the body);
        // bodies beyond it still go out of line uncompressed (`STORAGE EXTERNAL`). Only rows
        // written from now on are affected. Measured: bench/postgres/run.sh, docs/benchmarks.md
        3 => Some(format!(
            "ALTER TABLE {s}.message SET (toast_tuple_target = 8160);"
        )),
        _ => None,
    }
}

/// Creates the schema `s` when missing and applies every migration it lacks; returns the
/// versions applied now (empty: it was up to date).
///
/// # Errors
/// [`QueueError::Unavailable`] when the database cannot be reached or refuses a statement
/// (the message names the version); [`QueueError::Corrupt`] when the schema is newer than
/// this build.
pub fn migrate(client: &mut Client, s: &str) -> Result<Vec<i32>, QueueError> {
    let lock = advisory_key(s, "migrate");
    let mut applied = Vec::new();
    for version in 1..=SCHEMA_VERSION {
        let Some(sql) = migration(version, s) else {
            continue;
        };
        let mut tx = client.transaction().map_err(db_error)?;
        tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&lock])
            .map_err(db_error)?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.schema_version (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now());"
        ))
        .map_err(db_error)?;
        let newest: Option<i32> = tx
            .query_one(&format!("SELECT max(version) FROM {s}.schema_version"), &[])
            .map_err(db_error)?
            .get(0);
        if let Some(n) = newest
            && n > SCHEMA_VERSION
        {
            return Err(QueueError::Corrupt {
                id: format!("{s}.schema_version"),
                reason: format!(
                    "the schema is at version {n}; this qmail-dispatcher knows up to \
                     {SCHEMA_VERSION} (upgrade it)"
                ),
            });
        }
        if newest.unwrap_or(0) >= version {
            tx.commit().map_err(db_error)?;
            continue;
        }
        tx.batch_execute(&sql).map_err(|e| {
            QueueError::Unavailable(format!("migration {version} of schema {s}: {}", msg(&e)))
        })?;
        tx.execute(
            &format!("INSERT INTO {s}.schema_version (version) VALUES ($1)"),
            &[&version],
        )
        .map_err(db_error)?;
        tx.commit().map_err(db_error)?;
        applied.push(version);
    }
    Ok(applied)
}

/// The version the schema `s` is at (0: not created).
///
/// # Errors
/// [`QueueError::Unavailable`].
pub fn version(client: &mut Client, s: &str) -> Result<i32, QueueError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{s}.schema_version")],
        )
        .map_err(db_error)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let v: Option<i32> = client
        .query_one(&format!("SELECT max(version) FROM {s}.schema_version"), &[])
        .map_err(db_error)?
        .get(0);
    Ok(v.unwrap_or(0))
}

fn msg(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_owned(),
        None => e.to_string(),
    }
}
