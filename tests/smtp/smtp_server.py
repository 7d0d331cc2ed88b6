#!/usr/bin/env python3
"""A recording, fault-injecting SMTP server for the dispatcher's tests (aiosmtpd).

Started by the Rust tests as a subprocess with `.venv/bin/python`. It listens on 127.0.0.1
(port 0 = any free port), writes `{"port": N}` to --ready-file once listening, and records:

- one JSON file per DATA in --record DIR (`tx-<seq>.json`): the reply given (`reply`), mail_from,
  mail_options, rcpt_tos, rcpt_options, `data_b64` (the DATA bytes after aiosmtpd removed the
  terminator and un-stuffed the dots), `wire_b64` (the DATA bytes exactly as received, with
  dot-stuffing and the final `.CRLF`), whether TLS was on, the AUTH login, the EHLO name;
- one JSON file per connection (`session-<n>.json`) when it closes: every byte the client
  sent (`raw_b64`), the bytes sent before TLS (`plain_b64`), each read as it arrived
  (`chunks_b64`, to see what was pipelined), the command lines, and the count of transactions.

Faults (all optional):
  --greeting-fail N        the first N connections get "421 busy" and are closed
  --mail-fail N:CODE       the first N MAIL commands get CODE (421 also closes the connection)
  --rcpt-reject ADDR:CODE  RCPT for ADDR gets CODE (repeatable)
  --data-fail N:CODE       the first N end-of-data get CODE
  --disconnect-after-data N  the first N transactions: read the whole DATA, close, no reply
  --drop-in-data N         the first N DATA: 354, read one line of the message, close
  --eod-delay SECS         wait before the reply to end-of-data
  --rcpt-delay SECS        wait before the reply to each RCPT (a slow transaction before DATA)
  --idle-timeout SECS      close an idle connection with 421 after SECS (aiosmtpd timeout)
  --no-pipelining          do not offer PIPELINING (offered by default; aiosmtpd reads
                           pipelined commands in order)
  --tls-cert/--tls-key     offer STARTTLS with this certificate (--implicit-tls: TLS at once)
  --starttls-454           offer STARTTLS but answer it 454
  --auth-user/--auth-pass  accept AUTH with these credentials (offered before TLS too)
  --auth-pre MECHS --auth-post MECHS   AUTH mechanisms offered before / after STARTTLS
"""
import argparse
import asyncio
import base64
import json
import os
import signal
import ssl
import sys
import time

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

STATE = {"sessions": 0, "mails": 0, "eods": 0, "disconnects": 0, "drops": 0}


def write_json(dirname, name, obj):
    tmp = os.path.join(dirname, "." + name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.rename(tmp, os.path.join(dirname, name))


class RecordingSMTP(SMTP):
    def __init__(self, handler, opts, **kw):
        super().__init__(handler, **kw)
        self.opts = opts
        self._raw = bytearray()
        self._plain = bytearray()
        self._chunks = []
        self._data_mark = 0
        self._refused = False
        self._all_auth = dict(self._auth_methods)
        STATE["sessions"] += 1
        self.session_no = STATE["sessions"]
        self.txs = 0

    def connection_made(self, transport):
        if STATE["sessions"] <= self.opts.greeting_fail:
            self._refused = True
            transport.write(b"421 busy, try later\r\n")
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, error):
        if self._refused:
            return
        if self.opts.record:
            lines = [l.decode("utf-8", "replace") for l in bytes(self._raw).split(b"\r\n")]
            write_json(self.opts.record, "session-%d.json" % self.session_no, {
                "session": self.session_no,
                "raw_b64": base64.b64encode(bytes(self._raw)).decode(),
                "plain_b64": base64.b64encode(bytes(self._plain)).decode(),
                "lines": lines,
                "chunks_b64": self._chunks,
                "transactions": self.txs,
                "time": time.time(),
            })
        super().connection_lost(error)

    def data_received(self, data):
        self._raw.extend(data)
        if len(self._chunks) < 10000:
            self._chunks.append(base64.b64encode(bytes(data)).decode())
        if self._tls_protocol is None:
            self._plain.extend(data)
        super().data_received(data)

    async def smtp_EHLO(self, hostname):
        o = self.opts
        mechs = o.auth_post if self._tls_protocol is not None else o.auth_pre
        if mechs:
            self._auth_methods = {k: v for k, v in self._all_auth.items() if k in mechs.split(",")}
        await super().smtp_EHLO(hostname)

    async def smtp_STARTTLS(self, arg):
        if self.opts.starttls_454:
            await self.push("454 4.7.0 TLS not available due to temporary reason")
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_DATA(self, arg):
        if STATE["drops"] < self.opts.drop_in_data and self.envelope is not None and self.envelope.rcpt_tos:
            STATE["drops"] += 1
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.readuntil(b"\r\n")  # the first line of the message, then drop
            self.transport.close()
            return
        self._data_mark = len(self._raw)
        await super().smtp_DATA(arg)


class Handler:
    def __init__(self, opts):
        self.opts = opts
        self.rcpt_reject = {}
        for spec in opts.rcpt_reject:
            addr, code = spec.rsplit(":", 1)
            self.rcpt_reject[addr.lower()] = int(code)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if not self.opts.no_pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        STATE["mails"] += 1
        if self.opts.mail_fail:
            n, code = self.opts.mail_fail.split(":")
            if STATE["mails"] <= int(n):
                if code == "421":
                    await server.push("421 4.3.2 service shutting down")
                    server.transport.close()
                    return "421 4.3.2 service shutting down"
                return "%s mail from refused for now" % code
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.opts.rcpt_delay:
            await asyncio.sleep(self.opts.rcpt_delay)
        code = self.rcpt_reject.get(address.lower())
        if code:
            return "%d %s recipient <%s> refused" % (code, "5.1.1" if code >= 500 else "4.2.0", address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        o = self.opts
        wire = bytes(server._raw[server._data_mark:])
        # up to the terminator: what follows it in the same read is the client's next
        # pipelined commands (RFC 2920 §3.1), not this message
        end = (b"\r\n" + wire).find(b"\r\n.\r\n")
        if end >= 0:
            wire = wire[: end + 3]
        STATE["eods"] += 1
        seq = STATE["eods"]  # this transaction's number: eod_delay lets others count meanwhile
        server.txs += 1
        reply = None
        disconnect = False
        if STATE["disconnects"] < o.disconnect_after_data:
            STATE["disconnects"] += 1
            disconnect = True
            reply = "(disconnected without a reply)"
        elif o.data_fail:
            n, code = o.data_fail.split(":")
            if seq <= int(n):
                reply = "%s data refused" % code
        if reply is None:
            if o.eod_delay:
                await asyncio.sleep(o.eod_delay)
            reply = "250 2.0.0 queued as %d" % seq
        if o.record:
            auth = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
            write_json(o.record, "tx-%06d.json" % seq, {
                "seq": seq,
                "session": server.session_no,
                "reply": reply,
                "mail_from": envelope.mail_from,
                "mail_options": envelope.mail_options,
                "rcpt_tos": envelope.rcpt_tos,
                "rcpt_options": envelope.rcpt_options,
                "data_b64": base64.b64encode(envelope.original_content).decode(),
                "wire_b64": base64.b64encode(wire).decode(),
                "tls": server._tls_protocol is not None or o.implicit_tls,
                "auth": auth,
                "ehlo": session.host_name,
                "time": time.time(),
            })
        if disconnect:
            server.transport.close()
        return reply


def authenticator(opts):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login.decode() == opts.auth_user
              and auth_data.password.decode() == opts.auth_pass)
        return AuthResult(success=ok, auth_data=auth_data if ok else None)
    return check


async def main(opts):
    loop = asyncio.get_running_loop()
    ctx = None
    if opts.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(opts.tls_cert, opts.tls_key)
    kw = dict(hostname="test.invalid", enable_SMTPUTF8=True, data_size_limit=0, timeout=opts.idle_timeout)
    if ctx and not opts.implicit_tls:
        kw["tls_context"] = ctx
    if opts.auth_user:
        kw.update(authenticator=authenticator(opts), auth_require_tls=False)
    handler = Handler(opts)
    server = await loop.create_server(
        lambda: RecordingSMTP(handler, opts, **kw),
        host="127.0.0.1", port=opts.port, ssl=ctx if opts.implicit_tls else None)
    port = server.sockets[0].getsockname()[1]
    if opts.ready_file:
        tmp = opts.ready_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"port": port, "pid": os.getpid()}, f)
        os.rename(tmp, opts.ready_file)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    server.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ready-file")
    p.add_argument("--record")
    p.add_argument("--greeting-fail", type=int, default=0)
    p.add_argument("--mail-fail")
    p.add_argument("--rcpt-reject", action="append", default=[])
    p.add_argument("--data-fail")
    p.add_argument("--disconnect-after-data", type=int, default=0)
    p.add_argument("--eod-delay", type=float, default=0)
    p.add_argument("--rcpt-delay", type=float, default=0)
    p.add_argument("--idle-timeout", type=float, default=600)
    p.add_argument("--no-pipelining", action="store_true")
    p.add_argument("--drop-in-data", type=int, default=0)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--implicit-tls", action="store_true")
    p.add_argument("--starttls-454", action="store_true")
    p.add_argument("--auth-user")
    p.add_argument("--auth-pass")
    p.add_argument("--auth-pre")
    p.add_argument("--auth-post")
    opts = p.parse_args()
    if opts.record:
        os.makedirs(opts.record, exist_ok=True)
    try:
        asyncio.run(main(opts))
    except KeyboardInterrupt:
        sys.exit(0)
