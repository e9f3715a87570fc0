#!/usr/bin/env python3
"""What the HTTP endpoint, stall detection and scheduled jobs cost (issues 14
and 15), in one run:

  - the master's idle wake-ups (all its threads) over 10 s and its RSS, with
    twelve runners: endpoint off; endpoint on; endpoint on and
    `stall_after` set on every runner; and with two jobs (hourly, daily);
  - a scrape of /metrics: median over 50, empty queues, then with 10,000
    Mailman entries (`.pck`) in one queue;
  - reading that queue of 10,000 entries per slice, ours (`queues --json`,
    a whole process) against Mailman 3.3.10's own `Switchboard.get_files`
    on the same directory (in-process, Python; the cached venv of
    bench.py), each for 4 slices.

    python3 bench/observe.py            # 10 s idle windows
    python3 bench/observe.py --smoke    # 1 s windows, 5 scrapes (CI: no figure asserted)
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The harness's own /proc readers (this script's folder is on sys.path).
from bench import children, rss_kib, switches  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "x86_64-unknown-linux-musl" / "release" / "mailman"
VENV = ROOT / "target" / "mailman-core-3.3.10"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(port, path):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data


def master(tmp, extra):
    port = free_port()
    cfg = tmp / "mailman.toml"
    cfg.write_text(f'[mailman]\nvar_dir = "{tmp / "var"}"\n[logging]\nstderr = false\n'
                   + extra.replace("PORT", str(port)))
    cli = [str(BIN), "-C", str(cfg)]
    subprocess.run(cli + ["start", "-q"], check=True)
    pid = int((tmp / "var" / "master.pid").read_text())
    deadline = time.monotonic() + 30
    while len(children(pid)) < 12:
        if time.monotonic() > deadline:
            sys.exit("runners did not start")
        time.sleep(0.05)
    time.sleep(1)
    return cli, pid, port


def idle(pid, seconds):
    before = switches(pid)
    time.sleep(seconds)
    return (switches(pid) - before) * 10 / seconds


def scrape_ms(port, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        body = get(port, "/metrics")
        times.append((time.perf_counter() - t) * 1000)
        assert body.startswith(b"HTTP/1.1 200"), body[:100]
    return statistics.median(times)


def fill(queue, n):
    queue.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (queue / ("%d.%06d+%040x.pck" % (1700000000 + i, i, (i * 0x9E3779B97F4A7C15) % (1 << 160)))).touch()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    window = 1 if args.smoke else 10
    scrapes = 5 if args.smoke else 50
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    rows = []
    for label, extra in [
        ("endpoint off", ""),
        ("endpoint on", '[http]\nlisten = "127.0.0.1:PORT"\n'),
        ("endpoint on, stall_after = 10m", '[http]\nlisten = "127.0.0.1:PORT"\n'
                                           '[runner.default]\nstall_after = "10m"\n'),
        ("endpoint on, stall_after = 10m, jobs hourly and daily",
         '[http]\nlisten = "127.0.0.1:PORT"\n[runner.default]\nstall_after = "10m"\n'
         '[job.hourly]\ncommand = ["true"]\nschedule = "@hourly"\n'
         '[job.daily]\ncommand = ["true"]\nschedule = "0 3 * * *"\ntimezone = "Europe/Berlin"\n'),
    ]:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            cli, pid, port = master(tmp, extra)
            wakes = idle(pid, window)
            rss = rss_kib(pid)
            scrape = empty_scrape = full = None
            if "listen" in extra:
                empty_scrape = scrape_ms(port, scrapes)
                fill(tmp / "var" / "queue" / "nntp", 10000)
                full = scrape_ms(port, scrapes)
                rss_after = rss_kib(pid)
                t = time.perf_counter()
                for _ in range(scrapes):
                    subprocess.run(cli + ["--set", "runner.nntp.instances=4", "queues", "--json"],
                                   check=True, stdout=subprocess.DEVNULL)
                ours_queue = (time.perf_counter() - t) * 1000 / scrapes
                scrape = (empty_scrape, full, rss_after, ours_queue, tmp / "var" / "queue" / "nntp")
                if label == "endpoint on" and VENV.exists():
                    code = ("import sys, timeit\n"
                            "from mailman.core.switchboard import Switchboard\n"
                            "q = sys.argv[1]\n"
                            "sbs = [Switchboard('nntp', q, s, 4) for s in range(4)]\n"
                            "n = int(sys.argv[2])\n"
                            "t = timeit.timeit(lambda: [len(sb.get_files()) for sb in sbs], number=n)\n"
                            "print(t * 1000 / n)\n")
                    out = subprocess.run([str(VENV / "bin" / "python"), "-c", code,
                                          str(scrape[4]), str(scrapes)],
                                         check=True, capture_output=True, text=True)
                    scrape = scrape + (float(out.stdout),)
            subprocess.run(cli + ["stop", "-q"], check=True)
            rows.append((label, wakes, rss, scrape))
    print("| configuration | idle wake-ups / 10 s | master RSS | scrape, empty queues | "
          "scrape, 10,000 entries | RSS after |")
    print("|---|---|---|---|---|---|")
    for label, wakes, rss, scrape in rows:
        if scrape:
            print(f"| {label} | {wakes:.0f} | {rss / 1024:.2f} MiB | {scrape[0]:.2f} ms | "
                  f"{scrape[1]:.2f} ms | {scrape[2] / 1024:.2f} MiB |")
        else:
            print(f"| {label} | {wakes:.0f} | {rss / 1024:.2f} MiB | | | |")
    on = rows[1][3]
    if len(on) > 5:
        print()
        print("| 10,000 `.pck` entries, 4 slices | ours (`queues --json`, whole process) | "
              "Mailman's `Switchboard.get_files` × 4 (in-process) | ours ÷ Mailman's |")
        print("|---|---|---|---|")
        print(f"| per read | {on[3]:.2f} ms | {on[5]:.2f} ms | {on[3] / on[5]:.2f} |")


if __name__ == "__main__":
    main()
