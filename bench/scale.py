#!/usr/bin/env python3
"""Slices spread over several masters on one machine (issue 16,
docs/scaling-out.md): 8 masters share one queue directory; `in` and `out`
have 16 slices each. Masters 0-3 are active, each running 4 slices of `in`
and 4 of `out`; masters 4-7 are their standbys, with the same slices (they
wait, "waiting-for-owner"). `in` moves entries to `out`, whose handler
records each entry it handles. While the entries flow, a random active
master is killed (SIGKILL) every few seconds; its standby takes its slices
over, and the harness starts the killed one again (as an orchestrator
would), which becomes the new standby.

Measured: throughput (entries handled per second, from the first inject
until every entry is recorded), entries handled twice, entries lost (must
be 0), and the take-over time (the kill until the standby runs all 8
slices, polled every 10 ms; `owner_retry = "1s"` bounds it).

    python3 bench/scale.py            # 100,000 entries (a few minutes)
    python3 bench/scale.py --smoke    # 2,000 entries, 2 kills (CI: asserts nothing is lost)
"""

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "x86_64-unknown-linux-musl" / "release" / "mailman"
MASTERS = 8
SLICES = 16
GROUPS = MASTERS // 2


def config(tmp, i, queue, record):
    group = i % GROUPS
    mine = range(group * SLICES // GROUPS, (group + 1) * SLICES // GROUPS)
    slices = [f"in:{s}:{SLICES}" for s in mine] + [f"out:{s}:{SLICES}" for s in mine]
    off = "".join(f"[runner.{n}]\nstart = false\n" for n in
                  ["archive", "bounces", "command", "lmtp", "pipeline", "rest", "retry",
                   "task", "virgin", "digest"])
    cfg = tmp / f"m{i}.toml"
    cfg.write_text(f"""[mailman]
var_dir = "{tmp / f'm{i}'}"
queue_dir = "{queue}"
slices = {json.dumps(slices)}
owner_retry = "1s"
stop_timeout = "5s"
[logging]
stderr = false
{off}
[runner.in]
instances = {SLICES}
next = "out"
sleep_time = "20ms"
[runner.out]
instances = {SLICES}
sleep_time = "20ms"
handler = ["/bin/sh", "-c", "echo $MAILMAN_ENTRY >> {record}"]
""")
    return [str(BIN), "-C", str(cfg)]


def states(cli):
    out = subprocess.run(cli + ["status", "--json"], capture_output=True, text=True).stdout
    try:
        return [r["state"] for r in json.loads(out).get("runners", [])]
    except ValueError:
        return []


def pid_of(cli):
    out = subprocess.run(cli + ["status", "--json"], capture_output=True, text=True).stdout
    try:
        return json.loads(out)["master"]["pid"]
    except (ValueError, KeyError):
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    total = 2000 if args.smoke else 100_000
    kills = 2 if args.smoke else 12
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        queue = tmp / "queue"
        record = tmp / "record"
        record.touch()
        clis = [config(tmp, i, queue, record) for i in range(MASTERS)]
        # The active masters first, then their standbys.
        for cli in clis:
            subprocess.run(cli + ["start", "-q"], check=True)
        deadline = time.monotonic() + 60
        while not all(states(c) == ["running"] * 8 for c in clis[:GROUPS]):
            if time.monotonic() > deadline:
                sys.exit("the active masters did not start")
            time.sleep(0.05)
        while not all(states(c) == ["waiting-for-owner"] * 8 for c in clis[GROUPS:]):
            if time.monotonic() > deadline:
                sys.exit("the standbys did not wait")
            time.sleep(0.05)
        active = {g: clis[g] for g in range(GROUPS)}
        standby = {g: clis[g + GROUPS] for g in range(GROUPS)}

        entry = tmp / "entry"
        entry.write_bytes(b"Subject: x\n\n" + b"x" * 1000 + b"\n")
        names = []
        t0 = time.monotonic()

        def feed():
            # While the masters work and die: batches of 1,000.
            while len(names) < total:
                n = min(1000, total - len(names))
                out = subprocess.run(clis[0][:3] + ["inject", "in"] + [str(entry)] * n,
                                     check=True, capture_output=True, text=True).stdout
                names.extend(out.split())

        feeder = threading.Thread(target=feed)
        feeder.start()
        takeovers = []
        rnd = random.Random(16)
        done_kills = 0
        handled = set()
        while True:
            lines = record.read_text().split()
            handled = set(lines)
            if not feeder.is_alive() and set(names) <= handled:
                break
            if time.monotonic() - t0 > (60 if args.smoke else 1800):
                break
            if done_kills < kills and len(handled) > (done_kills + 1) * total // (kills + 2):
                g = rnd.randrange(GROUPS)
                pid = pid_of(active[g])
                if pid:
                    k0 = time.monotonic()
                    os.kill(pid, signal.SIGKILL)
                    while states(standby[g]) != ["running"] * 8:
                        if time.monotonic() - k0 > 30:
                            sys.exit("no take-over within 30 s")
                        time.sleep(0.01)
                    takeovers.append(time.monotonic() - k0)
                    # The orchestrator starts the killed master again: it
                    # is the new standby.
                    while subprocess.run(active[g] + ["start", "-q"]).returncode != 0:
                        time.sleep(0.1)
                    active[g], standby[g] = standby[g], active[g]
                    done_kills += 1
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        feeder.join()
        for cli in clis:
            subprocess.run(cli + ["stop", "-q"])
        lines = record.read_text().split()
        counts = {}
        for n in lines:
            counts[n] = counts.get(n, 0) + 1
        twice = sum(1 for n in names if counts.get(n, 0) > 1)
        lost = sum(1 for n in names if n not in counts)
        print(f"| masters | slices of in / out | entries | kills | throughput | handled twice | lost | "
              f"take-over (kill → standby runs all 8 slices) |")
        print("|---|---|---|---|---|---|---|---|")
        tk = (f"median {statistics.median(takeovers) * 1000:.0f} ms "
              f"[{min(takeovers) * 1000:.0f}..{max(takeovers) * 1000:.0f}]") if takeovers else "–"
        print(f"| {MASTERS} (4 active, 4 standby) | {SLICES} / {SLICES} | {total:,} | {done_kills} | "
              f"{total / elapsed:,.0f} entries/s ({elapsed:.1f} s) | {twice} | {lost} | {tk} |")
        if lost:
            sys.exit(f"{lost} entries lost")


if __name__ == "__main__":
    main()
