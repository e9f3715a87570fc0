#!/usr/bin/env python3
"""A master under a mixed storm for a while: SIGHUP and SIGUSR1 to the
master, `restart` and `restart RUNNER` through the CLI, `kill -9` of random
runners, `status` and `status --json` calls, all interleaved at random. The
master's RSS and open fds are sampled throughout: they must stay flat.

    python3 bench/soak.py              # 10 minutes
    python3 bench/soak.py --minutes 1
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "x86_64-unknown-linux-musl" / "release" / "mailman"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = tmp / "mailman.toml"
        cfg.write_text(
            f'[mailman]\nvar_dir = "{tmp / "var"}"\n[logging]\nstderr = false\n'
            '[runner.default]\nrestart_delay = "10ms"\nmax_restarts = 1000000\n'
            '[runner.in]\ninstances = 4\n[runner.out]\ninstances = 4\n')
        cli = [str(BIN), "-C", str(cfg)]
        subprocess.run(cli + ["start", "-q"], check=True)
        master = int((tmp / "var" / "master.pid").read_text())
        time.sleep(1)
        samples = []
        actions = {}
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        next_sample = t0
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - t0, rss_kib(master), fds(master)))
                next_sample += 10
            what = random.choice(["hup", "usr1", "restart", "restart-one", "kill", "status",
                                  "json"])
            actions[what] = actions.get(what, 0) + 1
            if what == "hup":
                os.kill(master, signal.SIGHUP)
            elif what == "usr1":
                os.kill(master, signal.SIGUSR1)
            elif what == "restart":
                subprocess.run(cli + ["restart", "-q"], stdout=subprocess.DEVNULL)
            elif what == "restart-one":
                subprocess.run(cli + ["restart", "-q", random.choice(["in", "out:1"])],
                               stdout=subprocess.DEVNULL)
            elif what == "kill":
                kids = children(master)
                if kids:
                    try:
                        os.kill(random.choice(kids), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            elif what == "status":
                r = subprocess.run(cli + ["status"], stdout=subprocess.DEVNULL, timeout=10)
                assert r.returncode == 0, "status failed"
            else:
                r = subprocess.run(cli + ["status", "--json"], capture_output=True, timeout=10)
                json.loads(r.stdout)
            time.sleep(random.uniform(0.005, 0.05))
        samples.append((time.monotonic() - t0, rss_kib(master), fds(master)))
        subprocess.run(cli + ["stop", "-q"], check=True)
    first, last = samples[1] if len(samples) > 1 else samples[0], samples[-1]
    rss = [s[1] for s in samples[1:]] or [samples[0][1]]
    fd = [s[2] for s in samples[1:]] or [samples[0][2]]
    print(f"{args.minutes:g} minutes, {sum(actions.values())} actions: "
          + ", ".join(f"{k} {v}" for k, v in sorted(actions.items())))
    print(f"RSS KiB: first {first[1]}, last {last[1]}, min {min(rss)}, max {max(rss)}, "
          f"median {statistics.median(rss):.0f}")
    print(f"fds: first {first[2]}, last {last[2]}, min {min(fd)}, max {max(fd)}")
    if max(fd) > first[2] + 8:
        sys.exit("open fds grew")


if __name__ == "__main__":
    main()
