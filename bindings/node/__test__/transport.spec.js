'use strict'
// The nodemailer transport: nodemailer composes, qmail spools. What lands in the spool is what
// nodemailer composed (CRLF line ends, Bcc removed), with nodemailer's envelope.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const nodemailer = require('nodemailer')
const { simpleParser } = require('mailparser')
const qmail = require('qmail')
const { tmpSpool, spoolFile, headerSection, assertWireClean, rejection } = require('./helpers')

/** A transport that records what nodemailer composed, then hands the mail to qmail's. */
function recording(inner, { keepBcc = false } = {}) {
  const seen = []
  return {
    seen,
    transport: {
      name: inner.name,
      version: inner.version,
      send(mail, callback) {
        if (keepBcc) mail.message.keepBcc = true
        mail.message.build((err, raw) => {
          if (err) return callback(err)
          // building twice gives the same bytes (boundaries, Date and Message-ID are fixed)
          mail.message.build((err2, again) => {
            if (err2) return callback(err2)
            assert.deepEqual(again, raw)
            seen.push({ raw, envelope: mail.message.getEnvelope() })
            inner.send(mail, callback)
          })
        })
      },
    },
  }
}

const mail = {
  from: '"Shop, Inc." <noreply@example.com>',
  to: ['Customer <customer@example.org>', { name: 'Ünïcode Näme', address: 'u@example.org' }],
  cc: 'cc@example.org',
  bcc: 'hidden@example.net',
  replyTo: 'help@example.com',
  subject: 'Your order – ünïcode subject that is long enough to need folding across lines',
  text: 'Thanks!\nSecond line\n.\nA dot line',
  html: '<p>Thanks! <img src="cid:logo@shop"></p>',
  headers: { 'X-Campaign': 'spring' },
  attachments: [
    { filename: 'invoice.pdf', content: Buffer.from('%PDF-1.4 fake'), contentType: 'application/pdf' },
    { filename: 'logo.png', content: Buffer.from([0x89, 0x50, 0x4e, 0x47]), cid: 'logo@shop' },
    { filename: 'notes.txt', content: 'plain text note' },
  ],
}

test('transport object: name, version, send', () => {
  const t = qmail.transport({ spool: tmpSpool() })
  assert.equal(t.name, 'qmail')
  assert.equal(t.version, require('../package.json').version)
  assert.equal(typeof t.send, 'function')
})

test('sendMail spools what nodemailer composed, with its envelope', async () => {
  const spool = tmpSpool()
  const rec = recording(qmail.transport({ spool }))
  const transporter = nodemailer.createTransport(rec.transport)
  const info = await transporter.sendMail(mail)
  assert.equal(rec.seen.length, 1)
  const { raw, envelope } = rec.seen[0]
  assert.ok(!/^bcc:/im.test(headerSection(raw)), 'nodemailer leaves Bcc out by default')
  const f = spoolFile(spool, info.queueId)
  assertWireClean(f.body)
  // envelope: nodemailer's, Bcc included
  assert.equal(f.header.envelope.mailFrom, envelope.from)
  assert.deepEqual(f.header.envelope.rcptTo, envelope.to)
  assert.ok(envelope.to.includes('hidden@example.net'))
  assert.deepEqual(info.envelope, envelope)
  assert.equal(info.messageId, f.header.messageId)
  assert.equal(info.response, `250 queued as ${info.queueId}`)
  // the header section is nodemailer's, byte for byte
  assert.equal(headerSection(f.body), headerSection(raw))
  // and the message parses the same
  const a = await simpleParser(raw)
  const b = await simpleParser(f.body)
  for (const k of ['subject', 'text', 'html', 'messageId']) assert.deepEqual(b[k], a[k], k)
  assert.deepEqual(b.to.value, a.to.value)
  assert.deepEqual(
    b.attachments.map((x) => [x.filename, x.contentType, x.cid, x.content.toString('hex')]),
    a.attachments.map((x) => [x.filename, x.contentType, x.cid, x.content.toString('hex')]),
  )
})

test('round trip: the spooled message equals what nodemailer composed, byte for byte', async () => {
  const spool = tmpSpool()
  const rec = recording(qmail.transport({ spool }))
  const info = await nodemailer.createTransport(rec.transport).sendMail(mail)
  const composed = rec.seen[0].raw.toString('latin1').replace(/\r?\n/g, '\r\n')
  assert.equal(spoolFile(spool, info.queueId).body.toString('latin1'), composed)
})

test('sendMail with an envelope option and keepBcc: nodemailer envelope used, Bcc removed by qmail', async () => {
  const spool = tmpSpool()
  const rec = recording(qmail.transport({ spool }), { keepBcc: true })
  const transporter = nodemailer.createTransport(rec.transport)
  const info = await transporter.sendMail({
    ...mail,
    envelope: { from: 'Bounces <bounces@example.com>', to: 'x@example.net, Y <y@example.net>' },
  })
  const f = spoolFile(spool, info.queueId)
  assert.equal(f.header.envelope.mailFrom, 'bounces@example.com')
  assert.deepEqual(f.header.envelope.rcptTo, ['x@example.net', 'y@example.net'])
  assert.ok(/^bcc:/im.test(headerSection(rec.seen[0].raw)), 'nodemailer kept Bcc')
  assert.ok(!/^bcc:/im.test(headerSection(f.body)), 'qmail removed it')
  assert.ok(!headerSection(f.body).includes('hidden@example.net'))
})

test('the default spool is used when the transport names none', () => {
  const spool = tmpSpool()
  const { execFileSync } = require('node:child_process')
  const script = `const nodemailer = require('nodemailer'); const qmail = require('qmail')
    nodemailer.createTransport(qmail.transport()).sendMail({ from: 'a@example.com', to: 'b@example.org', text: 'x' })
      .then((info) => process.stdout.write(info.queueId))`
  const id = execFileSync(process.execPath, ['-e', script], { cwd: path.resolve(__dirname, '..'), env: { ...process.env, QMAIL_SPOOL: spool }, encoding: 'utf8' })
  assert.deepEqual(fs.readdirSync(path.join(spool, 'ready')), [id])
})

test('sendMail fails with the qmail error when the spool cannot be written', async () => {
  const file = path.join(tmpSpool(), 'plain-file')
  fs.writeFileSync(file, '')
  const transporter = nodemailer.createTransport(qmail.transport({ spool: path.join(file, 'spool') }))
  const err = await rejection(transporter.sendMail({ from: 'a@example.com', to: 'b@example.org', text: 'x' }))
  assert.equal(err.code, 'QMAIL_SPOOL_UNAVAILABLE')
  assert.equal(err.field, 'spool')
})

test('sendMail without any recipient fails with QMAIL_INVALID_MESSAGE', async () => {
  const transporter = nodemailer.createTransport(qmail.transport({ spool: tmpSpool() }))
  const err = await rejection(transporter.sendMail({ from: 'a@example.com', subject: 'nobody', text: 'x' }))
  assert.equal(err.code, 'QMAIL_INVALID_MESSAGE')
  assert.equal(err.field, 'envelope.to')
})
