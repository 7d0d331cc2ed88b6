// Helpers the console tests share (console.test.mjs: a spool; queue.test.mjs: a queue).
import net from "node:net";

/** A free TCP port on 127.0.0.1 (bound, then released). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

/** Polls `fn` every 100 ms until it returns a truthy value (returned), or throws after `ms`. */
export async function until(what, fn, ms = 15000) {
  const t0 = Date.now();
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (_) { /* not yet */ }
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Headless Chromium (`browser`: its binary) with a profile under `dir`; page errors are pushed
 * onto `errors`. Returns `{ context, page }`.
 */
export async function openBrowser(chromium, browser, dir, errors) {
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: browser,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    viewport: { width: 1280, height: 900 },
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on("pageerror", (e) => errors.push(String(e)));
  return { context, page };
}
