// Submits from Node as a web application does (tests/deploy, 80-deploy.sh): one message and
// one raw. Usage: node submit.js SPOOL RCPT; prints the ids.
const qmail = require('qmail')

async function main() {
  const [spool, rcpt] = process.argv.slice(2)
  console.log(await qmail.submit({
    from: 'Shop <noreply@example.com>', to: rcpt, subject: 'from Node', text: 'built in Node',
  }, { spool }))
  console.log(await qmail.submitRaw(
    'From: Shop <noreply@example.com>\r\nTo: ' + rcpt + '\r\nSubject: raw from Node\r\n\r\nraw\r\n',
    { spool }))
}
main().catch((e) => { console.error(e.code, e.field, e.message); process.exit(1) })
