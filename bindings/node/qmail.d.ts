// Types of the `qmail` package entry: the generated native types (index.d.ts), plus the
// hand-written glue of qmail.js (the nodemailer transport) and the shape of thrown errors.
export * from './index'

import type { Readable } from 'node:stream'
import type { RawOptions } from './index'

/** Options of {@link transport}. */
export interface TransportOptions {
  /** The spool directory, instead of the default spool(s) (`setDefaultSpool`, `QMAIL_SPOOL`). */
  spool?: string
  /** The mode of spool files written into `spool` (default: the core's; needs `spool`). */
  fileMode?: number
}

/** What nodemailer's `sendMail` resolves to with the qmail transport (nodemailer's info shape). */
export interface SentMessageInfo {
  /** The Message-ID header nodemailer wrote, `<left@right>`. */
  messageId: string
  /** The envelope nodemailer derived (`from` is `false` when the message has no sender). */
  envelope: { from: string | false; to: string[] }
  /** Every envelope recipient: all are accepted into the spool (the relay answers later). */
  accepted: string[]
  /** Always empty: a spool refuses a whole message (sendMail rejects), never one recipient. */
  rejected: string[]
  /** Always empty. */
  pending: string[]
  /** `250 queued as <queueId>`. */
  response: string
  /** The qmail queue id (spool file name), as `submit` returns it. */
  queueId: string
}

/**
 * A nodemailer transport: `nodemailer.createTransport(qmail.transport({ spool }))`.
 * nodemailer composes the message and streams it (`createReadStream()`); qmail spools the
 * stream in bounded memory with nodemailer's envelope and the message's priority. `sendMail`
 * fails with the errors of `submitRaw`.
 */
export declare function transport(options?: TransportOptions): {
  name: 'qmail'
  version: string
  send(mail: any, callback: (err: Error | null, info?: SentMessageInfo) => void): void
  /** Resolves true when every spool a message would go to is writable; rejects (`QMAIL_SPOOL_UNAVAILABLE`, field `spool`) naming the first that is not. With a callback, calls it instead. */
  verify(): Promise<true>
  verify(callback: (err: Error | null, success?: true) => void): void
}

/**
 * Spools a readable stream of an RFC 5322 message in bounded memory (see `RawSubmit`): the
 * same checks and bytes as `submitRaw` of the whole message. Resolves to the queue id and the
 * message's Message-ID.
 */
export declare function submitRawStream(stream: Readable, options?: RawOptions): Promise<{ queueId: string; messageId: string | null }>

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
