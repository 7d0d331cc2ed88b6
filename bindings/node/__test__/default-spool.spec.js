'use strict'
// The default spool: QMAIL_SPOOL, setDefaultSpool, and no spool at all. The default is
// process-wide and QMAIL_SPOOL is read once, so each scenario runs in a fresh Node process.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { tmpSpool } = require('./helpers')

const pkg = path.resolve(__dirname, '..')

/** Runs `body` (an async function body with `qmail` in scope) in a child process; returns its JSON result. */
function inChild(body, env = {}) {
  const script = `const qmail = require(${JSON.stringify(pkg)});
    (async () => { ${body} })().then((r) => process.stdout.write(JSON.stringify(r)), (e) => {
      process.stdout.write(JSON.stringify({ error: { code: e.code, field: e.field, message: e.message } }))
    })`
  const clean = { ...process.env }
  delete clean.QMAIL_SPOOL
  const out = execFileSync(process.execPath, ['-e', script], { env: { ...clean, ...env }, encoding: 'utf8' })
  return JSON.parse(out)
}

const msg = "({ from: 'a@example.com', to: 'b@example.org', subject: 'd', text: 'x' })"

test('no spool named, set or in QMAIL_SPOOL: QMAIL_NO_SPOOL_CONFIGURED, promise and sync', () => {
  assert.deepEqual(inChild(`return await qmail.submit(${msg})`).error.code, 'QMAIL_NO_SPOOL_CONFIGURED')
  assert.deepEqual(inChild(`return qmail.submitSync(${msg})`).error.code, 'QMAIL_NO_SPOOL_CONFIGURED')
  const raw = "'From: a@example.com\\r\\nTo: b@example.org\\r\\n\\r\\nx\\r\\n'"
  const e = inChild(`return await qmail.submitRaw(${raw})`).error
  assert.equal(e.code, 'QMAIL_NO_SPOOL_CONFIGURED')
  assert.equal(e.field, 'spool')
  assert.equal(inChild(`return qmail.submitRawSync(${raw})`).error.code, 'QMAIL_NO_SPOOL_CONFIGURED')
  // with its own envelope recipients, too (the raw route)
  const e2 = inChild(`return await qmail.submit({ ...${msg}, envelope: { to: 'x@example.net' } })`).error
  assert.equal(e2.code, 'QMAIL_NO_SPOOL_CONFIGURED')
})

test('QMAIL_SPOOL is honoured, round-robin over a path list', () => {
  const a = tmpSpool()
  const b = tmpSpool()
  const ids = inChild(
    `const ids = []
     for (let i = 0; i < 4; i++) ids.push(await qmail.submit(${msg}))
     ids.push(qmail.submitSync(${msg}), await qmail.submitRaw('From: a@example.com\\nTo: b@example.org\\n\\nx\\n'))
     return ids`,
    { QMAIL_SPOOL: `${a}:${b}` },
  )
  assert.equal(ids.length, 6)
  const inA = fs.readdirSync(path.join(a, 'ready'))
  const inB = fs.readdirSync(path.join(b, 'ready'))
  assert.equal(inA.length, 3)
  assert.equal(inB.length, 3)
  assert.deepEqual([...inA, ...inB].sort(), [...ids].sort())
})

test('setDefaultSpool (string, array) overrides QMAIL_SPOOL; { spool } overrides both', () => {
  const env = tmpSpool()
  const set = tmpSpool()
  const list1 = tmpSpool()
  const list2 = tmpSpool()
  const own = tmpSpool()
  const r = inChild(
    `qmail.setDefaultSpool(${JSON.stringify(set)})
     const first = await qmail.submit(${msg})
     const named = await qmail.submit(${msg}, { spool: ${JSON.stringify(own)} })
     qmail.setDefaultSpool(${JSON.stringify([list1, list2])})
     const spread = [await qmail.submit(${msg}), await qmail.submit(${msg})]
     return { first, named, spread }`,
    { QMAIL_SPOOL: env },
  )
  assert.deepEqual(fs.readdirSync(path.join(set, 'ready')), [r.first])
  assert.deepEqual(fs.readdirSync(path.join(own, 'ready')), [r.named])
  assert.deepEqual(fs.readdirSync(path.join(list1, 'ready')).length + fs.readdirSync(path.join(list2, 'ready')).length, 2)
  assert.ok(!fs.existsSync(path.join(env, 'ready')) || fs.readdirSync(path.join(env, 'ready')).length === 0)
})

test('a failing spool in the list is skipped', () => {
  const good = tmpSpool()
  const file = path.join(tmpSpool(), 'plain-file')
  fs.writeFileSync(file, '')
  const ids = inChild(
    `qmail.setDefaultSpool([${JSON.stringify(path.join(file, 'spool'))}, ${JSON.stringify(good)}])
     return [await qmail.submit(${msg}), await qmail.submit(${msg}), qmail.submitSync(${msg})]`,
  )
  assert.deepEqual(fs.readdirSync(path.join(good, 'ready')).sort(), [...ids].sort())
})
