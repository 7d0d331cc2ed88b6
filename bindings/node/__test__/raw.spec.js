'use strict'
// submitRaw / submitRawSync: a message composed elsewhere lands as the core prepares it.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const qmail = require('qmail')
const { tmpSpool, spoolFile, headerSection, assertWireClean } = require('./helpers')

const eml = [
  'From: Shop <noreply@example.com>',
  'To: customer@example.org, "B, C" <b@example.org>',
  'Bcc: hidden@example.net',
  'Subject: raw',
  '',
  'line 1',
  'line 2',
  '',
].join('\n')

test('submitRaw: LF becomes CRLF, Bcc removed, Date and Message-ID added, envelope derived', async () => {
  const spool = tmpSpool()
  for (const raw of [eml, Buffer.from(eml)]) {
    const id = await qmail.submitRaw(raw, { spool })
    const f = spoolFile(spool, id)
    assertWireClean(f.body)
    const head = headerSection(f.body)
    assert.ok(!/^bcc:/im.test(head) && !head.includes('hidden@example.net'))
    assert.match(head, /^Message-ID: <[^\s@]+@example\.com>\r\n/m)
    assert.match(head, /^Date: /m)
    assert.ok(f.body.toString().endsWith('\r\n\r\nline 1\r\nline 2\r\n'))
    assert.deepEqual(f.header.envelope.rcptTo, ['customer@example.org', 'b@example.org', 'hidden@example.net'])
    assert.equal(f.header.envelope.mailFrom, 'noreply@example.com')
    assert.equal(f.header.messageId, head.match(/^Message-ID: (.*)\r$/m)[1])
  }
})

test('submitRaw: envelope, notBefore; submitRawSync', async () => {
  const spool = tmpSpool()
  const later = Math.floor(Date.now() / 1000) + 600
  const id = await qmail.submitRaw(eml, { spool, envelope: { from: '<>', to: 'only@example.net' }, notBefore: later })
  const f = spoolFile(spool, id, 'scheduled')
  assert.equal(f.header.envelope.mailFrom, '')
  assert.deepEqual(f.header.envelope.rcptTo, ['only@example.net'])
  assert.equal(f.header.notBefore, later)
  const id2 = qmail.submitRawSync(Buffer.from(eml.replace(/\n/g, '\r\n')), {
    spool,
    envelope: { from: 'b@example.com', to: ['x@example.net', 'y@example.net'] },
  })
  const g = spoolFile(spool, id2)
  assert.equal(g.header.envelope.mailFrom, 'b@example.com')
  assert.deepEqual(g.header.envelope.rcptTo, ['x@example.net', 'y@example.net'])
  assert.equal(fs.readdirSync(path.join(spool, 'ready')).length, 1)
})

test('submitRaw keeps the bytes of a CRLF message without Bcc as they are', async () => {
  const spool = tmpSpool()
  const crlf = 'From: a@example.com\r\nTo: b@example.org\r\nDate: Tue, 01 Jul 2025 10:00:00 +0000\r\nMessage-ID: <k@example.com>\r\nSubject: same\r\n\r\nbody\r\n'
  const f = spoolFile(spool, await qmail.submitRaw(Buffer.from(crlf), { spool }))
  assert.equal(f.body.toString('latin1'), crlf)
  assert.equal(f.header.messageId, '<k@example.com>')
})
