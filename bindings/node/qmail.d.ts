// Types of the `qmail` package entry: the generated native types (index.d.ts), plus the
// hand-written glue of qmail.js (the nodemailer transport) and the shape of thrown errors.
export * from './index'

/** Options of {@link transport}. */
export interface TransportOptions {
  /** The spool directory, instead of the default spool(s) (`setDefaultSpool`, `QMAIL_SPOOL`). */
  spool?: string
}

/** What nodemailer's `sendMail` resolves to with the qmail transport. */
export interface SentMessageInfo {
  /** The envelope nodemailer derived (`from` is `false` when the message has no sender). */
  envelope: { from: string | false; to: string[] }
  /** The Message-ID header nodemailer wrote, `<left@right>`. */
  messageId: string
  /** The qmail queue id (spool file name), as `submit` returns it. */
  queueId: string
  /** `queued as <queueId>`. */
  response: string
}

/**
 * A nodemailer transport: `nodemailer.createTransport(qmail.transport({ spool }))`.
 * nodemailer composes the message; qmail spools it durably (as `submitRaw`, with nodemailer's
 * envelope). `sendMail` fails with the errors of `submitRaw`.
 */
export declare function transport(options?: TransportOptions): {
  name: 'qmail'
  version: string
  send(mail: any, callback: (err: Error | null, info?: SentMessageInfo) => void): void
}

/** A qmail failure, as thrown by the sync calls and rejected by the async ones. */
export interface QmailError extends Error {
  /** `QMAIL_<KIND>`, one per core error kind: see `errorCodes()`. */
  code: string
  /** The core's stable kind name, e.g. `InvalidAddress`. */
  kind: string
  /** The option at fault (`from`, `replyTo`, `headers.X-Trace`, `attachments[2]`, `envelope.to`), or null. */
  field: string | null
  /** True when a later try (or another spool) may succeed. */
  transient: boolean
}
