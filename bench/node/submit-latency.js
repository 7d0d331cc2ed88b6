'use strict'
// Submit latency of the qmail Node binding beside nodemailer's pooled SMTP transport sending
// the same 2 KiB message to a local Postfix, in the same run.
//
//   node bench/node/submit-latency.js --port PORT --maildir DIR [--spool DIR] [--n 2000]
//        [--warmup 200] [--rounds 4] [--concurrency 16]
//
// Run it through bench/node/run.sh, which builds the release addon and starts the Postfix.
// Each figure is the time from the call until the message is safe: for qmail, written and
// fsynced into the spool (file and directory); for SMTP, Postfix's 250 reply to the final dot
// (Postfix has then fsynced its own queue file). One message at a time (latency), then 16 in
// flight (throughput). The paths take turns in blocks (`--rounds` blocks of n/rounds messages
// each, the order rotating) so that load from elsewhere on the machine falls on all of them
// alike; before each block the test Postfix is let finish delivering what it accepted (its
// Maildir holds every message), so its background work is not counted against another path.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { parseArgs } = require('node:util')
const nodemailer = require('../../bindings/node/node_modules/nodemailer')
const qmail = require('../../bindings/node')

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    maildir: { type: 'string' },
    rounds: { type: 'string', default: '4' },
    spool: { type: 'string' },
    n: { type: 'string', default: '2000' },
    warmup: { type: 'string', default: '200' },
    concurrency: { type: 'string', default: '16' },
    json: { type: 'string' },
  },
})
const N = Number(args.n)
const WARMUP = Number(args.warmup)
const CONCURRENCY = Number(args.concurrency)
const ROUNDS = Number(args.rounds)
const spool = args.spool || fs.mkdtempSync(path.join(os.tmpdir(), 'qmail-bench-node-'))

// the message: 2 KiB of text body, same options for every path
const line = 'The quick brown fox jumps over the lazy dog, 0123456789 and back again.\n' // 73 bytes
const message = {
  from: 'Shop <noreply@example.com>',
  to: 'Customer <customer@example.org>',
  subject: 'Your order 42 has shipped',
  text: line.repeat(29).slice(0, 2048),
}

function stats(samples) {
  const s = [...samples].sort((a, b) => a - b)
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))]
  const mean = s.reduce((a, b) => a + b, 0) / s.length
  return { n: s.length, mean, p50: q(0.5), p90: q(0.9), p99: q(0.99), max: s[s.length - 1] }
}

let smtpSent = 0

/** Waits until the test Postfix has delivered every message it accepted (at most 60 s). */
async function postfixIdle() {
  const deadline = Date.now() + 60000
  while (fs.readdirSync(args.maildir).length < smtpSent && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20))
  }
}

/** Runs `count` messages of each path per block, the paths rotating, ROUNDS blocks each. */
async function blocks(paths, count, measure) {
  const out = paths.map(() => [])
  for (let r = 0; r < ROUNDS; r++) {
    for (let k = 0; k < paths.length; k++) {
      const p = (r + k) % paths.length
      await postfixIdle()
      out[p].push(await measure(paths[p][1], count))
      if (paths[p][0].includes('SMTP')) smtpSent += count
    }
  }
  return out
}

/** One message at a time; ms per message. */
async function latency(paths) {
  for (const [name, once] of paths) {
    for (let i = 0; i < WARMUP; i++) await once()
    if (name.includes('SMTP')) smtpSent += WARMUP
  }
  const per = await blocks(paths, Math.ceil(N / ROUNDS), async (once, count) => {
    const samples = []
    for (let i = 0; i < count; i++) {
      const t0 = process.hrtime.bigint()
      await once()
      samples.push(Number(process.hrtime.bigint() - t0) / 1e6)
    }
    return samples
  })
  return paths.map(([name], p) => ({ name, ...stats(per[p].flat()) }))
}

/** CONCURRENCY messages in flight; messages per second. */
async function throughput(paths) {
  const count = Math.ceil(N / ROUNDS)
  const per = await blocks(paths, count, async (once) => {
    let next = 0
    const t0 = process.hrtime.bigint()
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next++ < count) await once()
      }),
    )
    return Number(process.hrtime.bigint() - t0) / 1e9
  })
  return paths.map(([name], p) => ({ name, perSecond: (count * ROUNDS) / per[p].reduce((x, y) => x + y, 0) }))
}

async function main() {
  const smtp = nodemailer.createTransport({
    host: '127.0.0.1',
    port: Number(args.port),
    secure: false,
    ignoreTLS: true,
    pool: true,
    maxConnections: CONCURRENCY,
    maxMessages: Infinity,
  })
  const viaQmail = nodemailer.createTransport(qmail.transport({ spool }))
  // the floor any durable spool pays on this disk: the same commit steps, from JS, no MIME
  const floor = path.join(spool, 'floor')
  for (const d of ['tmp', 'ready']) fs.mkdirSync(path.join(floor, d), { recursive: true })
  const payload = Buffer.alloc(2400, 'x')
  let seq = 0
  const commitFloor = async () => {
    const name = `f${seq++}`
    const tmp = path.join(floor, 'tmp', name)
    const fd = fs.openSync(tmp, 'wx', 0o600)
    fs.writeSync(fd, payload)
    fs.fsyncSync(fd)
    fs.closeSync(fd)
    fs.renameSync(tmp, path.join(floor, 'ready', name))
    const dir = fs.openSync(path.join(floor, 'ready'), 'r')
    fs.fsyncSync(dir)
    fs.closeSync(dir)
  }
  const paths = [
    ['qmail submit (durable, Promise)', () => qmail.submit(message, { spool })],
    ['qmail submitSync (durable)', async () => qmail.submitSync(message, { spool })],
    ['nodemailer + qmail.transport (durable)', () => viaQmail.sendMail(message)],
    ['nodemailer pooled SMTP → Postfix', () => smtp.sendMail(message)],
    ['(floor: write+fsync+rename+fsync dir)', commitFloor],
  ]
  const results = { n: N, concurrency: CONCURRENCY, messageBytes: message.text.length, latency: [], throughput: [] }
  results.latency = await latency(paths)
  results.throughput = await throughput(paths.filter(([n]) => !n.includes('submitSync') && !n.includes('floor')))
  smtp.close()

  const ms = (x) => x.toFixed(3).padStart(8)
  console.log(`latency, one at a time (${N} messages of ${results.messageBytes} B text, after ${WARMUP} warm-up), ms:`)
  console.log(`${'path'.padEnd(42)}     mean      p50      p90      p99`)
  for (const r of results.latency) console.log(`${r.name.padEnd(42)} ${ms(r.mean)} ${ms(r.p50)} ${ms(r.p90)} ${ms(r.p99)}`)
  console.log(`\nthroughput, ${CONCURRENCY} in flight, messages/s:`)
  for (const r of results.throughput) console.log(`${r.name.padEnd(42)} ${r.perSecond.toFixed(0).padStart(8)}`)
  const q = results.latency[0]
  const s = results.latency[3]
  console.log(`\nqmail submit vs pooled SMTP: ${(s.p50 / q.p50).toFixed(1)}× faster at p50, ${(s.mean / q.mean).toFixed(1)}× on the mean`)
  if (args.json) fs.writeFileSync(args.json, JSON.stringify(results, null, 2))
  if (!args.spool) fs.rmSync(spool, { recursive: true, force: true })
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
