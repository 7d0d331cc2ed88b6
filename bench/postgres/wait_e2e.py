#!/usr/bin/env python3
"""Waits for the end-to-end run of bench/postgres/run.sh: until the delivery log LOG has N
lines (the caller adds the lines it had before the run), reading new bytes only (one process polling every 10 ms, so
the wait costs next to no CPU on a 2-core machine, unlike a shell loop forking `wc` and `ls`).
Prints two wall-clock times (epoch seconds): when the local spool's ready/ was first seen
empty (the forwarder's end; 0 if never), and when the N-th line arrived. Exits 1 if one of
PIDS exits first.

    wait_e2e.py LOG N READY_DIR PID...
"""
import os
import sys
import time

log, n, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pids = [int(p) for p in sys.argv[4:]]
seen, pos, fwd_done, tick = 0, 0, 0.0, 0
f = None
while True:
    if f is None and os.path.exists(log):
        f = open(log, "rb")
    if f is not None:
        chunk = f.read()
        if chunk:
            seen += chunk.count(b"\n")
            if seen >= n:
                print(f"{fwd_done:.6f} {time.time():.6f}")
                sys.exit(0)
    tick += 1
    if tick % 10 == 0:
        if not fwd_done and ready:
            with os.scandir(ready) as it:
                if next(it, None) is None:
                    fwd_done = time.time()
        for p in pids:
            try:
                os.kill(p, 0)
                with open(f"/proc/{p}/stat") as st:
                    if st.read().rsplit(")", 1)[1].split()[0] == "Z":
                        raise ProcessLookupError
            except ProcessLookupError:
                print(f"process {p} exited early", file=sys.stderr)
                sys.exit(1)
    time.sleep(0.01)
