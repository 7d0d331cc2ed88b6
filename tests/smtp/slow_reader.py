"""A raw SMTP relay that reads DATA slowly for its first 3 s (16 KiB per 10 ms, small receive
buffer), then at full speed, for the
fence before the final dot (dispatcher-bin/tests/faults.rs). It answers every command with
250 (354 to DATA) and records per transaction whether the final dot arrived:
one line `{"bytes": N, "dot": true|false}` per DATA in the record file. Writes its port to
the port file once listening.

usage: slow_reader.py PORTFILE RECORD
"""
import json
import socket
import sys
import threading
import time


def serve(c, record):
    c.sendall(b"220 slow.test ESMTP\r\n")
    buf = b""
    data = None
    t_data = 0.0
    while True:
        chunk = c.recv(16384)
        if not chunk:
            if data is not None:
                with open(record, "a") as f:
                    f.write(json.dumps({"bytes": len(data), "dot": False}) + "\n")
            return
        if data is not None:
            data += chunk
            if time.time() - t_data < 3.0:
                time.sleep(0.01)
            if data.endswith(b"\r\n.\r\n"):
                with open(record, "a") as f:
                    f.write(json.dumps({"bytes": len(data), "dot": True}) + "\n")
                c.sendall(b"250 2.0.0 queued\r\n")
                data = None
            continue
        buf += chunk
        while b"\r\n" in buf:
            line, buf = buf.split(b"\r\n", 1)
            cmd = line[:4].upper()
            if cmd in (b"EHLO", b"HELO"):
                c.sendall(b"250-slow.test\r\n250 8BITMIME\r\n")
            elif cmd == b"DATA":
                c.sendall(b"354 go ahead\r\n")
                with open(record + ".started", "w") as f:
                    f.write("1")
                data = buf
                t_data = time.time()
                buf = b""
                break
            elif cmd == b"QUIT":
                c.sendall(b"221 bye\r\n")
                c.close()
                return
            else:
                c.sendall(b"250 ok\r\n")


def main():
    port_file, record = sys.argv[1], sys.argv[2]
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(s.getsockname()[1]))
    import os
    os.rename(port_file + ".tmp", port_file)
    while True:
        c, _ = s.accept()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        threading.Thread(target=serve, args=(c, record), daemon=True).start()


if __name__ == "__main__":
    main()
