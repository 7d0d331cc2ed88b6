"""The end-to-end test of qmail (issue 7, "End-to-end test"). Run by scripts/test.d/60-e2e.sh.

    .venv/bin/python tests/e2e/run.py [--workdir DIR] [--messages 3000]

Two web hosts (`web1`, `web2`: each submitter runs in its own UTS namespace with that host
name when `unshare --uts` works, so the queue ids end in `.web1` / `.web2`), each with a C
(libqmail), a Python and a Node initiator process, submit MESSAGES messages in total, a third of
them with attachments of random bytes, into two spools (QMAIL_SPOOL=A:B; every 10th message
names its spool). Two `qmail-dispatcher run` processes serve both spools through two relays of
equal priority: a private Postfix (scripts/postfix-instance, delivering into a Maildir) and the
aiosmtpd recorder (tests/e2e/recorder.py around tests/smtp/smtp_server.py). Submits and
dispatch overlap: the dispatchers start first.

Schedule: each submitter sends two thirds of its messages, then waits at a gate. When half of
all messages are delivered, the recorder is stopped (gracefully: see recorder.py, which closes
the dispatcher's duplicate window); the rest of the first two thirds go through Postfix alone.
When they are all delivered, the recorder is started again on the same port and the gate is
opened: the last third goes through both relays again.

Why the recorder is the relay stopped, and why the run must see exactly one copy per recipient:
the dispatcher is at-least-once, and a duplicate needs the connection to drop after the relay
has the whole message and before its reply reaches the dispatcher. `postfix stop` (SIGTERM to
its smtpd processes) may land between smtpd's commit of the queue file and its 250, a window of
microseconds but a real one. The recorder's graceful stop (recorder.py) refuses new
connections at once and closes each session only between transactions, after the reply to
end-of-data was written: a transaction is either recorded and acknowledged, or neither. Postfix
keeps running throughout, and the dispatchers are stopped only once every spool is empty, so
no window opens anywhere and any duplicate is a bug.

Assertion groups (the last line is `N passed, N failed`; exit status 1 when any failed):
submitters, relay stop/restart, spools empty, nothing failed, exactly once per recipient,
headers, bodies, attachments, envelope, traffic spread, dispatcher shutdown.
"""

import argparse
import base64
import collections
import email
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from email import policy

ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
# QMAIL_DISPATCHER: the binary to run (scripts/test.d/60-e2e.sh builds the `dist` profile,
# which 80-deploy.sh packages, so the suite builds the optimized dispatcher once)
DISPATCHER = os.environ.get("QMAIL_DISPATCHER") or os.path.join(TARGET, "release", "qmail-dispatcher")
CDIST = os.path.join(TARGET, "c")
PY = os.path.join(ROOT, ".venv", "bin", "python")
HOSTS = ("web1", "web2")
LANGS = ("c", "py", "js")
OUTAGE_MIN_MS = 3000

T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(what, cond, timeout, interval=0.1):
    """Polls cond() until it is true; raises after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def group(self, name, problems, detail=""):
        if problems:
            self.failed += 1
            print(f"not ok - {name}: {len(problems)} problem(s)")
            for p in problems[:15]:
                print(f"    {p}")
            if len(problems) > 15:
                print(f"    ... and {len(problems) - 15} more")
        else:
            self.passed += 1
            print(f"ok - {name}" + (f" ({detail})" if detail else ""))


class Procs:
    """Every process this test starts, each in its own process group, stopped at exit."""

    def __init__(self):
        self.procs = {}
        self.postfix_dir = None

    def start(self, name, argv, log_path, env=None, cwd=None):
        f = open(log_path, "ab")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                             env=env, cwd=cwd, start_new_session=True)
        f.close()
        self.procs[name] = p
        return p

    def stop(self, name, sig=signal.SIGTERM, timeout=40):
        p = self.procs.get(name)
        if p is None:
            return None
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                return "killed"
        return p.returncode

    def cleanup(self):
        for name in list(self.procs):
            p = self.procs[name]
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        if self.postfix_dir:
            subprocess.run([os.path.join(ROOT, "scripts", "postfix-instance"), "stop", self.postfix_dir],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.postfix_dir = None


class DeliveryLogs:
    """Reads the dispatchers' delivery logs (one JSON line per attempt) as they grow."""

    def __init__(self, paths):
        self.paths = paths
        self.offsets = {p: 0 for p in paths}
        self.records = []  # (dispatcher index, record)

    def poll(self):
        for i, p in enumerate(self.paths):
            try:
                with open(p, "rb") as f:
                    f.seek(self.offsets[p])
                    data = f.read()
            except FileNotFoundError:
                continue
            end = data.rfind(b"\n") + 1
            for line in data[:end].splitlines():
                self.records.append((i, json.loads(line)))
            self.offsets[p] += end
        return self

    def delivered(self):
        return sum(1 for _, r in self.records if r.get("code") == 250)


def status(config):
    out = subprocess.run([DISPATCHER, "--config", config, "status", "--json"], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)["spools"]


def pending(spools_status):
    return sum(s[k]["count"] for s in spools_status for k in ("ready", "active", "deferred", "scheduled"))


def build_c_submitter(work):
    exe = os.path.join(work, "bin", "submit-c")
    os.makedirs(os.path.dirname(exe), exist_ok=True)
    subprocess.run(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-o", exe,
                    os.path.join(ROOT, "tests", "e2e", "submit.c"),
                    "-I", os.path.join(CDIST, "include"), "-L", os.path.join(CDIST, "lib"), "-lqmail",
                    "-Wl,-rpath," + os.path.join(CDIST, "lib")], check=True)
    return exe


def host_wrapper(host):
    """argv prefix running a program with the host name `host` (a UTS namespace), if possible."""
    ok = subprocess.run(["unshare", "--uts", "true"], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL).returncode == 0 if shutil.which("unshare") else False
    if not ok:
        return [], False
    return ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh"], True


def dispatcher_config(path, work, spools, pf_port, rec_port, n):
    with open(path, "w") as f:
        f.write(f"""\
spools = {json.dumps(spools)}
workers = 4
ehlo_name = "dispatcher{n}.e2e.qmail.test"
log_format = "json"
delivery_log = "{work}/delivery-{n}.log"
rescan_ms = 1000
idle_close_ms = 2000
shutdown_grace_secs = 20

[retry]
first_secs = 1
max_secs = 2
jitter = 0.1

[[relay]]
host = "127.0.0.1"
port = {pf_port}
tls = "none"
priority = 0
weight = 1
max_messages_per_connection = 100
cooldown_secs = 1

[[relay]]
host = "127.0.0.1"
port = {rec_port}
tls = "none"
priority = 0
weight = 1
max_messages_per_connection = 100
cooldown_secs = 1
""")


def postfix_dir_of(work):
    """The Postfix instance of a work dir: under /tmp (the postfix user must reach it), named
    after the work dir so that a rerun finds it again."""
    return "/tmp/qmail-e2e-postfix-" + hashlib.sha1(os.path.abspath(work).encode()).hexdigest()[:12]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=os.path.join(TARGET, "e2e"))
    ap.add_argument("--messages", type=int, default=3000)
    args = ap.parse_args()
    work = os.path.realpath(args.workdir)
    per = args.messages // (len(HOSTS) * len(LANGS))
    phase1 = per * 2 // 3
    total = per * len(HOSTS) * len(LANGS)

    res = Results()
    procs = Procs()

    def on_signal(sig, _frame):
        procs.cleanup()
        sys.exit(128 + sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        run(work, per, phase1, total, res, procs)
    except Exception as e:  # a timeout or a broken step: a failed group, and the summary
        import traceback
        traceback.print_exc()
        res.group("run to completion", [f"{type(e).__name__}: {e}"])
    finally:
        procs.cleanup()
    pf_dir = postfix_dir_of(work)
    ok = res.passed and not res.failed
    # the Postfix instance (about 70 MB under /tmp, named after the work dir) is kept for a
    # look after a failure only: every fresh checkout names a new one, and CI machines filled up
    if ok and os.path.isdir(pf_dir):
        shutil.rmtree(pf_dir, ignore_errors=True)
        try:
            os.unlink(os.path.join(work, "postfix"))
        except OSError:
            pass
    print(f"{res.passed} passed, {res.failed} failed")
    return 0 if ok else 1


def run(work, per, phase1, total, res, procs):
    # ---------------------------------------------------------------- setup
    # Postfix's daemons run as the postfix user, which must reach the instance directory: a
    # checkout under a 0700 directory (mktemp -d) would hide it. The instance lives under /tmp
    # (named after the work dir, so a rerun finds it again) and work/postfix links to it.
    pf_dir = postfix_dir_of(work)
    subprocess.run([os.path.join(ROOT, "scripts", "postfix-instance"), "stop", pf_dir],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(pf_dir, ignore_errors=True)
    for d in ("manifest", "gate", "att", "logs", "bin"):
        os.makedirs(os.path.join(work, d))
    os.symlink(pf_dir, os.path.join(work, "postfix"))
    spools = [os.path.join(work, "spool-a"), os.path.join(work, "spool-b")]
    c_exe = build_c_submitter(work)
    pf_port, rec_port = free_port(), free_port()
    while rec_port == pf_port:
        rec_port = free_port()
    log(f"work dir {work}; {total} messages; Postfix on 127.0.0.1:{pf_port}, recorder on 127.0.0.1:{rec_port}")

    procs.postfix_dir = pf_dir
    subprocess.run([os.path.join(ROOT, "scripts", "postfix-instance"), "start", pf_dir, str(pf_port)], check=True)
    maildir = os.path.join(pf_dir, "Maildir")

    def start_recorder(n):
        ready = os.path.join(work, f"recorder-{n}.ready")
        procs.start(f"recorder{n}", [PY, os.path.join(ROOT, "tests", "e2e", "recorder.py"), "--port", str(rec_port),
                                     "--record", os.path.join(work, f"record-{n}"), "--ready-file", ready],
                    os.path.join(work, "logs", f"recorder-{n}.log"))
        wait_for(f"recorder {n} to listen", lambda: os.path.exists(ready), 30)

    start_recorder(1)

    configs = []
    for n in (1, 2):
        cfg = os.path.join(work, f"dispatcher-{n}.toml")
        dispatcher_config(cfg, work, spools, pf_port, rec_port, n)
        subprocess.run([DISPATCHER, "--config", cfg, "check-config"], check=True, stdout=subprocess.DEVNULL)
        configs.append(cfg)
    env = dict(os.environ, QMAIL_LOG="info", QMAIL_SPOOL=":".join(spools))
    for n, cfg in enumerate(configs, 1):
        procs.start(f"dispatcher{n}", [DISPATCHER, "--config", cfg, "run"],
                    os.path.join(work, "logs", f"dispatcher-{n}.log"), env=env)
    dlogs = DeliveryLogs([os.path.join(work, f"delivery-{n}.log") for n in (1, 2)])

    # ---------------------------------------------------------------- submit and dispatch
    node_env = dict(env)
    use_uts = False
    for host in HOSTS:
        wrap, use_uts = host_wrapper(host)
        common = [host, str(per), str(phase1), work] + spools
        progs = {
            "c": [c_exe] + common,
            "py": [PY, os.path.join(ROOT, "tests", "e2e", "submit.py")] + common,
            "js": ["node", os.path.join(ROOT, "tests", "e2e", "submit.js")] + common,
        }
        for lang in LANGS:
            procs.start(f"submit-{lang}-{host}", wrap + progs[lang],
                        os.path.join(work, "logs", f"submit-{lang}-{host}.log"), env=node_env)
    submitters = [f"submit-{lang}-{host}" for host in HOSTS for lang in LANGS]
    log(f"started 2 dispatchers and {len(submitters)} submitters"
        + (" (host names web1/web2 in UTS namespaces)" if use_uts else " (unshare unavailable: one host name)"))

    def submitter_died():
        bad = [s for s in submitters if procs.procs[s].poll() not in (None, 0)]
        if bad:
            raise RuntimeError(f"submitter(s) failed: {bad}; see {work}/logs")

    def recorder_txs(n):
        return len(glob.glob(os.path.join(work, f"record-{n}", "tx-*.json")))

    def postfix_copies():
        return len(os.listdir(os.path.join(maildir, "new"))) + len(os.listdir(os.path.join(maildir, "cur")))

    # 1. half of all messages delivered: stop the recorder (gracefully)
    def half_delivered():
        submitter_died()
        return dlogs.poll().delivered() >= total // 2
    wait_for("half of the messages to be delivered", half_delivered, 240)
    before_stop = {"recorder_txs": recorder_txs(1), "postfix_copies": postfix_copies(),
                   "delivered": dlogs.delivered()}
    log(f"{before_stop['delivered']} delivered ({before_stop['recorder_txs']} by the recorder, "
        f"{before_stop['postfix_copies']} recipient copies in the Maildir): stopping the recorder")
    rc_stop = procs.stop("recorder1")
    stopped_ms = time.time() * 1000
    # transactions in flight at the stop were let finish (and recorded): count from here
    after_stop_txs = recorder_txs(1)
    refused_after_stop = not port_open(rec_port)

    # 2. Postfix alone until the first two thirds are all delivered, then restart the recorder
    #    and open the gate
    waiting = [os.path.join(work, "gate", f"{lang}-{host}.waiting") for host in HOSTS for lang in LANGS]

    def phase1_done():
        submitter_died()
        # down for a few seconds at least: several 1 s cooldowns expire and the dispatchers try
        # the dead relay again, find it refusing and fail over each time
        return (time.time() * 1000 - stopped_ms > OUTAGE_MIN_MS
                and all(os.path.exists(w) for w in waiting) and pending(status(configs[0])) == 0)
    wait_for("the first two thirds to be delivered through Postfix alone", phase1_done, 240, 0.25)
    during = {"delivered": dlogs.poll().delivered(), "recorder_txs": recorder_txs(1)}
    log(f"{during['delivered']} delivered, recorder down: restarting it")
    restart_ms = time.time() * 1000
    start_recorder(2)
    open(os.path.join(work, "gate", "go"), "w").close()

    # 3. the last third; wait for the submitters, then for every spool to be empty
    def submitters_done():
        submitter_died()
        return all(procs.procs[s].poll() == 0 for s in submitters)
    wait_for("the submitters to finish", submitters_done, 300, 0.2)
    log("submitters finished")
    manifest = []
    for host in HOSTS:
        for lang in LANGS:
            with open(os.path.join(work, "manifest", f"{lang}-{host}.jsonl"), encoding="utf-8") as f:
                manifest += [json.loads(line) for line in f]
    wait_for("every spool to be empty", lambda: pending(status(configs[0])) == 0, 240, 0.25)
    final_status = status(configs[0])
    log(f"spools empty: {dlogs.poll().delivered()} delivered")

    # the relays: every recipient copy handed over, Postfix's own queue empty
    expected_copies = sum(len(m["to"]) + len(m["cc"]) + len(m["bcc"]) for m in manifest)

    def postfix_queue():
        n = 0
        for d in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(os.path.join(pf_dir, "queue", d)):
                n += len(files)
        return n

    rcpt_counts = {}

    def recorder_copies():
        for path in glob.glob(os.path.join(work, "record-*", "tx-*.json")):
            if path not in rcpt_counts:
                with open(path) as f:
                    rcpt_counts[path] = len(json.load(f)["rcpt_tos"])
        return sum(rcpt_counts.values())

    try:
        wait_for("Postfix to deliver what it accepted", lambda: postfix_queue() == 0
                 and postfix_copies() + recorder_copies() >= expected_copies, 120, 0.25)
    except TimeoutError as e:
        log(str(e))
    log("relays settled; stopping the dispatchers")
    rc_disp = {n: procs.stop(f"dispatcher{n}") for n in (1, 2)}
    rc_rec2 = procs.stop("recorder2")
    dlogs.poll()
    procs.cleanup()  # stops Postfix

    # ---------------------------------------------------------------- assertions
    by_id = {m["id"]: m for m in manifest}

    # submitters
    problems = []
    if len(manifest) != total:
        problems.append(f"{len(manifest)} messages in the manifests, expected {total}")
    if len(by_id) != len(manifest):
        problems.append("duplicate X-E2E-Id in the manifests")
    qids = [m["qid"] for m in manifest]
    if len(set(qids)) != len(qids):
        problems.append("duplicate queue ids")
    if use_uts:
        problems += [f"{m['id']}: queue id {m['qid']} does not end in .{m['host']}" for m in manifest
                     if not m["qid"].endswith("." + m["host"])]
    with_att = sum(1 for m in manifest if m["attachments"])
    want_att = len(HOSTS) * len(LANGS) * len(range(0, per, 3))  # every third message (i % 3 == 0)
    if with_att != want_att:
        problems.append(f"{with_att} messages with attachments, expected {want_att} (a third)")
    apis = collections.Counter(m["api"] for m in manifest)
    res.group("submitters: 2 hosts x C/Python/Node, all exited 0, manifests complete", problems,
              f"{len(manifest)} messages, {with_att} with attachments, {dict(apis)}")

    # relay stop and restart
    problems = []
    if rc_stop != 0:
        problems.append(f"the recorder's graceful stop exited {rc_stop}")
    if not refused_after_stop:
        problems.append("the recorder's port still accepted connections after the stop")
    if before_stop["recorder_txs"] == 0:
        problems.append("the recorder had no traffic before the stop")
    if during["recorder_txs"] != after_stop_txs:
        problems.append("the recorder recorded transactions after it had stopped")
    if during["delivered"] <= before_stop["delivered"]:
        problems.append("nothing was delivered while the recorder was down")
    outage = [r for _, r in dlogs.records if r.get("code") == 250 and stopped_ms < r["ts_ms"] < restart_ms]
    via_rec = [r["id"] for r in outage if r["relay"].endswith(f":{rec_port}")]
    if via_rec:
        problems.append(f"delivered through the stopped recorder: {via_rec[:5]}")
    if recorder_txs(2) == 0:
        problems.append("the restarted recorder got no traffic")
    if rc_rec2 != 0:
        problems.append(f"the restarted recorder's stop exited {rc_rec2}")
    res.group("relay stopped halfway and restarted", problems,
              f"recorder: {before_stop['recorder_txs']} transactions before the stop "
              f"(+{after_stop_txs - before_stop['recorder_txs']} finished during it), "
              f"{len(outage)} deliveries through Postfix alone, {recorder_txs(2)} after the restart")

    # spools
    problems = []
    for s in final_status:
        for k in ("ready", "active", "deferred", "scheduled"):
            if s[k]["count"]:
                problems.append(f"{s['spool']}: {s[k]['count']} {k}")
    for sp in spools:
        for k in ("ready", "active", "deferred", "scheduled", "tmp"):
            left = os.listdir(os.path.join(sp, k)) if os.path.isdir(os.path.join(sp, k)) else []
            if left:
                problems.append(f"{sp}/{k}/ holds {left[:3]}")
    res.group("nothing left ready, active, deferred or scheduled (status --json and the directories)", problems)

    problems = []
    for s in final_status:
        for k in ("failed", "corrupt"):
            if s[k]["count"]:
                problems.append(f"{s['spool']}: {s[k]['count']} {k}")
    for sp in spools:
        for k in ("failed", "corrupt"):
            d = os.path.join(sp, k)
            if os.path.isdir(d) and os.listdir(d):
                problems.append(f"{d}/ holds {os.listdir(d)[:3]}")
    bad_codes = [r for _, r in dlogs.records if r.get("code") not in (250, None) and not 400 <= r["code"] < 500]
    problems += [f"{r['id']}: permanent reply {r['code']} {r.get('reply')}" for r in bad_codes]
    res.group("nothing failed (failed/ and corrupt/ empty, no 5xx)", problems)

    # ---------------------------------------------------------------- what the relays received
    copies = []  # (relay, envelope_from, rcpt, raw bytes)
    rec_problems = []
    for path in sorted(glob.glob(os.path.join(work, "record-*", "tx-*.json"))):
        with open(path) as f:
            tx = json.load(f)
        if not tx["reply"].startswith("250"):
            rec_problems.append(f"{path}: replied {tx['reply']}")
        raw = base64.b64decode(tx["data_b64"])
        for rcpt in tx["rcpt_tos"]:
            copies.append(("recorder", tx["mail_from"], rcpt, raw))
    for sub in ("new", "cur"):
        for name in sorted(os.listdir(os.path.join(maildir, sub))):
            with open(os.path.join(maildir, sub, name), "rb") as f:
                raw = f.read()
            copies.append(("postfix", None, None, raw))
    log(f"checking {len(copies)} received copies")

    hash_cache = {}

    def sha_of(att):
        if "sha256" in att:
            return att["sha256"]
        if att["path"] not in hash_cache:
            with open(att["path"], "rb") as f:
                data = f.read()
            if len(data) != att["size"]:
                raise RuntimeError(f"{att['path']}: {len(data)} bytes, the manifest says {att['size']}")
            hash_cache[att["path"]] = hashlib.sha256(data).hexdigest()
        return hash_cache[att["path"]]

    def addrs(header):
        if header is None:
            return []
        return [[a.display_name, a.addr_spec] for a in header.addresses]

    count = collections.Counter()
    unknown, hdr_bad, body_bad, att_bad, env_bad = [], [], [], [], []
    mids = collections.defaultdict(set)
    relay_of = collections.Counter()
    for relay, mail_from, rcpt, raw in copies:
        msg = email.message_from_bytes(raw, policy=policy.default)
        eid = msg.get("X-E2E-Id")
        m = by_id.get(str(eid)) if eid else None
        if relay == "postfix":
            rcpt = msg.get("X-Original-To")
            rcpt = str(rcpt) if rcpt is not None else None
            if str(msg.get("Delivered-To")) != rcpt:
                env_bad.append(f"{eid}: Delivered-To {msg.get('Delivered-To')} != X-Original-To {rcpt}")
            rp = msg.get("Return-Path")
            mail_from = str(rp).strip("<>") if rp is not None else None
        if m is None:
            unknown.append(f"{relay}: a message with X-E2E-Id {eid!r} to {rcpt}")
            continue
        count[(m["id"], rcpt)] += 1
        relay_of[relay] += 1
        where = f"{m['id']} ({m['api']}) to {rcpt} via {relay}"
        if mail_from != m["from"][1]:
            env_bad.append(f"{where}: MAIL FROM {mail_from!r}, expected {m['from'][1]!r}")
        # headers
        want = {"From": [m["from"]], "To": m["to"], "Cc": m["cc"]}
        for name, value in want.items():
            got = addrs(msg.get(name))
            if got != value:
                hdr_bad.append(f"{where}: {name} {got!r}, expected {value!r}")
        checks = [("Subject", m["subject"]), ("X-E2E-Host", m["host"])]
        if m["message_id"]:
            checks.append(("Message-ID", m["message_id"]))
        for name, value in checks:
            if str(msg.get(name)) != value or len(msg.get_all(name, [])) != 1:
                hdr_bad.append(f"{where}: {name} {msg.get_all(name)!r}, expected {value!r}")
        if msg.get("Bcc") is not None:
            hdr_bad.append(f"{where}: a Bcc header reached the relay")
        if msg.get("Date") is None:
            hdr_bad.append(f"{where}: no Date")
        mids[m["id"]].add(str(msg.get("Message-ID")))
        # body
        text = (f"Hello,\nE2E-MARKER {m['id']}\n.a line that starts with a dot\n..two dots\n.\nend\n")
        body = msg.get_body(("plain",))
        got_text = body.get_content().replace("\r\n", "\n") if body is not None else None
        if got_text is None or got_text.rstrip("\n") != text.rstrip("\n"):
            body_bad.append(f"{where}: text/plain {got_text!r}")
        # attachments
        got_atts = []
        for part in msg.iter_attachments():
            payload = part.get_payload(decode=True) or b""
            got_atts.append((part.get_filename(), part.get_content_type(), len(payload),
                             hashlib.sha256(payload).hexdigest()))
        want_atts = [(a["filename"], a["content_type"], a["size"], sha_of(a)) for a in m["attachments"]]
        if got_atts != want_atts:
            att_bad.append(f"{where}: attachments {got_atts!r}, expected {want_atts!r}")

    expected = collections.Counter()
    for m in manifest:
        for r in [a for _, a in m["to"]] + [a for _, a in m["cc"]] + m["bcc"]:
            expected[(m["id"], r)] += 1
    problems = list(rec_problems) + unknown
    problems += [f"{k[0]} to {k[1]}: never arrived" for k in expected if count[k] == 0]
    problems += [f"{k[0]} to {k[1]}: arrived {count[k]} times" for k in expected if count[k] > 1]
    problems += [f"{k[0]} to {k[1]}: not a recipient, arrived {n} times" for k, n in count.items() if k not in expected]
    res.group("every message arrived exactly once per recipient (Message id + envelope recipient, both relays)",
              problems, f"{sum(expected.values())} recipient copies: {dict(relay_of)}")

    for m in manifest:
        if not m["message_id"] and len(mids[m["id"]]) > 1:
            hdr_bad.append(f"{m['id']}: different Message-IDs across its copies: {mids[m['id']]}")
    all_mids = [next(iter(v)) for v in mids.values() if len(v) == 1]
    if len(set(all_mids)) != len(all_mids):
        hdr_bad.append("two messages share a Message-ID")
    res.group("headers as submitted (From, To, Cc, Subject, X-E2E-*, Message-ID; no Bcc)", hdr_bad)
    res.group("text bodies as submitted (dot lines included)", body_bad)
    n_att = sum(len(m["attachments"]) for m in manifest)
    res.group("attachments identical (file name, type, size, SHA-256 of the decoded bytes)", att_bad,
              f"{n_att} attachments, {sum(a['size'] for m in manifest for a in m['attachments']) // 1024} KiB")
    res.group("envelope: MAIL FROM, and Postfix's X-Original-To = Delivered-To", env_bad)

    # traffic spread: both dispatchers, both spools, both relays; explicit spools respected
    problems = []
    ok = [(i, r) for i, r in dlogs.records if r.get("code") == 250]
    per_disp = collections.Counter(i for i, _ in ok)
    per_spool = collections.Counter(r["spool"] for _, r in ok)
    for i in (0, 1):
        if per_disp[i] == 0:
            problems.append(f"dispatcher {i + 1} delivered nothing")
    for sp in spools:
        if per_spool[sp] == 0:
            problems.append(f"nothing delivered from {sp}")
    if relay_of["postfix"] == 0 or relay_of["recorder"] == 0:
        problems.append(f"a relay got nothing: {dict(relay_of)}")
    spool_of = {}
    for _, r in ok:
        spool_of.setdefault(r["id"], set()).add(r["spool"])
    for m in manifest:
        if m["qid"] not in spool_of:
            problems.append(f"{m['id']}: no delivery record for queue id {m['qid']}")
        elif m["spool"] and spool_of[m["qid"]] != {m["spool"]}:
            problems.append(f"{m['id']}: named spool {m['spool']}, delivered from {spool_of[m['qid']]}")
    res.group("traffic spread over both dispatchers, both spools and both relays; named spools kept", problems,
              f"dispatchers {per_disp[0]}/{per_disp[1]}, spools {per_spool[spools[0]]}/{per_spool[spools[1]]}")

    problems = [f"dispatcher {n} exited {rc}" for n, rc in rc_disp.items() if rc != 0]
    refused = 0
    for n in (1, 2):
        with open(os.path.join(work, "logs", f"dispatcher-{n}.log"), encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    ev = json.loads(line)
                except ValueError:
                    problems.append(f"dispatcher {n}: not a JSON log line: {line[:200]!r}")
                    continue
                if ev.get("level") == "ERROR":
                    problems.append(f"dispatcher {n}: {line.strip()[:300]}")
                if f":{rec_port}" in line and "unusable" in line:
                    refused += 1
    if refused == 0:
        problems.append("no dispatcher logged the stopped recorder as unusable (was it stopped under load?)")
    res.group("dispatchers: no error logged, the stopped relay seen and skipped, exit 0 on SIGTERM", problems,
              f"{refused} failovers away from the stopped recorder")


if __name__ == "__main__":
    sys.exit(main())
