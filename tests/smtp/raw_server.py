#!/usr/bin/env python3
"""A scripted raw SMTP server for misbehaving-relay tests (no SMTP library: exact bytes).

Usage: raw_server.py --scenario FILE --ready-file FILE --record FILE

The scenario (JSON) is {"connections": [[step, ...], ...]}: connection i runs list i (the last
list again for later connections). Steps, in order:

  {"send": "220 hi\\r\\n"}            write these bytes (latin-1) at once
  {"trickle": "250 ok\\r\\n", "every": 0.5}   write them one byte every `every` seconds
  {"expect": "EHLO"}                 read one line; it must start with this (case-insensitive),
                                     else the connection is closed and the mismatch recorded
  {"data": true}                     read the message up to CRLF.CRLF
  {"starttls": true}                 TLS handshake (server side) with --tls-cert/--tls-key
  {"sleep": 2.5}                     wait
  {"close": true}                    close the connection now

After the steps the server reads and records lines until the client closes (answering
QUIT with 221 and anything else with 502), so "what the client sent" is always complete.
The record file (JSON, rewritten after every event) holds per connection: the lines received,
the messages received (size as on the wire with its last CRLF, whether the final dot came,
the first 200 bytes, still stuffed), and errors.
"""

import argparse
import json
import socket
import ssl
import threading
import time

lock = threading.Lock()
record = {"connections": []}


def save(path):
    with lock:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
        import os

        os.replace(tmp, path)


class Conn:
    def __init__(self, sock, rec, args):
        self.sock = sock
        self.buf = b""
        self.rec = rec
        self.args = args

    def readline(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        text = line.rstrip(b"\r").decode("latin-1")
        self.rec["lines"].append(text)
        save(self.args.record)
        return text

    def read_data(self):
        data = b""
        while True:
            i = self.buf.find(b"\r\n.\r\n")
            if data == b"" and self.buf.startswith(b".\r\n"):
                self.buf = self.buf[3:]
                self.rec["messages"].append({"size": 0, "dot": True, "head": ""})
                return
            if i >= 0:
                data += self.buf[:i]
                self.buf = self.buf[i + 5 :]
                head = data[:200].decode("latin-1")
                self.rec["messages"].append({"size": len(data) + 2, "dot": True, "head": head})
                save(self.args.record)
                return
            data += self.buf[:-4] if len(self.buf) > 4 else b""
            self.buf = self.buf[-4:] if len(self.buf) > 4 else self.buf
            chunk = self.sock.recv(65536)
            if not chunk:
                self.rec["messages"].append({"size": len(data + self.buf), "dot": False})
                save(self.args.record)
                raise EOFError
            self.buf += chunk


def serve(sock, steps, rec, args):
    c = Conn(sock, rec, args)
    try:
        for st in steps:
            if "send" in st:
                c.sock.sendall(st["send"].encode("latin-1"))
            elif "trickle" in st:
                for b in st["trickle"].encode("latin-1"):
                    c.sock.sendall(bytes([b]))
                    time.sleep(st.get("every", 0.5))
            elif "expect" in st:
                line = c.readline()
                if not line.upper().startswith(st["expect"].upper()):
                    rec["errors"].append("expected %s, got %r" % (st["expect"], line))
                    return
            elif "data" in st:
                c.read_data()
            elif "starttls" in st:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(args.tls_cert, args.tls_key)
                c.sock = ctx.wrap_socket(c.sock, server_side=True)
                rec["tls"] = True
            elif "sleep" in st:
                time.sleep(st["sleep"])
            elif "close" in st:
                return
        while True:
            line = c.readline()
            if line.upper().startswith("QUIT"):
                c.sock.sendall(b"221 bye\r\n")
                return
            c.sock.sendall(b"502 not scripted\r\n")
    except (EOFError, OSError, ssl.SSLError) as e:
        if not isinstance(e, EOFError):
            rec["errors"].append(repr(e))
    finally:
        rec["closed"] = True
        save(args.record)
        try:
            c.sock.close()
        except OSError:
            pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--scenario", required=True)
    p.add_argument("--ready-file", required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    args = p.parse_args()
    with open(args.scenario) as f:
        conns = json.load(f)["connections"]
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    save(args.record)
    with open(args.ready_file + ".tmp", "w") as f:
        json.dump({"port": ls.getsockname()[1]}, f)
    import os

    os.replace(args.ready_file + ".tmp", args.ready_file)
    n = 0
    while True:
        s, _ = ls.accept()
        rec = {"lines": [], "messages": [], "errors": [], "tls": False, "closed": False}
        with lock:
            record["connections"].append(rec)
        steps = conns[min(n, len(conns) - 1)]
        n += 1
        threading.Thread(target=serve, args=(s, steps, rec, args), daemon=True).start()


if __name__ == "__main__":
    main()
