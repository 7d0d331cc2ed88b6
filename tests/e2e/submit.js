// The Node initiator of the end-to-end test (tests/e2e/run.py starts it).
//
//   node submit.js HOST COUNT PHASE1 WORKDIR SPOOL_A SPOOL_B
//
// Submits COUNT messages into the default spools (QMAIL_SPOOL=A:B, spread round-robin by the
// core; every 10th message names its spool explicitly), four in five through the qmail API
// (`submit`, a few in flight at once) and one in five composed by nodemailer with qmail as its
// transport. Every third message has one or two attachments of random bytes. After PHASE1
// messages it writes WORKDIR/gate/js-HOST.waiting and waits (bounded) for WORKDIR/gate/go. One
// JSON line per message (with the SHA-256 of each attachment) goes to
// WORKDIR/manifest/js-HOST.jsonl once its submit resolved.
'use strict'

const crypto = require('node:crypto')
const fs = require('node:fs')
const path = require('node:path')
const binding = path.join(__dirname, '..', '..', 'bindings', 'node')
const qmail = require(binding)
const nodemailer = require(require.resolve('nodemailer', { paths: [binding] }))

const [host, countArg, phase1Arg, workdir, spoolA, spoolB] = process.argv.slice(2)
const count = Number(countArg)
const phase1 = Number(phase1Arg)
const IN_FLIGHT = 4

async function waitGo() {
  fs.writeFileSync(path.join(workdir, 'gate', `js-${host}.waiting`), '')
  const deadline = Date.now() + 600_000
  while (!fs.existsSync(path.join(workdir, 'gate', 'go'))) {
    if (Date.now() > deadline) throw new Error('no go after 10 minutes')
    await new Promise((r) => setTimeout(r, 100))
  }
}

function attSize() {
  const r = crypto.randomInt(4)
  return 1024 + crypto.randomInt(r === 0 ? 200 * 1024 : 24 * 1024)
}

const transporter = nodemailer.createTransport(qmail.transport({}))

async function one(i, out) {
  const id = `${host}-js-${String(i).padStart(4, '0')}`
  const from = ['Node Shop', `shop-js@${host}.example.com`]
  const to = [['Café Ünïcode', `js${i}@example.org`]]
  if (i % 4 === 3) to.push(['', `js${i}.b@example.net`])
  const cc = i % 3 === 1 ? [['Ops "Night" Team', `cc-js${i}@example.org`]] : []
  const bcc = i % 5 === 2 ? [`audit-js${i}@example.com`] : []
  const subject = i % 4 === 0 ? `Réservation ${id} confirmée ☕` : `Order ${id} from the Node shop`
  const text = `Hello,\nE2E-MARKER ${id}\n.a line that starts with a dot\n..two dots\n.\nend\n`
  const messageId = i % 2 === 0 ? `<${id}@e2e.qmail.test>` : null
  const spool = i % 10 === 5 ? [spoolA, spoolB][Math.floor(i / 10) % 2] : null
  const atts = []
  if (i % 3 === 0) {
    for (let k = 0; k < (i % 2 === 0 ? 2 : 1); k++) {
      atts.push({ filename: `js-${id}-${k}.bin`, contentType: k ? 'application/zip' : 'application/octet-stream', content: crypto.randomBytes(attSize()) })
    }
  }
  const addr = ([name, address]) => (name ? { name, address } : address)
  const headers = { 'X-E2E-Id': id, 'X-E2E-Host': host }
  let qid, api, mid = messageId
  if (i % 5 === 4) {
    api = 'nodemailer'
    const mail = {
      from: addr(from), to: to.map(addr), cc: cc.map(addr), bcc, subject, text, headers,
      attachments: atts.map((a) => ({ filename: a.filename, contentType: a.contentType, content: a.content })),
    }
    if (messageId) mail.messageId = messageId
    const t = spool ? nodemailer.createTransport(qmail.transport({ spool })) : transporter
    const info = await t.sendMail(mail)
    qid = info.queueId
    mid = info.messageId // nodemailer generates one when not given: now it is known too
  } else {
    api = 'qmail.submit'
    if (messageId) headers['Message-ID'] = messageId
    const msg = {
      from: addr(from), to: to.map(addr), subject, text, headers,
      attachments: atts.map((a) => ({ filename: a.filename, contentType: a.contentType, content: a.content })),
    }
    if (cc.length) msg.cc = cc.map(addr)
    if (bcc.length) msg.bcc = bcc
    if (i % 2) msg.html = '<p>Hello from <b>Node</b></p>'
    qid = spool ? await qmail.submit(msg, { spool }) : await qmail.submit(msg)
  }
  out.write(JSON.stringify({
    id, qid, host, lang: 'js', api, from, to, cc, bcc, subject, message_id: mid, spool,
    attachments: atts.map((a) => ({
      filename: a.filename, content_type: a.contentType, size: a.content.length,
      sha256: crypto.createHash('sha256').update(a.content).digest('hex'),
    })),
  }) + '\n')
}

async function main() {
  const out = fs.createWriteStream(path.join(workdir, 'manifest', `js-${host}.jsonl`))
  // a few submits in flight at once (a web server's concurrent requests), in phases
  async function range(lo, hi) {
    let next = lo
    const worker = async () => { while (next < hi) await one(next++, out) }
    await Promise.all(Array.from({ length: IN_FLIGHT }, worker))
  }
  await range(0, Math.min(phase1, count))
  await waitGo()
  await range(Math.min(phase1, count), count)
  await new Promise((resolve, reject) => out.end((err) => (err ? reject(err) : resolve())))
}

main().catch((e) => {
  console.error(`submit.js ${host}: ${e.code || ''} ${e.stack || e.message}`)
  process.exit(1)
})
