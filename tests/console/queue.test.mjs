// The dispatcher's web console in a real browser (Debian's chromium, driven by playwright-core)
// over a PostgreSQL queue: a private postgres (started as qmail-dispatch/tests/pg_common/mod.rs
// does), `queue init`, a spool filled by bench_tool and `forward --drain`ed into the queue, then
// `run --queue` serving it with a relay that refuses connections (every row deferred, the next
// retry an hour away). The test clicks list -> message -> hold -> release -> delete and checks,
// after each click, the row in the database (`show --json`). Screenshots go to
// $QMAIL_CONSOLE_ARTIFACTS (target/console/queue-*.png).
//
// Environment (set by scripts/test.d/75-console.sh):
//   QMAIL_DISPATCHER  the qmail-dispatcher binary
//   QMAIL_BENCH_TOOL  the bench_tool example (fills a spool)
//   QMAIL_CONSOLE_ARTIFACTS  where screenshots go
//   QMAIL_CONSOLE_PG  "skip": PostgreSQL could not be installed (the test is skipped, loudly)
//   QMAIL_PG_REQUIRED "1": missing PostgreSQL binaries fail the test instead of skipping it
//   CHROMIUM          the browser (default /usr/bin/chromium)
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile, execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { freePort, openBrowser, until } from "./helpers.mjs";
import { chromium } from "playwright-core";

const BIN = process.env.QMAIL_DISPATCHER;
const FILL = process.env.QMAIL_BENCH_TOOL;
const ART = process.env.QMAIL_CONSOLE_ARTIFACTS || path.resolve("../../target/console");
const BROWSER = process.env.CHROMIUM || "/usr/bin/chromium";
const TOKEN = "queue-console-token-0123456789";
const N = 3;
const run = promisify(execFile);

let dir, pgDir, pg, pgPort, url, port, dispatcher, context, page;
const pageErrors = [];

// --- a private PostgreSQL, as qmail-dispatch/tests/pg_common/mod.rs starts one ---

/** The newest installed PostgreSQL's bin directory (/usr/lib/postgresql/N/bin), if any. */
function pgBinDir() {
  let best = null;
  let names = [];
  try {
    names = fs.readdirSync("/usr/lib/postgresql");
  } catch (_) {
    return null;
  }
  for (const n of names) {
    const v = Number.parseInt(n, 10) || 0;
    const b = path.join("/usr/lib/postgresql", n, "bin");
    if (fs.existsSync(path.join(b, "postgres")) && (!best || v > best.v)) best = { v, b };
  }
  return best && best.b;
}

const PGBIN = pgBinDir();
const SKIP = (() => {
  if (process.env.QMAIL_CONSOLE_PG === "skip") {
    return "PostgreSQL could not be installed (scripts/setup-postgres failed)";
  }
  if (!PGBIN) {
    if (process.env.QMAIL_PG_REQUIRED === "1") return null; // before() fails, naming why
    return "PostgreSQL is not installed (run scripts/setup-postgres; scripts/test.d/75-console.sh does)";
  }
  return null;
})();
if (SKIP) console.error(`queue.test.mjs: SKIPPED: ${SKIP}`);

const isRoot = () => process.getuid && process.getuid() === 0;

/** setpriv to the postgres user (as root; PostgreSQL refuses root) and a death signal. */
function asPg(prog, args) {
  const a = isRoot() ? ["--reuid=postgres", "--regid=postgres", "--clear-groups"] : [];
  return ["setpriv", [...a, "--pdeathsig", "INT", "--", prog, ...args]];
}

function chownPg(p) {
  if (isRoot()) execFileSync("chown", ["-R", "postgres:postgres", p]);
}

/** One initdb per machine and version (TMP/qmail-pg-template-V, shared with the Rust tests). */
function template() {
  const v = path.basename(path.dirname(PGBIN));
  const d = path.join(os.tmpdir(), `qmail-pg-template-${v}`);
  if (fs.existsSync(path.join(d, "data", "PG_VERSION"))) return d;
  const stage = path.join(os.tmpdir(), `qmail-pg-stage-${process.pid}`);
  fs.rmSync(stage, { recursive: true, force: true });
  fs.mkdirSync(stage, { recursive: true });
  chownPg(stage);
  const [cmd, args] = asPg(path.join(PGBIN, "initdb"), [
    "-D", path.join(stage, "data"), "-U", "qmail", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C",
  ]);
  execFileSync(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
  try {
    fs.renameSync(stage, d);
  } catch (_) {
    fs.rmSync(stage, { recursive: true, force: true }); // another test process was first
  }
  return d;
}

async function startPg() {
  pgDir = fs.mkdtempSync(path.join(os.tmpdir(), "qmail-pg-"));
  execFileSync("cp", ["-a", path.join(template(), "data"), path.join(pgDir, "data")]);
  chownPg(pgDir);
  pgPort = await freePort();
  const log = fs.openSync(path.join(pgDir, "postgres.log"), "w");
  const [cmd, args] = asPg(path.join(PGBIN, "postgres"), [
    "-D", path.join(pgDir, "data"), "-p", String(pgPort),
    "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
    "-c", "fsync=off", "-c", "full_page_writes=off",
    "-c", "max_connections=200", "-c", "shared_buffers=64MB",
  ]);
  pg = spawn(cmd, args, { stdio: ["ignore", "ignore", log] });
  fs.closeSync(log);
  url = `postgres://qmail@127.0.0.1:${pgPort}/postgres?connect_timeout=2`;
  const isready = path.join(PGBIN, "pg_isready");
  const gone = () => pg.exitCode !== null || pg.signalCode !== null;
  const how = await until("postgres to accept connections", () =>
    gone() ? "exited" : run(isready, ["-q", "-h", "127.0.0.1", "-p", String(pgPort), "-U", "qmail", "-d", "postgres"])
      .then(() => "ready"), 60000).catch((e) => `${e.message}`);
  assert.equal(how, "ready", `postgres: ${how}\n${pgLog()}`);
}

function pgLog() {
  try {
    return fs.readFileSync(path.join(pgDir, "postgres.log"), "utf8");
  } catch (_) {
    return "";
  }
}

/** SIGINT (fast shutdown), wait up to 10 s, then SIGKILL. */
async function stopPg() {
  if (!pg || pg.exitCode !== null || pg.signalCode !== null) return;
  const exited = new Promise((r) => pg.once("exit", r));
  pg.kill("SIGINT");
  const t = setTimeout(() => pg.kill("SIGKILL"), 10000);
  await exited;
  clearTimeout(t);
}

// --- helpers of this test (the shared ones: helpers.mjs) ---

async function api(p) {
  const r = await fetch(`http://127.0.0.1:${port}${p}`);
  return { code: r.status, body: await r.json() };
}

/** qmail-dispatcher --queue URL ARGS: its stdout. */
function cli(...args) {
  return execFileSync(BIN, ["--queue", url, ...args], {
    env: { ...process.env, QMAIL_LOG: "warn" },
    encoding: "utf8",
  });
}

/** The row state of `id` in the database (`show --json`): ready, deferred, held, deleted, … */
function rowState(id) {
  return JSON.parse(cli("show", id, "--json")).state;
}

/** The detail panel's fields: { name: value }. */
function fields() {
  return page.evaluate(() => {
    const o = {};
    for (const dt of document.querySelectorAll("#detail-fields dt")) o[dt.textContent] = dt.nextElementSibling.textContent;
    return o;
  });
}

async function shot(name) {
  await page.screenshot({ path: path.join(ART, `queue-${name}.png`), fullPage: true });
}

before(async () => {
  if (SKIP) return;
  assert.ok(BIN && fs.existsSync(BIN), `QMAIL_DISPATCHER=${BIN} is not a binary`);
  assert.ok(FILL && fs.existsSync(FILL), `QMAIL_BENCH_TOOL=${FILL} is not a binary`);
  assert.ok(PGBIN, "QMAIL_PG_REQUIRED=1 but no /usr/lib/postgresql/*/bin/postgres");
  fs.mkdirSync(ART, { recursive: true });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "qmail-console-queue-"));
  await startPg();

  // the queue, and N messages forwarded into it from a local spool
  cli("queue", "init");
  const spool = path.join(dir, "spool");
  execFileSync(FILL, ["fill", spool, String(N), "2000"]);
  const out = execFileSync(BIN, ["forward", "--drain", "--spool", spool, "--queue", url], {
    env: { ...process.env, QMAIL_LOG: "warn" },
    encoding: "utf8",
  });
  assert.match(out, new RegExp(`forwarded ${N}\\b`), out);

  port = await freePort();
  const closed = await freePort(); // nothing listens: every attempt is "connection refused"
  const cfg = path.join(dir, "c.toml");
  fs.writeFileSync(cfg, [
    "workers = 2",
    'ehlo_name = "console.test"',
    "durable = false",
    `delivery_log = ${JSON.stringify(path.join(dir, "delivery.log"))}`,
    "[retry]", "first_secs = 3600", "max_secs = 3600", "jitter = 0.0",
    "[http]", `listen = "127.0.0.1:${port}"`, `token = "${TOKEN}"`,
    "[[relay]]", `url = "smtp://127.0.0.1:${closed}?tls=none&name=closed-relay"`, "cooldown_secs = 0",
    "",
  ].join("\n"));
  dispatcher = spawn(BIN, ["--config", cfg, "run", "--queue", url], {
    env: { ...process.env, QMAIL_LOG: "warn" },
    stdio: ["ignore", "inherit", "inherit"],
  });
  await until(`${N} deferred rows`, async () => {
    const r = await api("/api/v1/messages?state=deferred");
    return r.body.messages.length === N;
  }, 30000);
  ({ context, page } = await openBrowser(chromium, BROWSER, path.join(dir, "profile"), pageErrors));
});

after(async () => {
  if (context) await context.close();
  if (dispatcher && dispatcher.exitCode === null && dispatcher.signalCode === null) {
    const exited = new Promise((r) => dispatcher.once("exit", r));
    dispatcher.kill("SIGTERM");
    await exited;
  }
  await stopPg();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
  if (pgDir) fs.rmSync(pgDir, { recursive: true, force: true });
});

test("a PostgreSQL queue: list -> message -> hold -> release -> delete, the rows follow",
  { skip: SKIP || false }, async () => {
    try {
      await clickThrough();
    } catch (e) {
      if (page) await shot("99-failure").catch(() => {});
      throw e;
    }
  });

async function clickThrough() {
  // the API says it serves a queue, not spools
  const h = await api("/healthz");
  assert.equal(h.code, 200, JSON.stringify(h.body));
  assert.equal(h.body.queue, "qmail", JSON.stringify(h.body));
  const s = (await api("/api/v1/status")).body;
  assert.deepEqual(s.spools, [], JSON.stringify(s));
  assert.equal(s.queues[0].queue, "qmail", JSON.stringify(s));
  assert.equal(s.queues[0].states.deferred.count, N, JSON.stringify(s));

  await page.goto(`http://127.0.0.1:${port}/`);
  await page.waitForSelector("body[data-ready='1']");
  // counts per state and the deferred list with reasons
  assert.equal(await page.locator(".count[data-state='deferred'] b").textContent(), String(N));
  assert.equal(await page.locator(".count[data-state='hold'] b").textContent(), "0");
  const rows = page.locator("#messages tbody tr[data-id]");
  assert.equal(await rows.count(), N);
  const reason = await rows.first().locator("td.reply").textContent();
  assert.match(reason, /refused|connect/i, reason);
  // the chart has bars for the deferrals of the last hour
  await page.waitForSelector("#chart rect.deferred");
  await shot("01-overview");

  // one message: the queue and its row state, its timeline
  const id = await rows.first().getAttribute("data-id");
  await rows.first().locator("a.msg-link").click();
  await page.waitForSelector("#detail:not([hidden])");
  assert.equal(await page.locator("#detail-id").textContent(), id);
  assert.equal(await page.locator("#detail-state").textContent(), "deferred");
  let f = await fields();
  assert.equal(f.queue, "qmail", JSON.stringify(f));
  assert.equal(f["row state"], "deferred", JSON.stringify(f));
  assert.equal(f.directory, undefined, "a queue has no directory");
  const timeline = await page.locator("#timeline").textContent();
  assert.match(timeline, /attempt 1 via closed-relay/, timeline);
  assert.match(timeline, /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(/, "RFC 3339 and relative times");
  assert.equal(await page.locator("#btn-release").isDisabled(), true);
  assert.equal(await page.locator("#btn-hold").isDisabled(), false);
  assert.equal(rowState(id), "deferred");
  await shot("02-message");

  // without the token: refused, the row does not change
  await page.click("#btn-hold");
  await page.waitForSelector("#flash.error");
  assert.match(await page.locator("#flash").textContent(), /refused/);
  assert.equal(rowState(id), "deferred");

  // hold
  await page.fill("#token", TOKEN);
  await page.click("#btn-hold");
  await page.waitForFunction(() => document.querySelector("#detail-state").textContent === "held");
  assert.equal(rowState(id), "held", "the row is held in the database");
  f = await fields();
  assert.equal(f["row state"], "held", JSON.stringify(f));
  assert.equal(await page.locator(".count[data-state='hold'] b").textContent(), "1");
  assert.equal(await page.locator(".count[data-state='deferred'] b").textContent(), String(N - 1));
  assert.equal(await page.locator("#btn-release").isDisabled(), false);
  assert.equal(await page.locator("#btn-hold").isDisabled(), true);
  await shot("03-held");

  // release: back to deferred (its retry time is an hour ahead)
  await page.click("#btn-release");
  await page.waitForFunction(() => document.querySelector("#detail-state").textContent === "deferred");
  assert.equal(rowState(id), "deferred", "the row is deferred again in the database");
  assert.equal(await page.locator(".count[data-state='hold'] b").textContent(), "0");
  assert.equal(await page.locator(".count[data-state='deferred'] b").textContent(), String(N));
  await shot("04-released");

  // delete asks first: dismissed, nothing happens
  const dismissed = new Promise((resolve) => page.once("dialog", async (d) => {
    await d.dismiss();
    resolve(d.message());
  }));
  await page.click("#btn-delete");
  assert.match(await dismissed, new RegExp(`Delete ${id}\\?`));
  assert.equal(await page.locator("#detail").isHidden(), false);
  assert.equal(rowState(id), "deferred", "a dismissed confirm deletes nothing");

  // delete, accepted: the detail closes, the row is a tombstone
  const accepted = new Promise((resolve) => page.once("dialog", async (d) => {
    await d.accept();
    resolve(d.message());
  }));
  await page.click("#btn-delete");
  assert.match(await accepted, new RegExp(`Delete ${id}\\?`));
  await page.waitForSelector("#detail", { state: "hidden" });
  assert.match(await page.locator("#flash").textContent(), new RegExp(`${id}: delete done`));
  assert.equal(rowState(id), "deleted", "the row is a tombstone in the database");
  await page.waitForFunction((n) => document.querySelectorAll("#messages tbody tr[data-id]").length === n, N - 1);
  assert.equal(await page.locator(`#messages tbody tr[data-id='${id}']`).count(), 0);
  assert.equal(await page.locator(".count[data-state='deferred'] b").textContent(), String(N - 1));
  await shot("05-deleted");

  // "all" lists the live rows, not the tombstone
  await page.selectOption("#state-filter", "");
  await page.waitForFunction((n) => document.querySelectorAll("#messages tbody tr[data-id]").length === n, N - 1);

  // the tombstone opened by its link (#ID): nothing can be done to it
  await page.goto(`http://127.0.0.1:${port}/?tombstone#${id}`);
  await page.waitForSelector("#detail:not([hidden])");
  assert.equal(await page.locator("#detail-id").textContent(), id);
  f = await fields();
  assert.equal(f.queue, "qmail", JSON.stringify(f));
  assert.equal(f["row state"], "deleted", JSON.stringify(f));
  assert.equal(await page.locator("#detail-state").textContent(), "deleted", "the badge says deleted");
  assert.equal(f.reason, "deleted by an operator", JSON.stringify(f));
  assert.equal(f.failed, undefined, "a deleted message is not called failed");
  for (const b of ["retry", "hold", "release", "requeue", "delete"]) {
    assert.equal(await page.locator(`#btn-${b}`).isDisabled(), true, `${b} on a tombstone`);
  }
  await shot("06-tombstone");
  assert.deepEqual(pageErrors, [], "no script error in the page");
}
