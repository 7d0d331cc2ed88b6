// The dispatcher's web console in a real browser (Debian's chromium, driven by playwright-core):
// a real dispatcher serves a real spool whose messages are deferred (the relay refuses
// connections); the test clicks list -> message -> hold -> release and checks, after each
// click, that the spool file moved. Screenshots go to $QMAIL_CONSOLE_ARTIFACTS (target/console/).
//
// Environment (set by scripts/test.d/75-console.sh):
//   QMAIL_DISPATCHER  the qmail-dispatcher binary
//   QMAIL_BENCH_TOOL  the bench_tool example (fills a spool)
//   QMAIL_CONSOLE_ARTIFACTS  where screenshots go
//   CHROMIUM          the browser (default /usr/bin/chromium)
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { freePort, openBrowser, until } from "./helpers.mjs";
import { chromium } from "playwright-core";

const BIN = process.env.QMAIL_DISPATCHER;
const FILL = process.env.QMAIL_BENCH_TOOL;
const ART = process.env.QMAIL_CONSOLE_ARTIFACTS || path.resolve("../../target/console");
const BROWSER = process.env.CHROMIUM || "/usr/bin/chromium";
const TOKEN = "console-test-token-0123456789";

let dir, spool, port, dispatcher, context, page;
const pageErrors = [];

async function api(p) {
  const r = await fetch(`http://127.0.0.1:${port}${p}`);
  return r.json();
}

function where(id) {
  for (const d of ["ready", "deferred", "hold", "failed", "scheduled"]) {
    if (fs.existsSync(path.join(spool, d, id))) return d;
  }
  const active = fs.readdirSync(path.join(spool, "active")).find((n) => n.startsWith(`${id}+`));
  return active ? "active" : null;
}

async function shot(name) {
  await page.screenshot({ path: path.join(ART, `${name}.png`), fullPage: true });
}

before(async () => {
  assert.ok(BIN && fs.existsSync(BIN), `QMAIL_DISPATCHER=${BIN} is not a binary`);
  assert.ok(FILL && fs.existsSync(FILL), `QMAIL_BENCH_TOOL=${FILL} is not a binary`);
  fs.mkdirSync(ART, { recursive: true });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "qmail-console-"));
  spool = path.join(dir, "spool");
  execFileSync(FILL, ["fill", spool, "3", "2000"]);
  port = await freePort();
  const closed = await freePort(); // nothing listens: every attempt is "connection refused"
  const cfg = path.join(dir, "c.toml");
  fs.writeFileSync(cfg, [
    `spools = [${JSON.stringify(spool)}]`,
    "workers = 2",
    'ehlo_name = "console.test"',
    "durable = false",
    "rescan_ms = 300",
    `delivery_log = ${JSON.stringify(path.join(dir, "delivery.log"))}`,
    "[retry]", "first_secs = 3600", "jitter = 0.0",
    "[http]", `listen = "127.0.0.1:${port}"`, `token = "${TOKEN}"`,
    "[[relay]]", `url = "smtp://127.0.0.1:${closed}?tls=none&name=closed-relay"`, "cooldown_secs = 0",
    "",
  ].join("\n"));
  dispatcher = spawn(BIN, ["--config", cfg, "run"], {
    env: { ...process.env, QMAIL_LOG: "warn" },
    stdio: ["ignore", "inherit", "inherit"],
  });
  await until("three deferred messages", async () => {
    const r = await api("/api/v1/messages?state=deferred");
    return r.messages.length === 3;
  });
  ({ context, page } = await openBrowser(chromium, BROWSER, path.join(dir, "profile"), pageErrors));
});

after(async () => {
  if (context) await context.close();
  if (dispatcher) {
    dispatcher.kill("SIGTERM");
    await new Promise((r) => dispatcher.once("exit", r));
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test("list -> message -> hold -> release, the spool follows", async () => {
  try {
    await clickThrough();
  } catch (e) {
    await shot("99-failure").catch(() => {});
    throw e;
  }
});

async function clickThrough() {
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.waitForSelector("body[data-ready='1']");
  // counts per state and the deferred list with reasons
  const deferred = page.locator(".count[data-state='deferred'] b");
  assert.equal(await deferred.textContent(), "3");
  const rows = page.locator("#messages tbody tr[data-id]");
  assert.equal(await rows.count(), 3);
  const reason = await rows.first().locator("td.reply").textContent();
  assert.match(reason, /refused|connect/i, reason);
  // the chart has bars for the deferrals of the last hour
  await page.waitForSelector("#chart rect.deferred");
  await shot("01-overview");

  // one message: its timeline
  const id = await rows.first().getAttribute("data-id");
  await rows.first().locator("a.msg-link").click();
  await page.waitForSelector("#detail:not([hidden])");
  assert.equal(await page.locator("#detail-id").textContent(), id);
  assert.equal(await page.locator("#detail-state").textContent(), "deferred");
  const timeline = await page.locator("#timeline").textContent();
  assert.match(timeline, /attempt 1 via closed-relay/, timeline);
  assert.match(timeline, /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(/, "RFC 3339 and relative times");
  assert.equal(await page.locator("#btn-release").isDisabled(), true);
  await shot("02-message");

  // without the token: refused, nothing moves
  await page.click("#btn-hold");
  await page.waitForSelector("#flash.error");
  assert.match(await page.locator("#flash").textContent(), /refused/);
  assert.equal(where(id), "deferred");

  // hold
  await page.fill("#token", TOKEN);
  await page.click("#btn-hold");
  await page.waitForFunction(() => document.querySelector("#detail-state").textContent === "held");
  assert.equal(where(id), "hold", "the spool file is in hold/");
  assert.equal(await page.locator(".count[data-state='hold'] b").textContent(), "1");
  assert.equal(await page.locator("#btn-release").isDisabled(), false);
  await shot("03-held");

  // release: back to deferred (its retry time is an hour ahead)
  await page.click("#btn-release");
  await page.waitForFunction(() => document.querySelector("#detail-state").textContent === "deferred");
  assert.equal(where(id), "deferred", "the spool file is back in deferred/");
  assert.equal(await page.locator(".count[data-state='hold'] b").textContent(), "0");
  await shot("04-released");

  // search by recipient (bench_tool fills every message to the same one) and by Message-ID
  const m = (await api(`/api/v1/messages/${id}`)).message;
  await page.selectOption("#state-filter", "held");
  await page.waitForFunction(() => document.querySelectorAll("#messages tbody tr[data-id]").length === 0);
  await page.fill("#q-rcpt", m.rcpt_to[0]);
  await page.click("#search button[type='submit']");
  await page.waitForFunction(() => document.querySelectorAll("#messages tbody tr[data-id]").length === 3);
  await page.fill("#q-rcpt", "");
  await page.fill("#q-mid", m.message_id);
  await page.click("#search button[type='submit']");
  await page.waitForFunction(() => document.querySelectorAll("#found li[data-id]").length === 1);
  assert.equal(await page.locator("#found li[data-id]").getAttribute("data-id"), id);
  await shot("05-search");
  assert.deepEqual(pageErrors, [], "no script error in the page");
}
