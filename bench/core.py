#!/usr/bin/env python3
"""GNU Mailman Core in its container, under our master and under Mailman's
own, side by side in one run on this machine: the same image
(contrib/mailman-core, built by build.sh), the same mailman.cfg, the same
SMTP sink; only PID 1 differs (ours: `mailmanctl master`; Mailman's:
`master --force`, as docker-mailman starts it).

    python3 bench/core.py            # 3 rounds, each master once per round
    python3 bench/core.py --smoke    # 1 round (CI)

Per run, on a container that was started once before (database and a list
made, then stopped), from `docker start`:
  ready    LMTP (8024) and REST (8001) accept connections
  message  a message sent by LMTP as soon as it is accepted is at the sink
then, settled: the master's RSS, the container's total RSS and PSS (every
process), and `docker stop`'s duration.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "mailman-core:local"

FLOW = r'''
import base64, json, smtplib, socket, sys, urllib.request
what = sys.argv[1]
if what == "ready":
    for port in (8024, 8001):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
elif what == "setup":
    auth = "Basic " + base64.b64encode(b"restadmin:restpass").decode()
    def rest(method, path, data):
        req = urllib.request.Request("http://127.0.0.1:8001/3.1" + path, method=method,
            data=json.dumps(data).encode(),
            headers={"Authorization": auth, "Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=60).read()
    rest("POST", "/domains", {"mail_host": "example.com"})
    rest("POST", "/lists", {"fqdn_listname": "test@example.com"})
    rest("POST", "/members", {"list_id": "test.example.com", "subscriber": "anne@example.org",
         "pre_verified": True, "pre_confirmed": True, "pre_approved": True})
    rest("PATCH", "/lists/test.example.com/config", {"default_nonmember_action": "accept"})
elif what == "send":
    n = sys.argv[2]
    msg = ("From: bart@example.org\r\nTo: test@example.com\r\nSubject: bench %s\r\n"
           "Message-ID: <b%s@example.org>\r\n\r\nx\r\n" % (n, n))
    lmtp = smtplib.LMTP("127.0.0.1", 8024)
    sys.exit(1 if lmtp.sendmail("bart@example.org", ["test@example.com"], msg) else 0)
elif what == "memory":
    import os
    rss = pss = 0
    master = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = open("/proc/%s/status" % pid).read()
            kb = int(status.split("VmRSS:")[1].split()[0]) if "VmRSS:" in status else 0
            roll = open("/proc/%s/smaps_rollup" % pid).read()
            p = int(roll.split("\nPss:")[1].split()[0])
        except (OSError, IndexError, ValueError):
            continue
        if "python3 -" in open("/proc/%s/cmdline" % pid).read().replace("\0", " "):
            continue  # this script
        rss += kb
        pss += p
        if pid == "1":
            master = kb
    print(json.dumps({"master_kib": master, "rss_kib": rss, "pss_kib": pss}))
'''

MASTERS = {
    "ours": [],  # the image's entrypoint: mailmanctl master
    "Mailman's master": ["--entrypoint", "/opt/mailman/bin/master", "--no-healthcheck"],
}
MAILMAN_ARGS = ["--force", "-C", "/etc/mailman.cfg"]


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def flow(container, *args):
    return subprocess.run(["docker", "exec", "-i", container, "python3", "-", *args],
                          input=FLOW, capture_output=True, text=True)


def poll(cond, limit=300.0, step=0.1):
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        time.sleep(step)


def delivered(sink, n):
    return sh("docker", "exec", sink, "grep", "-rlx", f"Subject: \\[Test\\] bench {n}",
              "/var/lib/mailman/sink", check=False).returncode == 0


def one(name, extra, round_no):
    tag = f"mmbench{round_no}{'o' if name == 'ours' else 'm'}"
    net, core, sink = tag, tag + "-core", "smtp"
    sh("docker", "rm", "-f", core, f"{tag}-smtp", check=False)
    sh("docker", "network", "create", net, check=False)
    sh("docker", "run", "-d", "--name", f"{tag}-smtp", "--network", net, "--network-alias", sink,
       "--entrypoint", "/opt/mailman/bin/python3", IMAGE, "-m", "aiosmtpd", "-n", "-l",
       "0.0.0.0:8025", "-c", "aiosmtpd.handlers.Mailbox", "/var/lib/mailman/sink")
    tail = MAILMAN_ARGS if extra else []
    sh("docker", "run", "-d", "--name", core, "--network", net, *extra, IMAGE, *tail)
    try:
        poll(lambda: flow(core, "ready").returncode == 0)
        if flow(core, "setup").returncode != 0:
            raise RuntimeError("REST set-up failed")
        sh("docker", "stop", "-t", "30", core)
        r = {}
        t0 = time.monotonic()
        sh("docker", "start", core)
        poll(lambda: flow(core, "ready").returncode == 0, step=0.05)
        r["ready_s"] = time.monotonic() - t0
        poll(lambda: flow(core, "send", str(round_no)).returncode == 0, step=0.05)
        poll(lambda: delivered(f"{tag}-smtp", round_no), step=0.05)
        r["message_s"] = time.monotonic() - t0
        time.sleep(10)  # settled
        mem = json.loads(flow(core, "memory").stdout)
        r["master_mib"] = mem["master_kib"] / 1024
        r["rss_mib"] = mem["rss_kib"] / 1024
        r["pss_mib"] = mem["pss_kib"] / 1024
        t = time.monotonic()
        sh("docker", "stop", "-t", "30", core)
        r["stop_s"] = time.monotonic() - t
        return r
    finally:
        sh("docker", "rm", "-f", "-v", core, f"{tag}-smtp", check=False)
        sh("docker", "network", "rm", net, check=False)


ROWS = [("`docker start` → LMTP and REST accept", "ready_s", "s"),
        ("`docker start` → first message at the sink", "message_s", "s"),
        ("`docker stop`", "stop_s", "s"),
        ("master (PID 1) RSS", "master_mib", "MiB"),
        ("container, all processes: RSS", "rss_mib", "MiB"),
        ("container, all processes: PSS", "pss_mib", "MiB")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rounds = 1 if args.smoke else args.rounds
    sh("bash", str(ROOT / "contrib/mailman-core/build.sh"), IMAGE)
    rows = {name: [] for name in MASTERS}
    for i in range(rounds):
        # Alternate who goes first, so that the machine's drift spreads.
        order = list(MASTERS) if i % 2 == 0 else list(reversed(MASTERS))
        for name in order:
            r = one(name, MASTERS[name], i + 1)
            rows[name].append(r)
            print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    if args.smoke:
        print("smoke run complete")
        return
    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in rows.items()}
    out = ["| figure | ours | Mailman's master | ours ÷ Mailman's |", "|---|---|---|---|"]
    for label, key, unit in ROWS:
        cells = []
        for name in MASTERS:
            vals = [r[key] for r in rows[name]]
            cells.append(f"{med[name][key]:.2f} {unit} [{min(vals):.2f}..{max(vals):.2f}]")
        ratio = med["ours"][key] / med["Mailman's master"][key]
        out.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio:.2f} |")
    report = "\n".join(out)
    (ROOT / "target" / "bench-core-report.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    sys.exit(main())
