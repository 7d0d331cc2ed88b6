"""The aiosmtpd relay of the end-to-end test: tests/smtp/smtp_server.py's recorder, with a
graceful stop.

    python recorder.py --port N --record DIR --ready-file FILE

It reuses smtp_server.py's session and handler classes (one `tx-NNNNNN.json` per DATA in DIR,
with the reply, the RCPT list and the message bytes), without faults, and adds what the
end-to-end test needs to stop a relay halfway without creating a duplicate:

SIGTERM (graceful stop)
  1. the listening socket is closed at once: new connections are refused, so the dispatchers
     put this relay in cooldown and fail over to the other one;
  2. each open session is closed only while it is *not* inside DATA handling. A session is
     "inside" from the moment its DATA command is taken until the reply to end-of-data has been
     written and drained (see `smtp_DATA` below). The transaction is recorded (tx file) inside
     that span, so every recorded transaction has had its 250 handed to the kernel before the
     connection closes (asyncio's transport.close() also flushes what is buffered), and every
     transaction cut short was never recorded nor acknowledged: the dispatcher sees a dropped
     connection *before* the end-of-data reply and sends the message again elsewhere, which is
     not a duplicate. The duplicate window of the dispatcher (connection lost after the final
     "." and before the reply) is therefore never opened by this stop.
  3. the process exits once every session is closed (30 s at most).

The port is fixed (--port), so a restarted recorder takes the relay's place again; use a new
--record DIR per start (the tx sequence starts again at 1).
"""

import argparse
import asyncio
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "smtp"))
import smtp_server as S  # noqa: E402

LIVE = set()


class GracefulSMTP(S.RecordingSMTP):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.in_data = False

    def connection_made(self, transport):
        super().connection_made(transport)
        LIVE.add(self)

    def connection_lost(self, error):
        LIVE.discard(self)
        super().connection_lost(error)

    async def smtp_DATA(self, arg):
        # smtp_server.py keeps every byte of a session for its session-N.json; a dispatcher
        # sends hundreds of messages per connection here, so keep only the current transaction
        # (the client sends nothing more until our 354, so nothing of this DATA is dropped)
        del self._raw[:]
        del self._plain[:]
        self._chunks.clear()
        self.in_data = True
        try:
            # reads the data, records the transaction (handle_DATA), then pushes the reply and
            # awaits the drain of the write
            await super().smtp_DATA(arg)
        finally:
            self.in_data = False


def options(record):
    # the attributes smtp_server.py's classes read: no faults, no TLS, no AUTH
    return argparse.Namespace(
        record=record, greeting_fail=0, mail_fail=None, rcpt_reject=[], data_fail=None,
        disconnect_after_data=0, eod_delay=0, idle_timeout=600, no_pipelining=False,
        drop_in_data=0, tls_cert=None, tls_key=None, implicit_tls=False, starttls_454=False,
        auth_user=None, auth_pass=None, auth_pre=None, auth_post=None, rcpt_delay=0)


async def main(args):
    loop = asyncio.get_running_loop()
    opts = options(args.record)
    handler = S.Handler(opts)
    kw = dict(hostname="recorder.e2e.invalid", enable_SMTPUTF8=True, data_size_limit=0, timeout=600)
    server = await loop.create_server(lambda: GracefulSMTP(handler, opts, **kw),
                                      host="127.0.0.1", port=args.port, reuse_address=True)
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        f.write('{"port": %d, "pid": %d}' % (server.sockets[0].getsockname()[1], os.getpid()))
    os.rename(tmp, args.ready_file)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    server.close()  # 1. no new connections
    deadline = loop.time() + 30
    while LIVE and loop.time() < deadline:  # 2. close each session between transactions
        for session in list(LIVE):
            if not session.in_data and not session.transport.is_closing():
                session.transport.close()  # flushes the buffered replies first
        await asyncio.sleep(0.005)
    print(f"recorder: stopped, {len(LIVE)} sessions still open", file=sys.stderr)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--ready-file", required=True)
    a = p.parse_args()
    os.makedirs(a.record, exist_ok=True)
    asyncio.run(main(a))
