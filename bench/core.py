#!/usr/bin/env python3
"""GNU Mailman Core in its container, under our master (its runners started
plainly; preloaded: `MAILMAN__MAILMAN__PRELOAD=true`; preloaded with what the
helper loaded left mortal, `MAILMAN__MAILMAN__IMMORTAL_OBJECTS=false`; and
preloaded with their pages offered to the kernel's same-page merging,
`MAILMAN__MAILMAN__MERGE_PAGES=true`, the host's KSM on for that run only)
and under Mailman's own, side by side in one run on this machine: the same image
(contrib/mailman-core, built by build.sh), the same mailman.cfg, the same
SMTP sink; only PID 1 differs (ours: `mailmanctl master`; Mailman's:
`master --force`, as docker-mailman starts it).

    python3 bench/core.py            # 3 rounds, each master once per round
    python3 bench/core.py --smoke    # 1 round (CI)

Per run, on a container that was started once before (database and a list
made once every runner had started, then stopped), from `docker start`:
  ready    every runner has started (each of the 12 has logged Mailman's
           "NAME runner started.", which it does once initialised, as it
           enters its loop: timed by Docker's time stamps of those lines)
           and LMTP (8024) and REST (8001) accept
  accept   LMTP and REST accept connections from the host (the rest may
           still start)
  message  a message sent by LMTP as soon as it is accepted is at the sink
  cpu      CPU seconds the container has used once it is ready
then, settled: the master's RSS, the container's total RSS and PSS (every
process), the runners' PSS (every process but PID 1: with preload, the
helper too); then the runners' PSS again once MESSAGES more messages have
reached the sink (1,000; 20 in a smoke run); and `docker stop`'s duration.
With KSM on (as root: /sys/kernel/mm/ksm, 1,000 pages per 20 ms, put back
as it was after the run), also the CPU the host's `ksmd` used from `docker
start` until the messages are through; 0 for the others.
"""

import argparse
import contextlib
import datetime
import json
import os
import re
import socket
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
elif what == "many":
    first, count = int(sys.argv[2]), int(sys.argv[3])
    lmtp = smtplib.LMTP("127.0.0.1", 8024)
    for n in range(first, first + count):
        msg = ("From: bart@example.org\r\nTo: test@example.com\r\nSubject: many %d\r\n"
               "Message-ID: <m%d@example.org>\r\n\r\nx\r\n" % (n, n))
        if lmtp.sendmail("bart@example.org", ["test@example.com"], msg):
            sys.exit(1)
    lmtp.quit()
elif what == "memory":
    import os
    rss = pss = 0
    master = master_pss = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = open("/proc/%s/status" % pid).read()
            kb = int(status.split("VmRSS:")[1].split()[0]) if "VmRSS:" in status else 0
            roll = open("/proc/%s/smaps_rollup" % pid).read()
            p = int(roll.split("\nPss:")[1].split()[0])
        except (OSError, IndexError, ValueError):
            continue
        if open("/proc/%s/cmdline" % pid).read().split("\0")[:2] == ["python3", "-"]:
            continue  # this script
        rss += kb
        pss += p
        if pid == "1":
            master, master_pss = kb, p
    print(json.dumps({"master_kib": master, "rss_kib": rss, "pss_kib": pss,
                      "runners_pss_kib": pss - master_pss}))
'''

# Name → (docker run options, the command's arguments).
MASTERS = {
    "ours": ([], []),  # the image's entrypoint: mailmanctl master
    "ours, preloaded": (["-e", "MAILMAN__MAILMAN__PRELOAD=true"], []),
    "ours, preloaded, objects left mortal": (["-e", "MAILMAN__MAILMAN__PRELOAD=true",
                                              "-e", "MAILMAN__MAILMAN__IMMORTAL_OBJECTS=false"], []),
    "ours, preloaded, pages merged": (["-e", "MAILMAN__MAILMAN__PRELOAD=true",
                                       "-e", "MAILMAN__MAILMAN__MERGE_PAGES=true"], []),
    "Mailman's master": (["--entrypoint", "/opt/mailman/bin/master", "--no-healthcheck"],
                         ["--force", "-C", "/etc/mailman.cfg"]),
}
MESSAGES = 1000
# Mailman's runners in mailman.cfg, and what each logs once initialised.
RUNNERS = 12
STARTED = re.compile(r"\b(\w+) runner started\.")


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


def sink_count(sink):
    r = sh("docker", "exec", sink, "sh", "-c", "ls /var/lib/mailman/sink/new | wc -l",
           check=False)
    return int(r.stdout.strip() or 0)


def now_utc():
    """The present, as `docker logs --since` takes it."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def all_started(container, since):
    """Whether every runner has logged that it started since `since`."""
    out = sh("docker", "logs", "--since", since, container, check=False)
    return len(set(STARTED.findall(out.stdout + out.stderr))) >= RUNNERS


def last_started(container, since):
    """When (host time, by Docker's time stamps of the log lines) the last
    of the runners logged that it started since `since`; None until every
    one has."""
    out = sh("docker", "logs", "-t", "--since", since, container, check=False)
    stamps = {}
    for line in (out.stdout + out.stderr).splitlines():
        m = STARTED.search(line)
        if m:
            stamp = line.split(" ", 1)[0].rstrip("Z")
            # Nanoseconds, which Python's parser does not take.
            head, _, frac = stamp.partition(".")
            stamps[m.group(1)] = datetime.datetime.fromisoformat(
                f"{head}.{frac[:6].ljust(6, '0')}+00:00").timestamp()
    return max(stamps.values()) if len(stamps) >= RUNNERS else None


def address(container):
    """The container's address on its network, as the host reaches it."""
    nets = json.loads(sh("docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}",
                         container).stdout)
    return next(iter(nets.values()))["IPAddress"]


def accepts(ip):
    """Whether LMTP and REST accept a connection from the host."""
    try:
        for port in (8024, 8001):
            socket.create_connection((ip, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def cpu_seconds(container):
    """CPU the container's cgroup has used (cgroup v1 or v2), in seconds."""
    cid = sh("docker", "inspect", "-f", "{{.Id}}", container).stdout.strip()
    for path, scale in ((f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage", 1e9),
                        (f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat", 1e6)):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith("cpu.stat"):
            text = text.split("usage_usec")[1].split()[0]
        return int(text) / scale
    return float("nan")


KSM = Path("/sys/kernel/mm/ksm")


@contextlib.contextmanager
def ksm(on):
    """The host's same-page merging on (1,000 pages per 20 ms) while the
    block runs, if `on`; put back as it was after."""
    if not on:
        yield
        return
    saved = {f: (KSM / f).read_text().strip() for f in ("run", "pages_to_scan")}
    (KSM / "pages_to_scan").write_text("1000")
    (KSM / "run").write_text("1")
    try:
        yield
    finally:
        (KSM / "run").write_text(saved["run"])
        (KSM / "pages_to_scan").write_text(saved["pages_to_scan"])


def ksmd_seconds():
    """CPU time of the kernel's `ksmd` thread so far (0 if there is none)."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "ksmd":
                fields = (comm.parent / "stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            continue
    return 0.0


def one(name, round_no, messages):
    with ksm("merged" in name):
        return one_run(name, round_no, messages)


def one_run(name, round_no, messages):
    extra, tail = MASTERS[name]
    tag = f"mmbench{round_no}{list(MASTERS).index(name)}"
    net, core, sink = tag, tag + "-core", "smtp"
    sh("docker", "rm", "-f", core, f"{tag}-smtp", check=False)
    sh("docker", "network", "create", net, check=False)
    sh("docker", "run", "-d", "--name", f"{tag}-smtp", "--network", net, "--network-alias", sink,
       "--entrypoint", "/opt/mailman/bin/python3", IMAGE, "-m", "aiosmtpd", "-n", "-l",
       "0.0.0.0:8025", "-c", "aiosmtpd.handlers.Mailbox", "/var/lib/mailman/sink")
    since = now_utc()
    sh("docker", "run", "-d", "--name", core, "--network", net, *extra, IMAGE, *tail)
    try:
        # Every runner up before the stop: one stopped as it initialises may
        # leave Mailman's dbcreate.lck behind for the next start to wait out.
        poll(lambda: flow(core, "ready").returncode == 0 and all_started(core, since))
        if flow(core, "setup").returncode != 0:
            raise RuntimeError("REST set-up failed")
        sh("docker", "stop", "-t", "30", core)
        r = {}
        ksmd = ksmd_seconds()
        since = now_utc()
        # Timed from the host, at no cost to the container: connections
        # from the host, and the time stamps Docker gives the runners' log
        # lines (a `docker exec` per poll cost the container's start up to
        # 0.7 s of a 3 s start, measured).
        t0 = time.time()
        sh("docker", "start", core)
        ip = address(core)
        poll(lambda: accepts(ip), step=0.01)
        r["accept_s"] = time.time() - t0
        stamp = None

        def all_logged():
            nonlocal stamp
            stamp = last_started(core, since)
            return stamp is not None

        poll(all_logged, step=0.05)
        r["ready_s"] = max(stamp, t0 + r["accept_s"]) - t0
        r["cpu_s"] = cpu_seconds(core)
        poll(lambda: flow(core, "send", str(round_no)).returncode == 0, step=0.05)
        poll(lambda: delivered(f"{tag}-smtp", round_no), step=0.05)
        r["message_s"] = time.time() - t0
        time.sleep(10)  # settled
        mem = json.loads(flow(core, "memory").stdout)
        r["master_mib"] = mem["master_kib"] / 1024
        r["rss_mib"] = mem["rss_kib"] / 1024
        r["pss_mib"] = mem["pss_kib"] / 1024
        r["runners_mib"] = mem["runners_pss_kib"] / 1024
        before = sink_count(f"{tag}-smtp")
        if flow(core, "many", "1000000", str(messages)).returncode != 0:
            raise RuntimeError("sending many messages failed")
        poll(lambda: sink_count(f"{tag}-smtp") >= before + messages, limit=1800, step=1)
        time.sleep(5)
        mem = json.loads(flow(core, "memory").stdout)
        r["runners_after_mib"] = mem["runners_pss_kib"] / 1024
        r["ksmd_s"] = ksmd_seconds() - ksmd
        t = time.monotonic()
        sh("docker", "stop", "-t", "30", core)
        r["stop_s"] = time.monotonic() - t
        return r
    finally:
        sh("docker", "rm", "-f", "-v", core, f"{tag}-smtp", check=False)
        sh("docker", "network", "rm", net, check=False)


ROWS = [("`docker start` → every runner started, LMTP and REST accept", "ready_s", "s"),
        ("`docker start` → LMTP and REST accept", "accept_s", "s"),
        ("`docker start` → first message at the sink", "message_s", "s"),
        ("CPU used by then (`docker start` → ready)", "cpu_s", "s"),
        ("runners' PSS (all but PID 1), settled", "runners_mib", "MiB"),
        ("runners' PSS after 1,000 more messages", "runners_after_mib", "MiB"),
        ("the host's `ksmd` CPU, `docker start` → after the messages", "ksmd_s", "s"),
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
            r = one(name, i + 1, 20 if args.smoke else MESSAGES)
            rows[name].append(r)
            print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    if args.smoke:
        print("smoke run complete")
        return
    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in rows.items()}
    theirs = "Mailman's master"
    mine = [n for n in MASTERS if n != theirs]
    out = ["| figure | " + " | ".join(MASTERS) + " | "
           + " | ".join(f"{n} ÷ Mailman's" for n in mine) + " |",
           "|---" * (1 + len(MASTERS) + len(mine)) + "|"]
    for label, key, unit in ROWS:
        cells = []
        for name in MASTERS:
            vals = [r[key] for r in rows[name]]
            cells.append(f"{med[name][key]:.2f} {unit} [{min(vals):.2f}..{max(vals):.2f}]")
        ratios = [med[n][key] / med[theirs][key] if med[theirs][key] else float("nan")
                  for n in mine]
        out.append(f"| {label} | {' | '.join(cells)} | "
                   + " | ".join(f"{x:.2f}" for x in ratios) + " |")
    report = "\n".join(out)
    (ROOT / "target" / "bench-core-report.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    sys.exit(main())
