// The `qmail` package entry (ES module): the same exports as qmail.js.
import qmail from './qmail.js'

export const { errorCodes, setDefaultSpool, submit, submitSync, submitRaw, submitRawSync, status, transport } = qmail
export default qmail
