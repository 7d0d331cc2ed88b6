'use strict'
// Test helpers: temporary spools, and a reader of the spool file format written from its
// documentation (qmail-core/src/spool/record.rs, docs/spool-format.md), independent of the
// Rust reader:
//   "QMAILSPL" | u16 LE version | u32 LE header length H | H bytes postcard header
//   | message bytes B | "QMAILEND" | u64 LE B
// The header is postcard: varint (LEB128) lengths, zigzag varints for i64, one byte for u8 and
// bool, 0/1 before an Option's value; fields in declaration order: envelope { mail_from,
// rcpt_to, smtputf8, eightbitmime }, created, not_before, priority, message_id.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const assert = require('node:assert/strict')

const created = []
process.on('exit', () => {
  // set QMAIL_NODE_KEEP_SPOOLS=1 to look at the spool files after a run
  if (!process.env.QMAIL_NODE_KEEP_SPOOLS) for (const d of created) fs.rmSync(d, { recursive: true, force: true })
})

/** A fresh directory for a spool (removed when the test process exits). */
function tmpSpool(prefix = 'qmail-node-') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  created.push(dir)
  return dir
}

class Reader {
  constructor(buf) {
    this.buf = buf
    this.pos = 0
  }
  byte() {
    assert.ok(this.pos < this.buf.length, 'header ends early')
    return this.buf[this.pos++]
  }
  varint() {
    let n = 0n
    for (let shift = 0n; ; shift += 7n) {
      const b = this.byte()
      n |= BigInt(b & 0x7f) << shift
      if (!(b & 0x80)) return n
    }
  }
  usize() {
    return Number(this.varint())
  }
  i64() {
    const z = this.varint()
    return Number((z >> 1n) ^ -(z & 1n))
  }
  bool() {
    const b = this.byte()
    assert.ok(b === 0 || b === 1, `bool byte ${b}`)
    return b === 1
  }
  string() {
    const n = this.usize()
    const s = this.buf.subarray(this.pos, this.pos + n).toString('utf8')
    this.pos += n
    return s
  }
  option(read) {
    return this.byte() === 1 ? read() : null
  }
}

/** Parses one spool file: { version, header, body (Buffer) }. */
function readSpoolFile(file) {
  const data = fs.readFileSync(file)
  assert.equal(data.subarray(0, 8).toString('latin1'), 'QMAILSPL', 'magic')
  const version = data.readUInt16LE(8)
  const hlen = data.readUInt32LE(10)
  const r = new Reader(data.subarray(14, 14 + hlen))
  const header = {
    envelope: {
      mailFrom: r.string(),
      rcptTo: Array.from({ length: r.usize() }, () => r.string()),
      smtputf8: r.bool(),
      eightbitmime: r.bool(),
    },
    created: r.i64(),
    notBefore: r.option(() => r.i64()),
    priority: r.byte(),
    messageId: r.string(),
  }
  assert.equal(r.pos, hlen, 'header length matches its content')
  const trailer = data.subarray(data.length - 16)
  assert.equal(trailer.subarray(0, 8).toString('latin1'), 'QMAILEND', 'trailer magic')
  const bodyLen = Number(trailer.readBigUInt64LE(8))
  assert.equal(14 + hlen + bodyLen + 16, data.length, 'trailer length matches the file')
  return { version, header, body: data.subarray(14 + hlen, 14 + hlen + bodyLen) }
}

/** The spool file of queue id `id` in `spool` (ready/ or scheduled/). */
function spoolFile(spool, id, state = 'ready') {
  return readSpoolFile(path.join(spool, state, id))
}

/** The header section of a message, as a string (up to and including the empty line). */
function headerSection(body) {
  const s = body.toString('latin1')
  return s.slice(0, s.indexOf('\r\n\r\n') + 4)
}

/** Field names of the header section, in order. */
function fieldNames(body) {
  return headerSection(body)
    .split('\r\n')
    .filter((l) => l && l[0] !== ' ' && l[0] !== '\t')
    .map((l) => l.slice(0, l.indexOf(':')))
}

/** Round-trip rules of the cases: CRLF only, no line over 998 octets. */
function assertWireClean(body) {
  const s = body.toString('latin1')
  assert.ok(!/\r(?!\n)/.test(s), 'bare CR')
  assert.ok(!/(?<!\r)\n/.test(s), 'bare LF')
  for (const line of s.split('\r\n')) assert.ok(line.length <= 998, `line of ${line.length} octets`)
}

/** Every CRLF inside the header section is followed by SP/HTAB, except before the empty line. */
function assertHeaderFolding(body) {
  const head = headerSection(body)
  const inner = head.slice(0, -4)
  for (let i = inner.indexOf('\r\n'); i !== -1; i = inner.indexOf('\r\n', i + 2)) {
    const next = inner[i + 2]
    // a new field starts with a name character; a continuation with SP/HTAB
    assert.ok(next === ' ' || next === '\t' || /[!-9;-~]/.test(next), `odd byte after CRLF at ${i}`)
  }
  assert.ok(!/(^|\r\n)bcc:/i.test(head), 'a Bcc line')
}

/** Expands the `"a*1500"` convention of cases.json. */
function expand(s) {
  return s.replace(/(.)\*(\d+)/gu, (_, c, n) => c.repeat(Number(n)))
}

/** Awaits `promise` and returns the error it rejects with (fails if it resolves). */
async function rejection(promise) {
  try {
    await promise
  } catch (err) {
    return err
  }
  assert.fail('expected a rejection')
}

/** Calls `fn` and returns what it throws (fails if it returns). */
function thrown(fn) {
  try {
    fn()
  } catch (err) {
    return err
  }
  assert.fail('expected a throw')
}

/** Asserts a qmail error: an Error with this code and field. */
function assertQmailError(err, code, field) {
  assert.ok(err instanceof Error, `not an Error: ${err}`)
  assert.equal(err.code, code, err.message)
  assert.equal(err.field, field, err.message)
  assert.equal(typeof err.kind, 'string')
  assert.equal(typeof err.transient, 'boolean')
  if (field) assert.ok(err.message.startsWith(`${field}: `), err.message)
}

module.exports = {
  tmpSpool,
  readSpoolFile,
  spoolFile,
  headerSection,
  fieldNames,
  assertWireClean,
  assertHeaderFolding,
  expand,
  rejection,
  thrown,
  assertQmailError,
}
