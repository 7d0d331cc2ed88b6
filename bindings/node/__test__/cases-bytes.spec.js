'use strict'
// One case list, four front ends (see qmail-core/tests/cases_bytes.rs): every input of the
// `build` and `model` cases of tests/cases/cases.json, built through the Node API and spooled,
// gives exactly the expected file of tests/cases/expected/ (the bytes, boundaries numbered; or
// `Kind field` for a refusal, the field in the core's name), the same file the Rust, Python and
// C runs compare with.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const qmail = require('qmail')
const h = require('./helpers')

const root = path.resolve(__dirname, '../../..')
const cases = JSON.parse(fs.readFileSync(path.join(root, 'tests/cases/cases.json'), 'utf8'))
const expected = path.join(root, 'tests/cases/expected')
// the JS option names back to the core's field names
const CORE_FIELD = { replyTo: 'reply_to', 'envelope.to': 'envelope_to', 'listUnsubscribe.url': 'list_unsubscribe.url', 'listUnsubscribe.mailto': 'list_unsubscribe.mailto', readReceiptTo: 'read_receipt_to' }

function normalise(body) {
  const seen = []
  return Buffer.from(
    body.toString('latin1').replace(/=_qm_([0-9a-f]{24})/g, (_, hex) => {
      if (!seen.includes(hex)) seen.push(hex)
      return `=_qm_${seen.indexOf(hex) + 1}`
    }),
    'latin1',
  )
}

function options(id, n, input) {
  const o = {}
  for (const k of ['from', 'to', 'cc', 'bcc', 'subject', 'text', 'html', 'priority']) if (input[k] !== undefined) o[k] = input[k]
  if (input.reply_to !== undefined) o.replyTo = input.reply_to
  for (const k of ['subject', 'text', 'html']) if (typeof o[k] === 'string') o[k] = h.expand(o[k])
  const headers = Object.fromEntries(Object.entries(input.headers || {}).map(([k, v]) => [k, h.expand(v)]))
  if (!Object.keys(headers).some((k) => k.toLowerCase() === 'date')) headers.Date = 'Tue, 01 Dec 2026 10:00:00 +0000'
  if (!Object.keys(headers).some((k) => k.toLowerCase() === 'message-id')) headers['Message-ID'] = `<${id}-${n}@cases.example>`
  o.headers = headers
  if (input.attachments) {
    o.attachments = input.attachments.map((a) => ({
      filename: a.filename,
      contentType: a.content_type,
      content: a.content_hex !== undefined ? Buffer.from(a.content_hex, 'hex') : a.content,
    }))
  }
  if (input.envelope_to) o.envelope = { to: input.envelope_to }
  if (input.list_unsubscribe) {
    const l = input.list_unsubscribe
    o.listUnsubscribe = { url: l.url, mailto: l.mailto, oneClick: l.one_click }
  }
  return o
}

for (const c of cases.filter((c) => c.layer === 'build' || c.layer === 'model')) {
  c.inputs.forEach((input, i) => {
    const n = i + 1
    test(`${c.id}-${n} gives its expected file`, async () => {
      const spool = h.tmpSpool('qmail-node-bytes-')
      let kind, got
      try {
        const id = await qmail.submit(options(c.id, n, input), { spool })
        kind = 'eml'
        got = normalise(h.spoolFile(spool, id).body)
      } catch (err) {
        assert.ok(err.kind, err.stack)
        kind = 'err'
        got = Buffer.from(`${err.kind} ${CORE_FIELD[err.field] || err.field || '-'}\n`)
      }
      const file = path.join(expected, `${c.id}-${n}.${kind}`)
      assert.ok(fs.existsSync(file), `${path.basename(file)} missing: the Rust run has the other outcome`)
      assert.equal(got.toString('latin1'), fs.readFileSync(file).toString('latin1'))
    })
  })
}
