'use strict'
// The `layer: build` cases of tests/cases/cases.json (Q-01, Q-03, Q-08, Q-09, Q-10, Q-14,
// Q-15) through the Node API, asserting their `expect` lines on the spool file. The
// independent parser is mailparser (with libmime for raw encoded-words), not qmail code.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { simpleParser } = require('mailparser')
const libmime = require('libmime')
const qmail = require('qmail')
const h = require('./helpers')

const cases = JSON.parse(fs.readFileSync(path.resolve(__dirname, '../../../tests/cases/cases.json'), 'utf8'))
const inputs = (id) => cases.find((c) => c.id === id).inputs
const spool = h.tmpSpool('qmail-node-cases-')

/** A case input (cases.json shape) as Node API options. */
function options(input) {
  const o = {}
  for (const k of ['from', 'to', 'cc', 'bcc', 'subject', 'text', 'html', 'headers']) {
    if (input[k] !== undefined) o[k] = input[k]
  }
  if (input.reply_to !== undefined) o.replyTo = input.reply_to
  for (const k of ['subject', 'text', 'html']) if (typeof o[k] === 'string') o[k] = h.expand(o[k])
  if (o.headers) o.headers = Object.fromEntries(Object.entries(o.headers).map(([k, v]) => [k, h.expand(v)]))
  if (input.attachments) {
    o.attachments = input.attachments.map((a) => ({
      filename: a.filename,
      contentType: a.content_type,
      content: a.content_hex !== undefined ? Buffer.from(a.content_hex, 'hex') : a.content,
    }))
  }
  return o
}

/** Submits through the promise API and returns the spool file. */
async function spooled(input) {
  return h.spoolFile(spool, await qmail.submit(options(input), { spool }))
}

/** Both APIs refuse `opts` with this code; returns the error. */
async function refused(opts, code) {
  const err = await h.rejection(qmail.submit(opts, { spool }))
  assert.equal(err.code, code, err.message)
  const sync = h.thrown(() => qmail.submitSync(opts, { spool }))
  assert.equal(sync.code, code)
  assert.equal(sync.field, err.field)
  return err
}

test('Q-01 CR/LF smuggled into an address or display name', async () => {
  const ins = inputs('Q-01')
  // the second input is refused with an invalid-address error naming reply_to (JS: replyTo)
  assert.equal((await refused(options(ins[1]), 'QMAIL_INVALID_ADDRESS')).field, 'replyTo')
  // the first: refused with an invalid-header error (the core's documented choice)
  assert.equal((await refused(options(ins[0]), 'QMAIL_INVALID_HEADER')).field, 'replyTo')
  // neighbours: every address option, CR, LF, CRLF, NUL, in the name and in the address
  const clean = { ...options(ins[0]), replyTo: { name: 'Support', address: 'help@example.com' } }
  for (const field of ['from', 'sender', 'to', 'cc', 'bcc', 'replyTo']) {
    for (const bad of ['\r\n', '\r', '\n', '\0']) {
      const inName = h.thrown(() => qmail.submitSync({ ...clean, [field]: { name: `Sup${bad}port`, address: 'help@example.com' } }, { spool }))
      assert.equal(inName.field, field, `${field} ${JSON.stringify(bad)}`)
      const inAddr = h.thrown(() => qmail.submitSync({ ...clean, [field]: { name: 'Support', address: `help@exa${bad}mple.com` } }, { spool }))
      assert.equal(inAddr.code, 'QMAIL_INVALID_ADDRESS', `${field} ${JSON.stringify(bad)}`)
      assert.equal(inAddr.field, field)
      const oneString = h.thrown(() => qmail.submitSync({ ...clean, [field]: `Support <help@example.com>${bad}Bcc: leak@example.org` }, { spool }))
      assert.equal(oneString.field, field)
      if (['to', 'cc', 'bcc', 'replyTo'].includes(field)) {
        const inList = h.thrown(() => qmail.submitSync({ ...clean, [field]: ['ok@example.com', `a${bad}@example.com`] }, { spool }))
        assert.equal(inList.field, field)
      }
    }
  }
  // in a built message: header folding is clean, no Bcc line, the envelope is exact
  const f = h.spoolFile(spool, await qmail.submit(clean, { spool }))
  h.assertWireClean(f.body)
  h.assertHeaderFolding(f.body)
  assert.deepEqual(f.header.envelope.rcptTo, ['customer@example.org'])
  const g = h.spoolFile(spool, await qmail.submit({ ...clean, bcc: ['hidden@example.net'] }, { spool }))
  h.assertHeaderFolding(g.body)
  assert.ok(!h.headerSection(g.body).includes('hidden@example.net'))
  assert.deepEqual(g.header.envelope.rcptTo, ['customer@example.org', 'hidden@example.net'])
})

test('Q-03 newline at the end of, or encoded inside, a header value; bad header names', async () => {
  const ins = inputs('Q-03')
  // input 1: refused (trailing LF in Subject; CRLF in X-Campaign), naming the field
  assert.equal((await refused(options(ins[0]), 'QMAIL_INVALID_HEADER')).field, 'subject')
  const onlyHeader = { ...options(ins[0]), subject: 'Invoice 42' }
  assert.equal((await refused(onlyHeader, 'QMAIL_INVALID_HEADER')).field, 'headers.X-Campaign')
  for (const v of ['\nx', 'x\ry', 'x\0', '\r\n']) {
    assert.equal((await refused({ ...onlyHeader, headers: { 'X-Campaign': v } }, 'QMAIL_INVALID_HEADER')).field, 'headers.X-Campaign')
    assert.equal((await refused({ ...onlyHeader, headers: {}, subject: v }, 'QMAIL_INVALID_HEADER')).field, 'subject')
  }
  // a clean neighbour builds, and its body starts after the first empty line
  const ok = await spooled({ ...ins[0], subject: 'Invoice 42', headers: { 'X-Campaign': 'spring' } })
  const s = ok.body.toString()
  assert.ok(s.slice(s.indexOf('\r\n\r\n') + 4).startsWith('Body line 1'))
  // input 2: the literal encoded-word is itself encoded; decoding gives the input back
  const f = await spooled(ins[1])
  h.assertWireClean(f.body)
  const m = await simpleParser(f.body)
  assert.equal(m.subject, ins[1].subject)
  assert.ok(!h.headerSection(f.body).includes('=?UTF-8?Q?=0A?='))
  const subjectLine = h.headerSection(f.body).match(/^Subject:((?:.*\r\n)(?:[ \t].*\r\n)*)/m)[1]
  for (const word of subjectLine.match(/=\?[^?]+\?[QqBb]\?[^?]*\?=/g) || []) {
    assert.ok(!/[\r\n]/.test(libmime.decodeWords(word)), `${word} decodes to CR or LF`)
  }
  assert.ok(!h.fieldNames(f.body).some((n) => n.toLowerCase() === 'bcc'))
  // inputs 3 and 4 (and neighbours): refused; a name is printable US-ASCII 33..126 without ':'
  for (const i of [2, 3]) {
    assert.match((await refused(options(ins[i]), 'QMAIL_INVALID_HEADER')).field, /^headers\./)
  }
  for (const name of ['', 'X:Y', 'Ä-Header', 'X Y', 'X\tY', 'X\x7f']) {
    await refused({ ...onlyHeader, headers: { [name]: 'v' } }, 'QMAIL_INVALID_HEADER')
    await refused({ ...onlyHeader, headers: [{ key: name, value: 'v' }] }, 'QMAIL_INVALID_HEADER')
  }
})

test('Q-08 lines longer than 998 octets', async () => {
  const input = inputs('Q-08')[0]
  const f = await spooled(input)
  h.assertWireClean(f.body)
  const text = f.body.toString('latin1')
  assert.ok(!/Content-Transfer-Encoding: (7bit|8bit)/i.test(text), 'long lines must not be 7bit/8bit')
  const body = text.slice(h.headerSection(f.body).length)
  for (const l of body.split('\r\n')) assert.ok(l.length <= 76 || /^Content-/.test(l) || l[0] === ' ', `${l.length} chars`)
  const m = await simpleParser(f.body)
  assert.equal(m.text.trimEnd(), h.expand(input.text))
  assert.ok(m.html.includes(`https://example.com/t?u=${'a'.repeat(1500)}"`), 'the URL is intact')
  // X-Trace: written as encoded-word chunks that decode to the input
  const raw = m.headerLines.find((l) => l.key === 'x-trace').line.replace(/^X-Trace:\s*/i, '')
  assert.equal(libmime.decodeWords(raw.replace(/\r\n[ \t]/g, ' ')), 'c'.repeat(1200))
})

test('Q-09 non-ASCII display names that also need quoting', async () => {
  const input = inputs('Q-09')[0]
  const f = await spooled(input)
  h.assertWireClean(f.body)
  h.assertHeaderFolding(f.body)
  const head = h.headerSection(f.body)
  assert.ok(/^[\x00-\x7f]*$/.test(head), 'every header byte is 7-bit')
  for (const quoted of head.split('"').filter((_, i) => i % 2 === 1)) assert.ok(!quoted.includes('=?'), `encoded-word inside quotes: ${quoted}`)
  const m = await simpleParser(f.body)
  const pairs = (a) => a.value.map((x) => [x.name, x.address])
  assert.deepEqual(pairs(m.from), [['Dupont, Élodie', 'elodie@example.com']])
  assert.deepEqual(pairs(m.to), [['Şmith, John', 'smith@example.org']])
  assert.deepEqual(pairs(m.cc), input.cc.map((c) => [c.name, c.address]))
  // ',' and '"' inside encoded-words are in Q form (encoded), so no raw one splits the list
  const fromLine = head.match(/^From:(.*(?:\r\n[ \t].*)*)/m)[1]
  for (const w of fromLine.match(/=\?[^?]+\?[Qq]\?[^?]*\?=/g) || []) assert.ok(!/[,"]/.test(w), w)
})

test('Q-10 non-ASCII attachment file names', async () => {
  const input = inputs('Q-10')[0]
  const f = await spooled(input)
  h.assertWireClean(f.body)
  const text = f.body.toString('latin1')
  const dispositions = text.split('\r\n').filter((l) => /^Content-Disposition/i.test(l))
  assert.equal(dispositions.length, 4)
  for (const l of dispositions) assert.ok(l.startsWith('Content-Disposition: attachment;'), l)
  assert.ok(text.includes("filename*=utf-8''T%C3%B6%C3%B6%C3%B6st.pdf"))
  assert.ok(/filename="?plain-ascii\.txt"?/.test(text))
  assert.ok(!/filename\*=utf-8''filename/i.test(text), 'parameter name encoded')
  const m = await simpleParser(f.body)
  assert.deepEqual(
    m.attachments.map((a) => a.filename),
    input.attachments.map((a) => a.filename),
  )
  assert.equal(m.attachments[0].content.toString('latin1'), '%PDF-1.4')
  assert.equal(m.attachments[3].content.toString(), 'abc')
})

test('Q-14 Date and Message-ID always present, once', async () => {
  const ins = inputs('Q-14')
  const f = await spooled(ins[0])
  const names = h.fieldNames(f.body).map((n) => n.toLowerCase())
  for (const n of ['date', 'from', 'message-id']) assert.equal(names.filter((x) => x === n).length, 1, n)
  const head = h.headerSection(f.body)
  const id = head.match(/^Message-ID: (.*)\r$/m)[1]
  assert.match(id, /^<[^\s<>@]+@[^\s<>@]+>$/)
  assert.equal(f.header.messageId, id, 'the spool header holds the same Message-ID')
  const date = head.match(/^Date: (.*)\r$/m)[1]
  assert.match(date, /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}$/)
  assert.ok(!Number.isNaN(Date.parse(date)))
  // unique over 10,000 submits
  const ids = new Set()
  const quick = h.tmpSpool('qmail-node-q14-')
  for (let batch = 0; batch < 100; batch++) {
    const queued = await Promise.all(Array.from({ length: 100 }, () => qmail.submit(options(ins[0]), { spool: quick })))
    for (const q of queued) ids.add(h.spoolFile(quick, q).header.messageId)
  }
  assert.equal(ids.size, 10000)
  fs.rmSync(quick, { recursive: true })
  // input 2: the caller's values are used, and not duplicated
  const g = await spooled(ins[1])
  const head2 = h.headerSection(g.body)
  assert.equal(head2.split('Message-ID: <fixed-1@example.com>\r\n').length - 1, 1)
  assert.equal(head2.split('Date: Tue, 01 Jul 2025 10:00:00 +0000\r\n').length - 1, 1)
  assert.equal(h.fieldNames(g.body).filter((n) => n.toLowerCase() === 'date').length, 1)
  assert.equal(g.header.messageId, '<fixed-1@example.com>')
  for (const [k, v] of [
    ['Message-ID', 'fixed-1@example.com'],
    ['Message-ID', '<a b@c>'],
    ['Date', 'yesterday'],
  ]) {
    assert.equal((await refused({ ...options(ins[0]), headers: { [k]: v } }, 'QMAIL_INVALID_HEADER')).field, `headers.${k}`)
  }
})

test('Q-15 HTML with and without a text alternative', async () => {
  const ins = inputs('Q-15')
  // input 1: the documented choice, a single text/html part
  const one = await spooled(ins[0])
  const head1 = h.headerSection(one.body)
  assert.ok(head1.includes('Content-Type: text/html; charset=utf-8'))
  assert.ok(!head1.includes('multipart'))
  const m1 = await simpleParser(one.body)
  assert.ok(m1.html.includes('<b>42</b>'))
  // input 2: multipart/alternative, text/plain first, text/html last, both with a charset
  const two = await spooled(ins[1])
  h.assertWireClean(two.body)
  const text = two.body.toString('latin1')
  assert.ok(h.headerSection(two.body).includes('multipart/alternative'))
  const tp = text.indexOf('Content-Type: text/plain; charset=utf-8')
  const hp = text.indexOf('Content-Type: text/html; charset=utf-8')
  assert.ok(tp > 0 && hp > tp)
  for (const ct of text.match(/^Content-Type: text\/[^\r]*/gm)) assert.match(ct, /charset=/)
  const m2 = await simpleParser(two.body)
  assert.equal(m2.text.trimEnd(), 'Job 42 finished.')
  assert.ok(m2.html.includes('<b>42</b>'))
})
