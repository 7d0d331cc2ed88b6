// Compiled (not run) by types.spec.js with `tsc --noEmit --strict`: the published types accept
// what the docs show and refuse what they should. A line under @ts-expect-error must not compile.
import * as qmail from 'qmail'
import { submit, submitSync, submitRaw, transport, errorCodes, setDefaultSpool, type Message, type QmailError } from 'qmail'

const message: Message = {
  from: 'Shop <noreply@example.com>',
  to: ['a@example.org', { name: 'B', address: 'b@example.org' }],
  cc: { address: 'c@example.org' },
  replyTo: 'help@example.com',
  subject: 'Your order',
  text: 'Thanks!',
  html: '<p>Thanks!</p>',
  headers: { 'X-Campaign': 'spring', 'X-Tag': ['a', 'b'] },
  priority: 'high',
  attachments: [{ path: '/tmp/x.pdf' }, { filename: 'a.txt', content: Buffer.from('a'), contentType: 'text/plain', cid: 'a@x' }],
  envelope: { from: '<>', to: ['x@example.net'] },
  notBefore: 1700000000,
}

async function use(): Promise<void> {
  const id: string = await submit(message, { spool: '/var/spool/qmail' })
  const id2: string = submitSync({ ...message, headers: [{ key: 'X-A', value: '1' }], priority: 2 })
  const id3: string = await submitRaw(Buffer.from('From: a@example.com\r\n\r\n'), { envelope: { to: 'b@example.org' }, notBefore: 1 })
  const id4: string = qmail.submitRawSync('From: a@example.com\r\n\r\n')
  setDefaultSpool(['/a', '/b'])
  setDefaultSpool('/a:/b')
  const codes: string[] = errorCodes().map((c) => c.code)
  const t = transport({ spool: '/tmp/s' })
  const name: 'qmail' = t.name
  try {
    submitSync(message)
  } catch (e) {
    const err = e as QmailError
    const field: string | null = err.field
    const transient: boolean = err.transient
    console.log(err.code, err.kind, field, transient)
  }
  console.log(id, id2, id3, id4, codes, name)
  // @ts-expect-error to is not a number
  submitSync({ from: 'a@example.com', to: 42 })
  // @ts-expect-error an Address needs its address
  submitSync({ from: { name: 'A' }, to: 'b@example.org' })
  // @ts-expect-error submit returns a Promise of the queue id, not the id
  const notAString: string = submit(message)
  console.log(notAString)
}
void use
