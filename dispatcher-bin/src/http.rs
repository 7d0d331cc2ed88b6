//! The dispatcher's HTTP listener (`--http ADDR`, `[http] listen`; `--metrics ADDR` is the
//! same): Prometheus metrics, a health check, a JSON API and the web console.
//!
//! | method, path | what |
//! | --- | --- |
//! | `GET /metrics` | OpenMetrics text (`qmail_dispatch::metrics`) |
//! | `GET /healthz` | `200 {"status":"ok",...}` while every spool is readable, else `503` |
//! | `GET /api/v1/status` | per spool: counts per state; the last hour per minute |
//! | `GET /api/v1/messages?state=&rcpt=&from=&older=&limit=` | the queue (as `list --json`; `limit` 500 by default, at most [`LIST_MAX`]) |
//! | `GET /api/v1/messages/ID` | one message: envelope, state, attempt history |
//! | `GET /api/v1/find?rcpt=&message_id=` | delivery-log search (as `find --json`) |
//! | `POST /api/v1/messages/ID/{retry,hold,release,requeue}` | actions (token) |
//! | `DELETE /api/v1/messages/ID` | delete (token; never a message in flight) |
//! | `GET /` | the console (files embedded in the binary) |
//!
//! A dispatcher of a PostgreSQL queue (`run --queue`) serves the same endpoints over the
//! queue's rows (`qmail_dispatch::queue::postgres::admin`, the rules of `list`/`show`/`hold`/
//! … `--queue`): `/healthz` is `200` while the database answers a `SELECT 1`;
//! `/api/v1/status` gives `queues` (the schema, its live leases, counts per row state) in
//! place of `spools`; message rows carry `queue` (the schema) in place of `spool`; the
//! actions are each one transaction, and a row in `active` is never touched (`409`,
//! `in flight`). A database that cannot be reached answers `503`.
//!
//! Actions need `Authorization: Bearer TOKEN` with the `[http] token` (or `token_file`) of
//! the configuration; without a configured token they are refused (403). A header token is
//! not sent by a browser on its own, so a page on another origin cannot act (no CSRF).
//! The listener is meant for loopback (the default address is 127.0.0.1).

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use qmail_core::spool::status::{ListFilter, State};
use qmail_dispatch::Metrics;
use qmail_dispatch::admin::{self, ops};
use qmail_dispatch::queue::QueueError;
use qmail_dispatch::queue::postgres::PgQueue;
use qmail_dispatch::queue::postgres::admin::{self as pg, PgAdminError};
use tiny_http::{Header, Method, Request, Response, Server};

/// What the listener serves; the configuration part is swapped when SIGHUP reloads.
#[derive(Debug, Clone)]
pub struct View {
    /// The process's counters (kept across reloads).
    pub metrics: Arc<Metrics>,
    /// The spools served (none for `run --queue`).
    pub spools: Vec<PathBuf>,
    /// The PostgreSQL queue served (`run --queue`): every endpoint reads and acts on it.
    pub queue: Option<PgQueue>,
    /// The schema of a queue not reached yet (`run --queue` waiting for its database at
    /// start): `/healthz` and the API answer 503 until it is.
    pub pending_queue: Option<String>,
    /// Why the pending queue's database has not been reached (the last error), shown by
    /// `/healthz` while [`View::pending_queue`] is set.
    pub pending_error: Option<Arc<Mutex<Option<String>>>>,
    /// The delivery log, if configured.
    pub delivery_log: Option<PathBuf>,
    /// The token actions need (none: actions refused).
    pub token: Option<String>,
    /// The instance id the admin actions write state files as.
    pub instance: String,
}

/// The shared view.
pub type Shown = Arc<Mutex<View>>;

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

type Resp = Response<std::io::Cursor<Vec<u8>>>;

fn text(code: u16, ctype: &str, body: impl Into<Vec<u8>>) -> Resp {
    let mut r = Response::from_data(body.into()).with_status_code(code);
    for (k, v) in [
        ("Content-Type", ctype),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        (
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
        ),
    ] {
        // constant ASCII names and values: always valid
        if let Ok(h) = Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            r.add_header(h);
        }
    }
    r
}

fn json(code: u16, v: &serde_json::Value) -> Resp {
    text(code, "application/json", v.to_string())
}

fn error(code: u16, msg: impl std::fmt::Display) -> Resp {
    json(code, &serde_json::json!({ "error": msg.to_string() }))
}

fn query(url: &str) -> (String, Vec<(String, String)>) {
    match url.split_once('?') {
        Some((p, q)) => (
            p.to_owned(),
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect(),
        ),
        None => (url.to_owned(), Vec::new()),
    }
}

fn get<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter()
        .find(|(x, _)| x == k)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// Compares without an early exit (the token is a secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(req: &Request, token: Option<&str>) -> Result<(), Resp> {
    let Some(token) = token else {
        return Err(error(
            403,
            "actions are disabled: set [http] token or token_file in the configuration",
        ));
    };
    let given = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str().to_owned())
        .unwrap_or_default();
    // the scheme name is case-insensitive (RFC 7235, section 2.1)
    let t = given
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t);
    match t {
        Some(t) if same(t.trim().as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err(error(
            401,
            "a valid Authorization: Bearer TOKEN is required",
        )),
    }
}

/// Rows `GET /api/v1/messages` returns without a `limit`.
pub const LIST_DEFAULT: usize = 500;
/// The largest `limit` of `GET /api/v1/messages` (400 above: the answer is built in memory).
pub const LIST_MAX: usize = 5000;

fn list_filter(q: &[(String, String)]) -> Result<ListFilter, String> {
    let states = match get(q, "state") {
        Some(s) => s
            .split(',')
            .map(|x| State::parse(x.trim()).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let num = |k: &str| -> Result<Option<i64>, String> {
        get(q, k)
            .map(|v| {
                v.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| format!("{k}={v:?} is not a whole number"))
            })
            .transpose()
    };
    let limit = num("limit")?.map_or(LIST_DEFAULT, |l| l as usize);
    if limit > LIST_MAX {
        // one answer is built in memory: a queue of a million rows must not be asked whole
        return Err(format!(
            "limit={limit} is more than {LIST_MAX}: narrow the list (state=, rcpt=, from=, older=)"
        ));
    }
    Ok(ListFilter {
        states,
        rcpt: get(q, "rcpt").map(str::to_owned),
        from: get(q, "from").map(str::to_owned),
        older_secs: num("older")?,
        limit: Some(limit),
    })
}

/// A queue command's error as an HTTP answer: a bad id 400, an unreachable database 503.
fn pg_error(q: &PgQueue, e: PgAdminError) -> Resp {
    let code = match &e {
        PgAdminError::BadId { .. } | PgAdminError::BadState { .. } => 400,
        PgAdminError::Queue(QueueError::Unavailable(_)) => 503,
        _ => 500,
    };
    error(code, format_args!("queue {}: {e}", q.schema()))
}

/// `503 {"status":"unavailable","version","queue","error"}`: the queue `schema`'s database
/// cannot be reached, has not been yet, or did not answer in time.
fn unavailable(schema: &str, error: String) -> Resp {
    json(
        503,
        &serde_json::json!({
            "status": "unavailable",
            "version": env!("CARGO_PKG_VERSION"),
            "queue": schema,
            "error": error,
        }),
    )
}

fn healthz(v: &View) -> Resp {
    if let Some(q) = &v.queue {
        return match q.ping() {
            Ok(()) => json(
                200,
                &serde_json::json!({
                    "status": "ok",
                    "version": env!("CARGO_PKG_VERSION"),
                    "queue": q.schema(),
                    "error": null,
                }),
            ),
            Err(e) => unavailable(q.schema(), e.to_string()),
        };
    }
    let bad: Vec<String> = v
        .spools
        .iter()
        .filter(|s| std::fs::read_dir(s).is_err())
        .map(|s| s.display().to_string())
        .collect();
    let body = serde_json::json!({
        "status": if bad.is_empty() { "ok" } else { "unavailable" },
        "version": env!("CARGO_PKG_VERSION"),
        "spools": v.spools,
        "unreadable": bad,
    });
    json(if bad.is_empty() { 200 } else { 503 }, &body)
}

/// `/api/v1/status` of a queue: its counts per row state ([`StateCount::label`]), its live
/// leases.
///
/// [`StateCount::label`]: qmail_dispatch::queue::postgres::StateCount::label
fn queue_status(v: &View, q: &PgQueue) -> Resp {
    let st = match q.status() {
        Ok(st) => st,
        Err(e) => return pg_error(q, PgAdminError::Queue(e)),
    };
    let mut counts = serde_json::Map::new();
    for c in &st.states {
        counts.insert(
            c.label().into(),
            serde_json::json!({ "count": c.count, "oldest_age_secs": c.oldest_age_secs }),
        );
    }
    json(
        200,
        &serde_json::json!({
            "spools": [],
            "queues": [{ "queue": st.schema, "leases": st.leases, "states": counts }],
            "history": v.metrics.history(),
            "now": qmail_core::spool::now_secs(),
            "actions": v.token.is_some(),
            "delivery_log": v.delivery_log.is_some(),
        }),
    )
}

fn status(v: &View) -> Resp {
    if let Some(q) = &v.queue {
        return queue_status(v, q);
    }
    let spools: Vec<serde_json::Value> = v
        .spools
        .iter()
        .map(|sp| {
            let st = admin::status(sp);
            let mut counts = serde_json::Map::new();
            for (name, c) in qmail_dispatch::metrics::state_counts(&st) {
                counts.insert(
                    name.into(),
                    serde_json::json!({ "count": c.count, "oldest_age_secs": c.oldest_age_secs }),
                );
            }
            serde_json::json!({ "spool": sp, "states": counts })
        })
        .collect();
    json(
        200,
        &serde_json::json!({
            "spools": spools,
            "history": v.metrics.history(),
            "now": qmail_core::spool::now_secs(),
            "actions": v.token.is_some(),
            "delivery_log": v.delivery_log.is_some(),
        }),
    )
}

fn messages(v: &View, q: &[(String, String)]) -> Resp {
    let f = match list_filter(q) {
        Ok(f) => f,
        Err(e) => return error(400, e),
    };
    if let Some(q) = &v.queue {
        return match pg::list(q, &f) {
            Ok(l) => {
                let rows: Vec<serde_json::Value> = l
                    .into_iter()
                    .map(|e| {
                        let mut j = serde_json::to_value(e).unwrap_or_default();
                        if let Some(o) = j.as_object_mut() {
                            o.insert("queue".into(), serde_json::json!(q.schema()));
                        }
                        j
                    })
                    .collect();
                json(200, &serde_json::json!({ "messages": rows }))
            }
            Err(e) => pg_error(q, e),
        };
    }
    let mut rows = Vec::new();
    for sp in &v.spools {
        match ops::list(sp, &f) {
            Ok(l) => rows.extend(l.into_iter().map(|e| {
                let mut j = serde_json::to_value(e).unwrap_or_default();
                if let Some(o) = j.as_object_mut() {
                    o.insert("spool".into(), serde_json::json!(sp));
                }
                j
            })),
            Err(e) => return error(500, format_args!("{}: {e}", sp.display())),
        }
    }
    json(200, &serde_json::json!({ "messages": rows }))
}

fn message(v: &View, id: &str) -> Resp {
    if qmail_core::QueueId::parse(id).is_err() {
        return error(400, format_args!("{id:?} is not a queue id"));
    }
    if let Some(q) = &v.queue {
        return queue_message(v, q, id);
    }
    for sp in &v.spools {
        match admin::show(sp, id) {
            Ok(m) => {
                let status = qmail_core::spool::status::status(sp, id, v.delivery_log.as_deref())
                    .ok()
                    .map(|s| serde_json::to_value(s).unwrap_or_default());
                return json(
                    200,
                    &serde_json::json!({ "message": m, "status": status, "spool": sp }),
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return error(500, e),
        }
    }
    // gone from the spools: the delivery log may know it
    if let Some(log) = &v.delivery_log
        && let Some(sp) = v.spools.first()
        && let Ok(s) = qmail_core::spool::status::status(sp, id, Some(log))
        && s.state != State::Unknown
    {
        let attempts = qmail_core::spool::status::read_log(log, |r| r.id == id).unwrap_or_default();
        return json(
            200,
            &serde_json::json!({ "message": null, "status": s, "log": attempts }),
        );
    }
    error(404, format_args!("no message {id}"))
}

/// `GET /api/v1/messages/ID` of a queue: the row (`show --queue`) and its status; a row
/// gone past the tombstone horizon is looked up in the delivery log.
fn queue_message(v: &View, q: &PgQueue, id: &str) -> Resp {
    let m = match pg::show_with_status(q, id) {
        Ok(m) => m,
        Err(e) => return pg_error(q, e),
    };
    if let Some((m, st)) = m {
        return json(
            200,
            &serde_json::json!({ "message": m, "status": st, "queue": q.schema() }),
        );
    }
    if let Some(log) = &v.delivery_log {
        let attempts = qmail_core::spool::status::read_log(log, |r| r.id == id).unwrap_or_default();
        if !attempts.is_empty() {
            return json(
                200,
                &serde_json::json!({
                    "message": null, "status": null, "log": attempts, "queue": q.schema()
                }),
            );
        }
    }
    error(404, format_args!("no message {id} in queue {}", q.schema()))
}

fn find(v: &View, q: &[(String, String)]) -> Resp {
    let Some(log) = &v.delivery_log else {
        return error(
            409,
            "no delivery log: set delivery_log in the configuration to search delivered messages",
        );
    };
    let (rcpt, mid) = (get(q, "rcpt"), get(q, "message_id"));
    if rcpt.is_none() && mid.is_none() {
        return error(400, "give rcpt= or message_id=");
    }
    match ops::find(log, rcpt, mid) {
        Ok(r) => json(200, &serde_json::json!({ "attempts": r })),
        Err(e) => error(500, e),
    }
}

/// One id's outcome of an action, a spool's or a queue's: done 200, not found 404, in
/// flight or in the wrong state 409.
fn id_outcome(o: Option<ops::IdOutcome>, id: &str) -> Resp {
    match o {
        Some(o) => {
            let code = match o.outcome {
                ops::Outcome::Done { .. } => 200,
                ops::Outcome::NotFound => 404,
                ops::Outcome::InFlight | ops::Outcome::WrongState { .. } => 409,
            };
            json(code, &serde_json::to_value(&o).unwrap_or_default())
        }
        None => error(404, format_args!("no message {id}")),
    }
}

fn action(v: &View, id: &str, what: &str) -> Resp {
    if qmail_core::QueueId::parse(id).is_err() {
        return error(400, format_args!("{id:?} is not a queue id"));
    }
    let ids = [id.to_owned()];
    if let Some(q) = &v.queue {
        let r = match what {
            "retry" => pg::retry(q, &ids),
            "requeue" => pg::requeue_failed(q, &ids),
            "hold" => pg::hold(q, &ids),
            "release" => pg::release(q, &ids),
            "delete" => pg::delete(q, &ids),
            _ => return error(404, format_args!("no action {what:?}")),
        };
        return match r {
            Ok(mut o) => id_outcome(o.pop(), id),
            Err(e) => pg_error(q, e),
        };
    }
    let Some(sp) = v.spools.iter().find(|sp| admin::locate(sp, id).is_some()) else {
        return error(404, format_args!("no message {id}"));
    };
    let moved = |r: std::io::Result<Vec<String>>, want: &str| match r {
        Ok(m) if m.iter().any(|x| x == id) => {
            json(200, &serde_json::json!({ "id": id, "outcome": "done" }))
        }
        Ok(_) => error(409, format_args!("{id} is not {want}")),
        Err(e) => error(500, e),
    };
    let outcome = |r: std::io::Result<Vec<ops::IdOutcome>>| match r {
        Ok(mut o) => id_outcome(o.pop(), id),
        Err(e) => error(500, e),
    };
    match what {
        "retry" => moved(admin::retry(sp, &ids, &v.instance), "deferred"),
        "requeue" => moved(admin::requeue_failed(sp, &ids, &v.instance), "failed"),
        "hold" => outcome(ops::hold(sp, &ids)),
        "release" => outcome(ops::release(sp, &ids)),
        "delete" => outcome(ops::delete(sp, &ids)),
        _ => error(404, format_args!("no action {what:?}")),
    }
}

/// How long a request that needs the queue's database waits for it before it answers 503.
/// The statement goes on in the background (a SIGSTOPped server keeps its connections open,
/// and the driver has no client-side query timeout): an action answered 503 this way may
/// still be committed later; look again.
pub const DB_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Requests waiting on the database at once (those past their deadline included); above it a
/// new one answers 503 at once, so a hung database cannot pile up threads.
pub const DB_MAX_WAITING: usize = 8;

static DB_WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs `f` (a request that reads or changes the queue) on a thread of its own and waits for
/// it at most [`DB_DEADLINE`]; `late` is the answer when it does not come in time.
fn within_deadline(
    f: impl FnOnce() -> Resp + Send + 'static,
    late: impl FnOnce(String) -> Resp,
) -> Resp {
    use std::sync::atomic::Ordering;
    if DB_WAITING.fetch_add(1, Ordering::SeqCst) >= DB_MAX_WAITING {
        DB_WAITING.fetch_sub(1, Ordering::SeqCst);
        return late(format!(
            "{DB_MAX_WAITING} requests are already waiting for the database"
        ));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("qmail-http-db".into())
        .spawn(move || {
            let r = f();
            DB_WAITING.fetch_sub(1, Ordering::SeqCst);
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        DB_WAITING.fetch_sub(1, Ordering::SeqCst);
        return late(format!("cannot start a thread: {e}"));
    }
    match rx.recv_timeout(DB_DEADLINE) {
        Ok(r) => r,
        Err(_) => late(format!(
            "the database did not answer within {} s",
            DB_DEADLINE.as_secs()
        )),
    }
}

/// On a loopback listener, the `Host` a request names must be loopback too: a page whose
/// DNS name was rebound to 127.0.0.1 would otherwise read the API (the queue's addresses).
fn host_allowed(req: &Request, listen: SocketAddr) -> bool {
    if !listen.ip().is_loopback() {
        return true;
    }
    let Some(h) = req.headers().iter().find(|h| h.field.equiv("Host")) else {
        // HTTP/1.0 without Host: a local tool, not a browser
        return true;
    };
    let host = h.value.as_str();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(n, _)| n)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn handle(shown: &Shown, listen: SocketAddr, mut req: Request) {
    let v = shown.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if !host_allowed(&req, listen) {
        let _ = req.respond(error(421, "this listener answers only to a loopback Host"));
        return;
    }
    let (path, q) = query(req.url());
    // bodies are not used: read (bounded) and drop what a client sends
    let mut sink = Vec::new();
    let _ = req.as_reader().take(64 * 1024).read_to_end(&mut sink);
    let m = req.method().clone();
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect();
    let first = segs.first().map(String::as_str).unwrap_or("");
    let resp = if let Some(schema) = &v.pending_queue
        && matches!(first, "api" | "healthz")
    {
        let why = v
            .pending_error
            .as_ref()
            .and_then(|e| e.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_else(|| "not tried yet".into());
        unavailable(
            schema,
            format!("queue {schema}: the database has not been reached yet: {why}"),
        )
    } else if let Some(refused) = needs_token(&m, &segs)
        .then(|| authorized(&req, v.token.as_deref()).err())
        .flatten()
    {
        refused
    } else if let Some(queue) = v.queue.clone()
        && matches!(first, "api" | "healthz" | "metrics")
    {
        // the queue's database may stop answering: never wait on it past the deadline
        let late_view = v.clone();
        let what = first.to_owned();
        let is_action = needs_token(&m, &segs);
        within_deadline(
            move || route(&v, &m, &segs, &path, &q),
            move |why| match what.as_str() {
                "metrics" => metrics_text(late_view.metrics.render_with(&late_view.spools, None)),
                _ if is_action => unavailable(
                    queue.schema(),
                    format!(
                        "queue {}: {why}; the action may still be committed: look again",
                        queue.schema()
                    ),
                ),
                _ => unavailable(queue.schema(), format!("queue {}: {why}", queue.schema())),
            },
        )
    } else {
        route(&v, &m, &segs, &path, &q)
    };
    if let Err(e) = req.respond(resp) {
        tracing::debug!(error = %e, "http: the client went away");
    }
}

/// Whether the request is an action (it needs the token).
fn needs_token(m: &Method, segs: &[String]) -> bool {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    matches!(
        (m, s.as_slice()),
        (Method::Post, ["api", "v1", "messages", _, _])
            | (Method::Delete, ["api", "v1", "messages", _])
    )
}

fn metrics_text(body: String) -> Resp {
    text(
        200,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body,
    )
}

/// The answer to an authorized request (actions were checked by [`needs_token`] first).
fn route(v: &View, m: &Method, segs: &[String], path: &str, q: &[(String, String)]) -> Resp {
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match (m, segs.as_slice()) {
        (Method::Get, ["metrics"]) => {
            metrics_text(v.metrics.render_with(&v.spools, v.queue.as_ref()))
        }
        (Method::Get, ["healthz"]) => healthz(v),
        (Method::Get, [""]) | (Method::Get, ["index.html"]) => {
            text(200, "text/html; charset=utf-8", INDEX_HTML)
        }
        (Method::Get, ["console.js"]) => text(200, "text/javascript; charset=utf-8", CONSOLE_JS),
        (Method::Get, ["console.css"]) => text(200, "text/css; charset=utf-8", CONSOLE_CSS),
        (Method::Get, ["api", "v1", "status"]) => status(v),
        (Method::Get, ["api", "v1", "messages"]) => messages(v, q),
        (Method::Get, ["api", "v1", "messages", id]) => message(v, id),
        (Method::Get, ["api", "v1", "find"]) => find(v, q),
        (Method::Post, ["api", "v1", "messages", id, what]) => action(v, id, what),
        (Method::Delete, ["api", "v1", "messages", id]) => action(v, id, "delete"),
        // a known path with another method
        (_, ["api", "v1", "status"])
        | (_, ["api", "v1", "messages"])
        | (_, ["api", "v1", "messages", _])
        | (_, ["api", "v1", "messages", _, _])
        | (_, ["api", "v1", "find"])
        | (_, ["metrics"])
        | (_, ["healthz"]) => error(405, format_args!("{m} {path}: not allowed")),
        _ => error(404, format_args!("{path}: not found")),
    }
}

/// Threads answering requests: a request stuck on a database that stopped answering (a
/// SIGSTOPped server keeps its TCP connections open) holds one; the others go on.
pub const HTTP_THREADS: usize = 4;

/// Binds `addr` and serves in [`HTTP_THREADS`] background threads.
///
/// # Errors
/// The address cannot be bound.
pub fn serve(addr: SocketAddr, shown: Shown) -> anyhow::Result<()> {
    let server =
        Server::http(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr} for http: {e}"))?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the http listener is not on loopback: put it behind a proxy with TLS");
    }
    tracing::info!(%addr, "http listener (metrics, api, console)");
    let server = Arc::new(server);
    for n in 0..HTTP_THREADS {
        let (server, shown) = (Arc::clone(&server), Arc::clone(&shown));
        std::thread::Builder::new()
            .name(format!("qmail-http-{n}"))
            .spawn(move || {
                for req in server.incoming_requests() {
                    handle(&shown, addr, req);
                }
            })?;
    }
    Ok(())
}
