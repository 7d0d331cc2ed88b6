// The `qmail` package entry (ES module): the same exports as qmail.js.
import qmail from './qmail.js'

export const {
  errorCodes,
  setDefaultSpool,
  spoolDirectories,
  status,
  RawSubmit,
  submit,
  submitSync,
  submitRaw,
  submitRawSync,
  submitRawStream,
  transport,
} = qmail
export default qmail
