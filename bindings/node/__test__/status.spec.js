'use strict'
// status(queueId, { spool }): where a submitted message is, read from real spool directories
// (the dispatcher's directories and state file written as the dispatcher writes them).
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { submit, status } = require('qmail')
const { tmpSpool } = require('./helpers.js')

const message = { from: 'a@example.com', to: 'b@example.org', subject: 's', text: 't' }

test('queued, deferred with the last reply, held, failed with reasons, delivered, unknown', async () => {
  const spool = tmpSpool()
  const id = await submit(message, { spool })
  let s = await status(id, { spool })
  assert.equal(s.state, 'queued')
  assert.equal(s.attempts, 0)
  assert.equal(s.spool, spool)

  fs.renameSync(path.join(spool, 'ready', id), path.join(spool, 'deferred', id))
  fs.mkdirSync(path.join(spool, 'state'), { recursive: true })
  const due = Math.floor(Date.now() / 1000) + 600
  fs.writeFileSync(path.join(spool, 'state', `${id}.json`), JSON.stringify({
    attempts: 1,
    next_due: due,
    history: [{ at_ms: 1, results: [{ rcpt: 'b@example.org', status: 'deferred', reply: { code: 451, text: '4.7.1 try later' } }] }],
  }))
  s = await status(id, { spool })
  assert.deepEqual([s.state, s.attempts, s.nextAttempt, s.lastReply], ['deferred', 1, due, '451 4.7.1 try later'])

  fs.renameSync(path.join(spool, 'deferred', id), path.join(spool, 'hold', id))
  assert.equal((await status(id, { spool: [spool] })).state, 'held')

  fs.renameSync(path.join(spool, 'hold', id), path.join(spool, 'failed', id))
  fs.writeFileSync(path.join(spool, 'state', `${id}.json`), JSON.stringify({
    attempts: 2, failed: [{ rcpt: 'b@example.org', reply: { code: 550, text: 'no such user' }, at: 1 }],
  }))
  s = await status(id, { spool })
  assert.equal(s.state, 'failed')
  assert.deepEqual(s.reasons, ['<b@example.org>: 550 no such user'])

  fs.unlinkSync(path.join(spool, 'failed', id))
  assert.equal((await status(id, { spool })).state, 'unknown')
  const log = path.join(spool, 'delivery.log')
  fs.writeFileSync(log, JSON.stringify({
    ts_ms: 1700000000000, id, attempt: 3, relay: 'mx', recipients: ['b@example.org'], code: 250, reply: 'ok',
    results: [{ rcpt: 'b@example.org', status: 'delivered', reply: { code: 250, text: 'ok' } }],
  }) + '\n')
  s = await status(id, { spool, deliveryLog: log })
  assert.deepEqual([s.state, s.deliveredAt], ['delivered', 1700000000])
})

test('bad ids and unreadable spools reject with typed errors', async () => {
  const spool = tmpSpool()
  await assert.rejects(status('../../etc/passwd', { spool }), (e) => e.code === 'QMAIL_INVALID_ARGUMENT' && e.field === 'queue_id')
  await assert.rejects(status('1796161977.025823.27723.0.fb24b8b0a77f2710.vm', { spool: path.join(spool, 'nope') }),
    (e) => e.code === 'QMAIL_SPOOL_UNAVAILABLE' && e.transient === true)
  await assert.rejects(status(42, { spool }), /String/)
})
