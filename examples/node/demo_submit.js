// Submits the Node part of the demo into one spool (scripts/demo runs it).
//
// Two initiator paths: the qmail API (`submit`, a Promise; the work runs off the main thread),
// and nodemailer composing the message with qmail as its transport. Prints one line per message:
// INITIATOR<TAB>QUEUE_ID<TAB>RECIPIENTS.
//
// Usage: node demo_submit.js SPOOL   (after `npm ci && npm run build` in bindings/node)
'use strict'

const path = require('node:path')
const binding = path.join(__dirname, '..', '..', 'bindings', 'node')
const qmail = require(binding)
const nodemailer = require(require.resolve('nodemailer', { paths: [binding] }))

async function main(spool) {
  const id = await qmail.submit(
    {
      from: { name: 'Ops Team', address: 'ops@example.com' },
      to: ['Jane Doe <jane@example.org>'],
      replyTo: 'support@example.com',
      subject: 'Nightly report ready',
      text: 'The nightly report finished in 42 s.\n',
      html: '<p>The nightly report finished in <b>42 s</b>.</p><img src="cid:chart@demo">',
      attachments: [
        { filename: 'report.txt', content: 'rows: 1234\n' },
        { cid: 'chart@demo', filename: 'chart.png', contentType: 'image/png', content: Buffer.from('89504e470d0a1a0a', 'hex') },
      ],
    },
    { spool },
  )
  console.log(`node (qmail API)\t${id}\tjane@example.org`)

  const transporter = nodemailer.createTransport(qmail.transport({ spool }))
  const info = await transporter.sendMail({
    from: '"Café Ünïcode" <cafe@example.com>',
    to: 'bob@example.org, carol@example.org',
    bcc: 'archive@example.com',
    subject: 'Réservation confirmée ☕',
    text: 'Votre table est réservée pour 20h.\n',
    attachments: [{ filename: 'menu.bin', content: Buffer.alloc(4096, 7) }],
  })
  console.log(`node (nodemailer transport)\t${info.queueId}\t${info.envelope.to.join(',')}`)
}

main(process.argv[2]).catch((e) => {
  console.error(`demo_submit.js: ${e.code || ''} ${e.message}`)
  process.exit(1)
})
