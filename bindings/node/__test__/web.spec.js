'use strict'
// Issue 15 (Node side), issue 10 item 9 and issue 16 item 4: every nodemailer message option
// honoured or refused by name, unpaired surrogates refused, the envelope override (no
// re-rendering: path attachments stream, the priority stays), fileMode, one-click unsubscribe,
// the transport's streaming, info shape, priority and verify(), and attachments swapped for a
// FIFO or /dev/zero. Every spooled message is read back with mailparser (independent).
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { Readable } = require('node:stream')
const nodemailer = require('nodemailer')
const { simpleParser } = require('mailparser')
const qmail = require('qmail')
const { tmpSpool, spoolFile, rejection, thrown } = require('./helpers')

const base = { from: 'Shop <shop@example.com>', to: 'a@example.org', subject: 's', text: 't' }

test('a nodemailer option without a place in the model is refused by name', async () => {
  const spool = tmpSpool()
  for (const [opt, value] of [
    ['amp', '<p>amp</p>'],
    ['icalEvent', { content: 'BEGIN:VCALENDAR' }],
    ['alternatives', [{ content: 'x', contentType: 'text/x-web-markdown' }]],
    ['dkim', { domainName: 'example.com' }],
    ['textEncoding', 'base64'],
    ['attachDataUrls', true],
    ['madeUp', 1],
  ]) {
    const e = thrown(() => qmail.submitSync({ ...base, [opt]: value }, { spool }))
    assert.equal(e.code, 'QMAIL_INVALID_ARGUMENT', opt)
    assert.equal(e.field, opt)
    const r = await rejection(qmail.submit({ ...base, [opt]: value }, { spool }))
    assert.equal(r.field, opt)
  }
  for (const [att, field] of [
    [{ content: 'x', headers: { 'X-A': '1' } }, 'attachments[0].headers'],
    [{ content: 'x', contentDisposition: 'inline' }, 'attachments[0].contentDisposition'],
    [{ content: 'x', contentDisposition: 'weird' }, 'attachments[0].contentDisposition'],
    [{ content: 'x', encoding: 'rot13' }, 'attachments[0].encoding'],
    [{ content: 'x', raw: 'x' }, 'attachments[0].raw'],
    [{ path: 'https://example.com/a.pdf' }, 'attachments[0].path'],
  ]) {
    const e = thrown(() => qmail.submitSync({ ...base, attachments: [att] }, { spool }))
    assert.equal(e.code, 'QMAIL_INVALID_ARGUMENT', field)
    assert.equal(e.field, field)
  }
  assert.ok(!fs.existsSync(path.join(spool, 'ready')) || fs.readdirSync(path.join(spool, 'ready')).length === 0)
})

test('unpaired surrogates are InvalidArgument naming the field, never U+FFFD', async () => {
  const spool = tmpSpool()
  for (const [msg, field] of [
    [{ ...base, subject: 'caf\uD800' }, 'subject'],
    [{ ...base, to: ['ok@example.org', { name: 'x\uDC00', address: 'b@example.org' }] }, 'to[1].name'],
    [{ ...base, headers: { 'X-Tag': '\uDFFF' } }, 'headers.X-Tag'],
    [{ ...base, attachments: [{ filename: 'a\uD83D.txt', content: 'x' }] }, 'attachments[0].filename'],
  ]) {
    const e = thrown(() => qmail.submitSync(msg, { spool }))
    assert.equal(e.code, 'QMAIL_INVALID_ARGUMENT')
    assert.equal(e.field, field)
    assert.match(e.message, /surrogate/)
  }
  // a paired surrogate (an emoji) is fine
  const f = spoolFile(spool, qmail.submitSync({ ...base, subject: 'ok \u{1F600}' }, { spool }))
  assert.equal((await simpleParser(f.body)).subject, 'ok \u{1F600}')
  const r = await rejection(qmail.submitRaw('From: a@example.com\r\nTo: b@example.org\r\nSubject: \uD800\r\n\r\nx', { spool }))
  assert.equal(r.field, 'message')
})

test('date, messageId, inReplyTo, references, list, encoding, contentDisposition, inline filename', async () => {
  const spool = tmpSpool()
  const png = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 1, 2, 3])
  const msg = {
    ...base,
    html: '<img src="cid:logo@x">',
    date: new Date(Date.UTC(2026, 0, 2, 3, 4, 5)),
    messageId: 'id-1@example.com',
    inReplyTo: '<p@example.com>',
    references: ['o@example.com', '<p@example.com>'],
    list: {
      unsubscribe: [{ url: 'https://example.com/u?x=1', comment: 'web' }, 'unsub@example.com'],
      help: 'https://example.com/help',
      id: { url: 'news.example.com', comment: 'News' },
    },
    attachments: [
      { filename: 'a.bin', content: png.toString('base64'), encoding: 'base64' },
      { filename: 'h.bin', content: png.toString('hex'), encoding: 'hex', contentDisposition: 'attachment' },
      { filename: 'img/logo.png', content: png, cid: 'logo@x', contentDisposition: 'inline' },
    ],
  }
  const id = await qmail.submit(msg, { spool })
  const f = spoolFile(spool, id)
  const p = await simpleParser(f.body)
  assert.equal(p.date.toISOString(), '2026-01-02T03:04:05.000Z')
  assert.equal(p.messageId, '<id-1@example.com>')
  assert.equal(p.inReplyTo, '<p@example.com>')
  assert.deepEqual(p.references, ['<o@example.com>', '<p@example.com>'])
  const text = f.body.toString('latin1')
  assert.match(text, /\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n/)
  // mailparser's own reading of the List-* fields
  assert.equal(p.headers.get('list').unsubscribe.url, 'https://example.com/u?x=1')
  assert.match(text, /List-Unsubscribe: <https:\/\/example\.com\/u\?x=1>,\s+<mailto:unsub@example\.com>/)
  assert.match(text, /List-Help: <https:\/\/example\.com\/help>/)
  assert.match(text, /List-Id: "News" <news\.example\.com>/)
  const byName = Object.fromEntries(p.attachments.map((a) => [a.filename, a]))
  assert.deepEqual(Object.keys(byName).sort(), ['a.bin', 'h.bin', 'logo.png'])
  assert.deepEqual(byName['a.bin'].content, png)
  assert.deepEqual(byName['h.bin'].content, png)
  assert.equal(byName['logo.png'].contentId, '<logo@x>')
  assert.ok(!text.includes('img/'))
  // bad values of these options name them
  for (const [m, field] of [
    [{ ...base, messageId: 'no at sign' }, 'messageId'],
    [{ ...base, inReplyTo: 'a b' }, 'inReplyTo'],
    [{ ...base, date: 'yesterday' }, 'date'],
    [{ ...base, list: { unsubscribe: 'ftp://example.com/u' } }, 'list.unsubscribe'],
    [{ ...base, list: { unsubscribe: ['https://a.example/u', 'https://b.example/u'] } }, 'list.unsubscribe'],
    [{ ...base, listUnsubscribe: { url: 'http://example.com/u' } }, 'listUnsubscribe.url'],
    [{ ...base, listUnsubscribe: { url: 'https://example.com/u', mailto: 'bad@' } }, 'listUnsubscribe.mailto'],
  ]) {
    const e = thrown(() => qmail.submitSync(m, { spool }))
    assert.equal(e.field, field, JSON.stringify(m))
  }
})

test('listUnsubscribe: one-click by default, plain with oneClick false', async () => {
  const spool = tmpSpool()
  const f = spoolFile(spool, await qmail.submit({ ...base, listUnsubscribe: { url: 'https://example.com/u/1', mailto: 'u@example.com' } }, { spool }))
  const p = await simpleParser(f.body)
  assert.match(f.body.toString(), /\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n/)
  assert.ok(p.headers.get('list').unsubscribe)
  const g = spoolFile(spool, await qmail.submit({ ...base, listUnsubscribe: { url: 'http://example.com/u', oneClick: false } }, { spool }))
  assert.ok(!g.body.toString().includes('List-Unsubscribe-Post'))
})

test('envelope override: a path attachment streams, the priority stays, headers unchanged', async () => {
  const spool = tmpSpool()
  const dir = tmpSpool('qmail-node-att-')
  const file = path.join(dir, 'big.bin')
  fs.writeFileSync(file, Buffer.alloc(3 << 20, 7))
  const msg = { ...base, cc: 'c@example.org', priority: 'highest', attachments: [{ path: file }], envelope: { from: 'b@example.com', to: 'x@example.net', cc: ['y@example.net'], bcc: 'z@example.net' } }
  const f = spoolFile(spool, await qmail.submit(msg, { spool }))
  assert.deepEqual(f.header.envelope.rcptTo, ['x@example.net', 'y@example.net', 'z@example.net'])
  assert.equal(f.header.envelope.mailFrom, 'b@example.com')
  assert.equal(f.header.priority, 1)
  const p = await simpleParser(f.body)
  assert.equal(p.to.text, 'a@example.org')
  assert.equal(p.attachments[0].content.length, 3 << 20)
})

test('fileMode: the spool file gets it; the default comes from the core', async () => {
  const spool = tmpSpool()
  const id = await qmail.submit(base, { spool, fileMode: 0o640 })
  assert.equal(fs.statSync(path.join(spool, 'ready', id)).mode & 0o777, 0o640)
  const e = thrown(() => qmail.submitSync(base, { fileMode: 0o640 }))
  assert.equal(e.field, 'fileMode')
  const id2 = qmail.submitSync(base, { spool })
  const mode = fs.statSync(path.join(spool, 'ready', id2)).mode & 0o777
  assert.ok(mode === 0o600 || mode === 0o640, mode.toString(8))
})

test('spool paths: relative or space-padded are refused naming spool', async () => {
  for (const bad of ['relative/spool', ' /tmp/x', '/tmp/x ']) {
    const e = thrown(() => qmail.submitSync(base, { spool: bad }))
    assert.equal(e.code, 'QMAIL_INVALID_ARGUMENT')
    assert.equal(e.field, 'spool')
  }
})

async function withDeadline(promise, ms) {
  let timer
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`still pending after ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([promise, deadline])
  } finally {
    clearTimeout(timer)
  }
}

for (const swap of ['fifo', 'dev-zero']) {
  test(`an attachment swapped for a ${swap} between options and submit fails at once`, async () => {
    const spool = tmpSpool()
    const dir = tmpSpool('qmail-node-swap-')
    const file = path.join(dir, 'report.pdf')
    if (swap === 'fifo') execFileSync('mkfifo', [file])
    else fs.symlinkSync('/dev/zero', file)
    const e = await withDeadline(rejection(qmail.submit({ ...base, attachments: [{ filename: 'r.pdf', content: 'x' }, { path: file }] }, { spool })), 10000)
    assert.equal(e.code, 'QMAIL_ATTACHMENT')
    assert.equal(e.field, 'attachments[1]')
    assert.ok(!fs.existsSync(path.join(spool, 'ready')) || fs.readdirSync(path.join(spool, 'ready')).length === 0)
  })
}

test('submitRawStream: pieces of any size, the same bytes as submitRaw', async () => {
  const spool = tmpSpool()
  const eml = Buffer.from('From: a@example.com\nTo: b@example.org\nX-Priority: 5\nSubject: s\n\n' + 'line\r\n'.repeat(5000))
  const whole = spoolFile(spool, await qmail.submitRaw(eml, { spool }))
  for (const size of [1, 3, 1000]) {
    const chunks = []
    for (let i = 0; i < eml.length; i += size) chunks.push(eml.subarray(i, i + size))
    const { queueId, messageId } = await qmail.submitRawStream(Readable.from(chunks), { spool })
    const f = spoolFile(spool, queueId)
    assert.equal(f.header.priority, 5)
    assert.match(messageId, /^<.+@example\.com>$/)
    // the same except the generated Message-ID and Date
    const strip = (b) => b.toString().replace(/^(Message-ID|Date): .*\r\n/gm, '')
    assert.equal(strip(f.body), strip(whole.body))
  }
  const e = await rejection(qmail.submitRawStream(Readable.from([Buffer.from('From: a@example.com\r\nTo: b@example.org\r\n')]), { spool }))
  assert.equal(e.code, 'QMAIL_INVALID_MESSAGE')
  assert.equal(fs.readdirSync(path.join(spool, 'tmp')).length, 0)
})

test('transport: info shape, priority to the spool, big attachments streamed in bounded memory', async () => {
  const spool = tmpSpool()
  const dir = tmpSpool('qmail-node-big-')
  const file = path.join(dir, 'big.bin')
  const size = 48 << 20
  // written in 1 MiB pieces, so that the file never sits in this process's memory
  const fd = fs.openSync(file, 'w')
  const piece = Buffer.alloc(1 << 20, 0x5a)
  for (let i = 0; i < 48; i++) fs.writeSync(fd, piece)
  fs.closeSync(fd)
  const t = nodemailer.createTransport(qmail.transport({ spool }))
  global.gc && global.gc()
  const before = process.memoryUsage().rss
  let peak = before
  const sampler = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss)
  }, 5)
  const info = await t.sendMail({ from: 'a@example.com', to: ['b@example.org', 'c@example.org'], bcc: 'h@example.net', subject: 'big', text: 'x', priority: 'high', attachments: [{ path: file }] })
  clearInterval(sampler)
  assert.deepEqual(info.accepted, ['b@example.org', 'c@example.org', 'h@example.net'])
  assert.deepEqual(info.rejected, [])
  assert.deepEqual(info.pending, [])
  assert.deepEqual(info.envelope, { from: 'a@example.com', to: ['b@example.org', 'c@example.org', 'h@example.net'] })
  assert.match(info.messageId, /^<.+>$/)
  assert.equal(info.response, `250 queued as ${info.queueId}`)
  const f = spoolFile(spool, info.queueId)
  assert.equal(f.header.priority, 2)
  // the base64 of the attachment alone is 65 MiB: holding the message would show in the RSS
  const grew = (peak - before) / (1 << 20)
  assert.ok(grew < 40, `RSS grew by ${grew.toFixed(1)} MiB while spooling a 48 MiB attachment`)
  assert.ok(f.body.length > size * 1.3)
})

test('transport verify(): true for a writable spool, QMAIL_SPOOL_UNAVAILABLE naming it otherwise', async () => {
  const spool = tmpSpool()
  fs.mkdirSync(path.join(spool, 'tmp'), { recursive: true })
  const t = nodemailer.createTransport(qmail.transport({ spool }))
  assert.equal(await t.verify(), true)
  const ok = await new Promise((resolve, reject) => qmail.transport({ spool }).verify((err, success) => (err ? reject(err) : resolve(success))))
  assert.equal(ok, true)
  if (process.getuid() !== 0) {
    fs.chmodSync(path.join(spool, 'tmp'), 0o500)
    const e = await rejection(qmail.transport({ spool }).verify())
    assert.equal(e.code, 'QMAIL_SPOOL_UNAVAILABLE')
    fs.chmodSync(path.join(spool, 'tmp'), 0o700)
  }
  const blocker = path.join(spool, 'file')
  fs.writeFileSync(blocker, 'x')
  const e = await rejection(qmail.transport({ spool: blocker }).verify())
  assert.equal(e.code, 'QMAIL_SPOOL_UNAVAILABLE')
  assert.equal(e.field, 'spool')
})
