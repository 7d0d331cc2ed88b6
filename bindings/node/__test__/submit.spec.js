'use strict'
// submit / submitSync: every option reaches the spool file, as the core renders it.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { simpleParser } = require('mailparser')
const qmail = require('qmail')
const { tmpSpool, spoolFile, headerSection, fieldNames, assertWireClean } = require('./helpers')

const base = {
  from: 'Shop <noreply@example.com>',
  to: 'customer@example.org',
  subject: 'Your order',
  text: 'Thanks!\nLine two',
}

test('submit resolves to the queue id of a durable spool file', async () => {
  const spool = tmpSpool()
  const pending = qmail.submit(base, { spool })
  assert.ok(pending instanceof Promise)
  const id = await pending
  assert.match(id, /^\d+\.\d{6}\.\d+\.\d+\.[0-9a-f]{16}\.[\w-]+$/)
  const f = spoolFile(spool, id)
  assert.equal(f.version, 1)
  assert.deepEqual(f.header.envelope.rcptTo, ['customer@example.org'])
  assert.equal(f.header.envelope.mailFrom, 'noreply@example.com')
  assert.equal(f.header.priority, 3)
  assert.equal(f.header.notBefore, null)
  assertWireClean(f.body)
  const m = await simpleParser(f.body)
  assert.equal(m.subject, 'Your order')
  assert.equal(m.text.trimEnd(), 'Thanks!\nLine two')
  assert.equal(m.messageId, f.header.messageId)
  assert.deepEqual(fs.readdirSync(path.join(spool, 'tmp')), [])
})

test('submitSync returns the queue id and writes the same message', async () => {
  const spool = tmpSpool()
  const id = qmail.submitSync(base, { spool })
  assert.equal(typeof id, 'string')
  const m = await simpleParser(spoolFile(spool, id).body)
  assert.equal(m.from.value[0].address, 'noreply@example.com')
  assert.equal(m.from.value[0].name, 'Shop')
})

test('addresses: strings, {name, address} objects, arrays; bcc only in the envelope', async () => {
  const spool = tmpSpool()
  const id = await qmail.submit(
    {
      from: { name: 'Shop', address: 'noreply@example.com' },
      sender: 'Robot <robot@example.com>',
      to: ['a@example.org', { name: 'Bé', address: 'b@example.org' }],
      cc: { address: 'c@example.org' },
      bcc: ['hidden@example.net', 'A@example.org'],
      replyTo: 'Support <help@example.com>',
      subject: 'x',
      text: 'x',
    },
    { spool },
  )
  const f = spoolFile(spool, id)
  // duplicates (case-insensitive) removed, order To, Cc, Bcc; MAIL FROM is the Sender
  assert.deepEqual(f.header.envelope.rcptTo, ['a@example.org', 'b@example.org', 'c@example.org', 'hidden@example.net'])
  assert.equal(f.header.envelope.mailFrom, 'robot@example.com')
  const head = headerSection(f.body)
  assert.ok(!head.includes('hidden@example.net'))
  assert.ok(!fieldNames(f.body).some((n) => n.toLowerCase() === 'bcc'))
  const m = await simpleParser(f.body)
  assert.deepEqual(
    m.to.value.map((a) => [a.name, a.address]),
    [
      ['', 'a@example.org'],
      ['Bé', 'b@example.org'],
    ],
  )
  assert.equal(m.cc.value[0].address, 'c@example.org')
  assert.equal(m.replyTo.value[0].address, 'help@example.com')
  assert.equal(m.headers.get('sender').value[0].address, 'robot@example.com')
})

test('headers: object (string or array values) and [{key, value}] forms, in order', async () => {
  const spool = tmpSpool()
  const id = await qmail.submit(
    { ...base, headers: { 'X-Campaign': 'spring', 'X-Tag': ['one', 'two'], 'Message-ID': '<fixed-7@example.com>' } },
    { spool },
  )
  const f = spoolFile(spool, id)
  const head = headerSection(f.body)
  assert.ok(head.includes('X-Campaign: spring\r\n'))
  assert.ok(head.indexOf('X-Tag: one\r\n') < head.indexOf('X-Tag: two\r\n'))
  assert.equal(f.header.messageId, '<fixed-7@example.com>')
  assert.equal(head.match(/^Message-ID:/gim).length, 1)
  const id2 = qmail.submitSync(
    {
      ...base,
      headers: [
        { key: 'X-B', value: '2' },
        { key: 'X-A', value: '1' },
      ],
    },
    { spool },
  )
  const head2 = headerSection(spoolFile(spool, id2).body)
  assert.ok(head2.indexOf('X-B: 2') < head2.indexOf('X-A: 1'))
})

test('priority: names and numbers reach the headers and the spool header', async () => {
  const spool = tmpSpool()
  for (const [p, n] of [
    ['high', 2],
    ['Highest', 1],
    [5, 5],
    ['4', 4],
    ['normal', 3],
  ]) {
    const f = spoolFile(spool, await qmail.submit({ ...base, priority: p }, { spool }))
    assert.equal(f.header.priority, n, `priority ${p}`)
    assert.match(headerSection(f.body), new RegExp(`\r\nX-Priority: ${n} `))
  }
})

test('attachments: path, Buffer, string, contentType, inline cid', async () => {
  const spool = tmpSpool()
  const file = path.join(spool, 'report.csv')
  fs.writeFileSync(file, 'a,b\n1,2\n')
  const png = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 1, 2, 255])
  const id = await qmail.submit(
    {
      ...base,
      html: '<p>Logo: <img src="cid:logo@shop"></p>',
      attachments: [
        { path: file },
        { filename: 'data.bin', content: Buffer.from([0, 1, 2, 250]) },
        { filename: 'note.txt', content: 'héllo', contentType: 'text/plain' },
        { path: file, filename: 'renamed.csv', contentType: 'application/x-custom' },
        { content: png, cid: 'logo@shop', contentType: 'image/png' },
      ],
    },
    { spool },
  )
  const m = await simpleParser(spoolFile(spool, id).body)
  const byName = Object.fromEntries(m.attachments.filter((a) => a.filename).map((a) => [a.filename, a]))
  assert.equal(byName['report.csv'].content.toString(), 'a,b\n1,2\n')
  assert.equal(byName['report.csv'].contentType, 'text/csv')
  assert.deepEqual([...byName['data.bin'].content], [0, 1, 2, 250])
  assert.equal(byName['data.bin'].contentType, 'application/octet-stream')
  assert.equal(byName['note.txt'].content.toString('utf8'), 'héllo')
  assert.equal(byName['renamed.csv'].contentType, 'application/x-custom')
  const inline = m.attachments.find((a) => a.cid === 'logo@shop')
  assert.ok(inline, 'inline part with its Content-ID')
  assert.deepEqual(inline.content, png)
  assert.equal(inline.contentType, 'image/png')
})

test('envelope: from and to override what the headers give', async () => {
  const spool = tmpSpool()
  const msg = { ...base, cc: 'cc@example.org', envelope: { from: 'bounces@example.com', to: ['x@example.net', 'y@example.net'] } }
  for (const id of [await qmail.submit(msg, { spool }), qmail.submitSync(msg, { spool })]) {
    const f = spoolFile(spool, id)
    assert.equal(f.header.envelope.mailFrom, 'bounces@example.com')
    assert.deepEqual(f.header.envelope.rcptTo, ['x@example.net', 'y@example.net'])
    const m = await simpleParser(f.body)
    assert.equal(m.to.value[0].address, 'customer@example.org')
    assert.equal(m.cc.value[0].address, 'cc@example.org')
  }
  // only `from`, the null reverse-path; only `to`, as a string
  const f = spoolFile(spool, await qmail.submit({ ...base, envelope: { from: '<>' } }, { spool }))
  assert.equal(f.header.envelope.mailFrom, '')
  assert.deepEqual(f.header.envelope.rcptTo, ['customer@example.org'])
  const g = spoolFile(spool, await qmail.submit({ ...base, envelope: { to: 'z@example.net' } }, { spool }))
  assert.equal(g.header.envelope.mailFrom, 'noreply@example.com')
  assert.deepEqual(g.header.envelope.rcptTo, ['z@example.net'])
})

test('notBefore: a future time goes to scheduled/, a past one to ready/', async () => {
  const spool = tmpSpool()
  const later = Math.floor(Date.now() / 1000) + 3600
  const id = await qmail.submit({ ...base, notBefore: later }, { spool })
  assert.ok(fs.existsSync(path.join(spool, 'scheduled', id)))
  assert.equal(spoolFile(spool, id, 'scheduled').header.notBefore, later)
  const id2 = qmail.submitSync({ ...base, notBefore: 1000 }, { spool })
  assert.equal(spoolFile(spool, id2).header.notBefore, 1000)
  // with its own envelope recipients too
  const id3 = await qmail.submit({ ...base, notBefore: later, envelope: { to: 'x@example.net' } }, { spool })
  assert.equal(spoolFile(spool, id3, 'scheduled').header.notBefore, later)
})

test('submit works off the main thread: timers keep firing while it runs', async () => {
  const spool = tmpSpool()
  const big = Buffer.alloc(24 * 1024 * 1024, 7)
  let ticks = 0
  const timer = setInterval(() => ticks++, 1)
  const started = process.hrtime.bigint()
  await qmail.submit({ ...base, attachments: [{ filename: 'big.bin', content: big }] }, { spool })
  const ms = Number(process.hrtime.bigint() - started) / 1e6
  clearInterval(timer)
  assert.ok(ms > 5, `the submit took ${ms} ms; too fast to tell`)
  assert.ok(ticks > 0, `no timer tick in ${ms} ms: the event loop was blocked`)
})

test('many submits in flight at once give distinct ids', async () => {
  const spool = tmpSpool()
  const ids = await Promise.all(Array.from({ length: 64 }, (_, i) => qmail.submit({ ...base, subject: `n${i}` }, { spool })))
  assert.equal(new Set(ids).size, 64)
  assert.equal(fs.readdirSync(path.join(spool, 'ready')).length, 64)
})

test('envelope.to leaves the message bytes as they are without it', async () => {
  const spool = tmpSpool()
  const fixed = { ...base, headers: { 'Message-ID': '<same@example.com>', Date: 'Tue, 01 Jul 2025 10:00:00 +0000' } }
  const plain = spoolFile(spool, await qmail.submit(fixed, { spool }))
  const routed = spoolFile(spool, await qmail.submit({ ...fixed, envelope: { to: 'x@example.net' } }, { spool }))
  assert.equal(routed.body.toString('latin1'), plain.body.toString('latin1'))
})
