'use strict'
// Concurrent submits from worker_threads: the addon loads in every worker, and submits from
// all of them at once give distinct queue ids and complete spool files.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { Worker } = require('node:worker_threads')
const { tmpSpool, readSpoolFile } = require('./helpers')

const WORKERS = 4
const PER_WORKER = 50

const workerSource = `
const { parentPort, workerData } = require('node:worker_threads')
const qmail = require(workerData.pkg)
;(async () => {
  const ids = []
  const base = { from: 'a@example.com', to: 'b@example.org', text: 'x' }
  const pending = []
  for (let i = 0; i < workerData.n; i++) {
    const subject = 'w' + workerData.w + ' #' + i
    if (i % 5 === 0) ids.push(qmail.submitSync({ ...base, subject }, { spool: workerData.spool }))
    else if (i % 5 === 1) pending.push(qmail.submitRaw('From: a@example.com\\nTo: b@example.org\\nSubject: ' + subject + '\\n\\nx\\n', { spool: workerData.spool }))
    else pending.push(qmail.submit({ ...base, subject }, { spool: workerData.spool }))
  }
  ids.push(...(await Promise.all(pending)))
  parentPort.postMessage(ids)
})().catch((e) => parentPort.postMessage({ error: e.message, code: e.code }))
`

function run(w, spool) {
  return new Promise((resolve, reject) => {
    const worker = new Worker(workerSource, {
      eval: true,
      workerData: { pkg: path.resolve(__dirname, '..'), spool, w, n: PER_WORKER },
    })
    worker.once('message', resolve)
    worker.once('error', reject)
  })
}

test(`${WORKERS} workers × ${PER_WORKER} submits: all ids distinct, all files present and complete`, async () => {
  const spool = tmpSpool()
  const results = await Promise.all(Array.from({ length: WORKERS }, (_, w) => run(w, spool)))
  for (const r of results) assert.ok(Array.isArray(r), JSON.stringify(r))
  const ids = results.flat()
  assert.equal(ids.length, WORKERS * PER_WORKER)
  assert.equal(new Set(ids).size, ids.length, 'queue ids are distinct')
  const files = fs.readdirSync(path.join(spool, 'ready'))
  assert.deepEqual(files.sort(), [...ids].sort())
  assert.deepEqual(fs.readdirSync(path.join(spool, 'tmp')), [])
  const subjects = new Set()
  for (const id of files) {
    const f = readSpoolFile(path.join(spool, 'ready', id))
    subjects.add(f.body.toString().match(/^Subject: (.*)\r$/m)[1])
  }
  assert.equal(subjects.size, ids.length, 'every message is its own')
})

test('the main thread keeps submitting while workers do', async () => {
  const qmail = require('qmail')
  const spool = tmpSpool()
  const [fromWorker, fromMain] = await Promise.all([
    run(9, spool),
    Promise.all(Array.from({ length: 20 }, (_, i) => qmail.submit({ from: 'a@example.com', to: 'b@example.org', subject: `m${i}` }, { spool }))),
  ])
  assert.equal(new Set([...fromWorker, ...fromMain]).size, PER_WORKER + 20)
  assert.equal(fs.readdirSync(path.join(spool, 'ready')).length, PER_WORKER + 20)
})
