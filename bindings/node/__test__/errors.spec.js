'use strict'
// Every error, promise and sync: an Error with a stable `code` (one per core ErrorKind) and the
// option at fault in `field`.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const qmail = require('qmail')
const { tmpSpool, rejection, thrown, assertQmailError } = require('./helpers')

const spool = tmpSpool()
const ok = { from: 'a@example.com', to: 'b@example.org', subject: 's', text: 't' }
const notAFile = path.join(spool, 'plain-file')
fs.writeFileSync(notAFile, 'x')

// [name, message, options, code, field]
const messageCases = [
  ['bad From', { ...ok, from: 'not-an-address' }, { spool }, 'QMAIL_INVALID_ADDRESS', 'from'],
  ['bad Sender', { ...ok, sender: 'x@' }, { spool }, 'QMAIL_INVALID_ADDRESS', 'sender'],
  ['bad To in a list', { ...ok, to: ['b@example.org', 'nope'] }, { spool }, 'QMAIL_INVALID_ADDRESS', 'to'],
  ['bad Cc object', { ...ok, cc: { name: 'C', address: 'c@' } }, { spool }, 'QMAIL_INVALID_ADDRESS', 'cc'],
  ['bad Bcc', { ...ok, bcc: 'b c@example.org' }, { spool }, 'QMAIL_INVALID_ADDRESS', 'bcc'],
  ['CRLF in a Reply-To address', { ...ok, replyTo: { address: 'h@example.com\r\nBcc: x@example.org' } }, { spool }, 'QMAIL_INVALID_ADDRESS', 'replyTo'],
  ['CRLF in a display name', { ...ok, replyTo: { name: 'S\r\nBcc: x@example.org', address: 'h@example.com' } }, { spool }, 'QMAIL_INVALID_HEADER', 'replyTo'],
  ['LF in Subject', { ...ok, subject: 'hi\n' }, { spool }, 'QMAIL_INVALID_HEADER', 'subject'],
  ['bad header name', { ...ok, headers: { 'X-Bad Name': 'v' } }, { spool }, 'QMAIL_INVALID_HEADER', 'headers.X-Bad Name'],
  ['CRLF in a header value', { ...ok, headers: [{ key: 'X-Campaign', value: 'a\r\nBcc: x@example.org' }] }, { spool }, 'QMAIL_INVALID_HEADER', 'headers.X-Campaign'],
  ['header with its own option', { ...ok, headers: { Bcc: 'x@example.org' } }, { spool }, 'QMAIL_INVALID_HEADER', 'headers.Bcc'],
  ['bad Message-ID', { ...ok, headers: { 'Message-ID': 'no-brackets@x' } }, { spool }, 'QMAIL_INVALID_HEADER', 'headers.Message-ID'],
  ['bad priority name', { ...ok, priority: 'urgent' }, { spool }, 'QMAIL_INVALID_ARGUMENT', 'priority'],
  ['bad priority number', { ...ok, priority: 9 }, { spool }, 'QMAIL_INVALID_ARGUMENT', 'priority'],
  ['negative notBefore', { ...ok, notBefore: -1 }, { spool }, 'QMAIL_INVALID_ARGUMENT', 'notBefore'],
  ['empty spool path', ok, { spool: '' }, 'QMAIL_INVALID_ARGUMENT', 'spool'],
  ['bad content type', { ...ok, attachments: [{ content: 'x', contentType: 'pdf' }] }, { spool }, 'QMAIL_INVALID_ARGUMENT', 'attachments[0]'],
  ['attachment without path or content', { ...ok, attachments: [{ content: 'x' }, { filename: 'a.txt' }] }, { spool }, 'QMAIL_INVALID_ARGUMENT', 'attachments[1]'],
  ['attachment with path and content', { ...ok, attachments: [{ path: notAFile, content: 'x' }] }, { spool }, 'QMAIL_INVALID_ARGUMENT', 'attachments[0]'],
  ['missing attachment file', { ...ok, attachments: [{ path: path.join(spool, 'missing.pdf') }] }, { spool }, 'QMAIL_ATTACHMENT', 'attachments[0]'],
  ['attachment is a directory', { ...ok, attachments: [{ content: 'x' }, { path: spool, cid: 'c@x' }] }, { spool }, 'QMAIL_ATTACHMENT', 'attachments[1]'],
  ['bad Content-ID', { ...ok, attachments: [{ content: 'x', cid: 'a b' }] }, { spool }, 'QMAIL_INVALID_HEADER', 'attachments[0]'],
  ['no From', { to: 'b@example.org', text: 'x' }, { spool }, 'QMAIL_INVALID_MESSAGE', 'from'],
  ['no recipient', { from: 'a@example.com', text: 'x' }, { spool }, 'QMAIL_INVALID_MESSAGE', 'to'],
  ['NUL in the text', { ...ok, text: 'a\0b' }, { spool }, 'QMAIL_INVALID_MESSAGE', 'text'],
  ['cid: without its inline part', { ...ok, html: '<img src="cid:logo@x">' }, { spool }, 'QMAIL_INVALID_MESSAGE', 'html'],
  ['bad envelope from', { ...ok, envelope: { from: 'bounces' } }, { spool }, 'QMAIL_INVALID_ADDRESS', 'envelope.from'],
  ['bad envelope to', { ...ok, envelope: { to: ['x@example.net', 'Name <y@example.net>'] } }, { spool }, 'QMAIL_INVALID_ADDRESS', 'envelope.to'],
  ['empty envelope to', { ...ok, envelope: { to: [] } }, { spool }, 'QMAIL_INVALID_MESSAGE', 'envelope.to'],
  ['spool under a plain file', ok, { spool: path.join(notAFile, 'spool') }, 'QMAIL_SPOOL_UNAVAILABLE', 'spool'],
]

for (const [name, message, options, code, field] of messageCases) {
  test(`submit rejects, submitSync throws: ${name} → ${code} (${field})`, async () => {
    assertQmailError(await rejection(qmail.submit(message, options)), code, field)
    assertQmailError(thrown(() => qmail.submitSync(message, options)), code, field)
  })
}

const eml = 'From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\n\r\nbody\r\n'
const rawCases = [
  ['no header/body separator', 'From: a@example.com\r\nTo: b@example.org', { spool }, 'QMAIL_INVALID_MESSAGE', 'message'],
  ['NUL byte', Buffer.from(eml.replace('body', 'b\0dy')), { spool }, 'QMAIL_INVALID_MESSAGE', 'message'],
  ['line over 998 octets', eml.replace('body', 'x'.repeat(999)), { spool }, 'QMAIL_INVALID_MESSAGE', 'message'],
  ['no From field', 'To: b@example.org\r\n\r\nx\r\n', { spool }, 'QMAIL_INVALID_MESSAGE', 'message'],
  ['no recipient', 'From: a@example.com\r\nSubject: s\r\n\r\nx\r\n', { spool }, 'QMAIL_INVALID_MESSAGE', 'envelope.to'],
  ['bad field name', 'From: a@example.com\r\nTo: b@example.org\r\nBad Name: v\r\n\r\nx\r\n', { spool }, 'QMAIL_INVALID_HEADER', 'headers.Bad Name'],
  ['bad address in To', 'From: a@example.com\r\nTo: nope\r\n\r\nx\r\n', { spool }, 'QMAIL_INVALID_ADDRESS', 'to'],
  ['bad envelope from', eml, { spool, envelope: { from: 'x' } }, 'QMAIL_INVALID_ADDRESS', 'envelope.from'],
  ['bad envelope to', eml, { spool, envelope: { to: 'x\r\n@example.org' } }, 'QMAIL_INVALID_ADDRESS', 'envelope.to'],
  ['spool under a plain file', eml, { spool: path.join(notAFile, 'spool') }, 'QMAIL_SPOOL_UNAVAILABLE', 'spool'],
]

for (const [name, raw, options, code, field] of rawCases) {
  test(`submitRaw rejects, submitRawSync throws: ${name} → ${code} (${field})`, async () => {
    assertQmailError(await rejection(qmail.submitRaw(raw, options)), code, field)
    assertQmailError(thrown(() => qmail.submitRawSync(raw, options)), code, field)
  })
}

test('setDefaultSpool throws QMAIL_NO_SPOOL_CONFIGURED for an empty list, QMAIL_INVALID_ARGUMENT for a bad element', () => {
  assertQmailError(thrown(() => qmail.setDefaultSpool('')), 'QMAIL_NO_SPOOL_CONFIGURED', 'spool')
  assertQmailError(thrown(() => qmail.setDefaultSpool([])), 'QMAIL_NO_SPOOL_CONFIGURED', 'spool')
  assertQmailError(thrown(() => qmail.setDefaultSpool(['/a:b'])), 'QMAIL_INVALID_ARGUMENT', 'spool')
})

test('errors carry kind and transient; spool failures are transient, validation is not', async () => {
  const bad = await rejection(qmail.submit(ok, { spool: path.join(notAFile, 'spool') }))
  assert.equal(bad.kind, 'SpoolUnavailable')
  assert.equal(bad.transient, true)
  const inv = thrown(() => qmail.submitSync({ ...ok, from: 'x' }, { spool }))
  assert.equal(inv.kind, 'InvalidAddress')
  assert.equal(inv.transient, false)
  assert.ok(inv.stack.includes('errors.spec.js'), 'a sync error has the caller in its stack')
})

test('errorCodes(): one stable QMAIL_ code per core error kind', () => {
  const codes = qmail.errorCodes()
  assert.deepEqual(
    codes.map((c) => c.code),
    [
      'QMAIL_INVALID_ARGUMENT',
      'QMAIL_INVALID_ADDRESS',
      'QMAIL_INVALID_HEADER',
      'QMAIL_INVALID_MESSAGE',
      'QMAIL_ATTACHMENT',
      'QMAIL_SPOOL_UNAVAILABLE',
      'QMAIL_NO_SPOOL_CONFIGURED',
      'QMAIL_CORRUPT',
      'QMAIL_IO',
    ],
  )
  for (const c of codes) {
    assert.equal(c.code, 'QMAIL' + c.kind.replace(/[A-Z]/g, (x) => '_' + x).toUpperCase())
  }
  assert.deepEqual(
    codes.filter((c) => c.transient).map((c) => c.kind),
    ['SpoolUnavailable', 'Io'],
  )
  // every code these tests produce is listed (Corrupt and Io come only from reading spool files)
  const listed = new Set(codes.map((c) => c.code))
  for (const [, , , code] of [...messageCases, ...rawCases]) assert.ok(listed.has(code), code)
})

test('a JS value of the wrong type: napi-rs conversion errors, rejected by the async calls', async () => {
  // not qmail errors (no QMAIL_ code): programming errors found before any qmail code runs
  const isConversionError = (err) => err instanceof Error && !String(err.code).startsWith('QMAIL_')
  for (const call of [() => qmail.submit({ ...ok, to: 42 }), () => qmail.submit(), () => qmail.submitRaw(42)]) {
    const pending = call()
    assert.ok(pending instanceof Promise)
    assert.ok(isConversionError(await rejection(pending)))
  }
  assert.equal(thrown(() => qmail.submitSync({ ...ok, to: 42 })).code, 'InvalidArg')
  assert.ok(isConversionError(thrown(() => qmail.submitSync({ ...ok, subject: 7 }))))
  assert.equal(thrown(() => qmail.submitRawSync({})).code, 'InvalidArg')
})

// Numbers that are not whole are refused, not truncated (NaN used to become 0: sent at once).
test('notBefore and priority must be whole numbers', async () => {
  const spool = tmpSpool()
  for (const [k, v] of [['notBefore', NaN], ['notBefore', Infinity], ['notBefore', 1.5], ['notBefore', 1e20], ['priority', 1.5]]) {
    const msg = { from: 'a@example.com', to: 'b@example.org', text: 't', [k]: v }
    assert.throws(() => qmail.submitSync(msg, { spool }), (e) => e.code === 'QMAIL_INVALID_ARGUMENT' && e.field === k, `${k}=${v}`)
    await assert.rejects(qmail.submit(msg, { spool }), (e) => e.code === 'QMAIL_INVALID_ARGUMENT' && e.field === k)
  }
})
