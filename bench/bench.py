#!/usr/bin/env python3
"""Benchmarks our master against GNU Mailman 3.3.10's master, supervisord and
s6 (s6-svscan), in the same run on the same machine (issues 7, 19), with a
bash loop forking the 12 runners as the floor.

    python3 bench/bench.py             # 5 runs each; the table goes to target/bench-report.md
    python3 bench/bench.py --smoke     # 1 run, short idle window (CI)

It builds the release binary, and creates (and caches under target/) the
virtual environments for mailman==3.3.10 and supervisor. Processes are found
and timed through /proc, polled every millisecond. Every master gets 12
runners: ours, supervisord, s6 and the bash loop run `sleep 100000` (s6
through a `run` script that execs it); Mailman's master can only run
Mailman's own runners.
"""

import argparse
import os
import platform
import signal
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "target"
BIN = TARGET / "x86_64-unknown-linux-musl" / "release" / "mailman"
MM_VENV = TARGET / "mailman-core-3.3.10"
SV_VENV = TARGET / "bench-venv"
TRIVIAL = '["sleep", "100000"]'
DEFAULT_COMMAND = '["{bin}", "runner", "-C", "{config}", "--runner", "{name}:{slice}:{range}"]'
DEFAULT_12 = ["archive", "bounces", "command", "in", "lmtp", "out", "pipeline", "rest",
              "retry", "task", "virgin", "digest"]
BUILTIN_OFF = ["bad", "nntp", "shunt"]

TARGETS = {  # ours, on a 2-core machine (issue 7)
    "start_ms": 20, "stop_ms": 50, "status_ms": 2, "rss_mib": 3, "wakeups": 0,
    "respawn_ms": 2, "start1000_ms": 1000, "stop1000_ms": 500, "capture_mbs": 100,
}


def run(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def ensure():
    """Builds ours; installs the peers. Returns the peers that could be had."""
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    peers = []
    if shutil.which("s6-svscan"):
        peers.append(S6)
    else:
        print("SKIPPED s6: no s6-svscan here (apt-get install s6)")
    peers.append(BashLoop)
    for venv, pkg, cls in ((SV_VENV, "supervisor", Supervisord),
                           (MM_VENV, "mailman==3.3.10", Mailman)):
        stamp = venv / ".installed"
        if not stamp.exists():
            ok = run([sys.executable, "-m", "venv", str(venv)]).returncode == 0 and run(
                [str(venv / "bin" / "pip"), "install", "--quiet", pkg]).returncode == 0
            if not ok:
                print(f"SKIPPED {cls.name}: `pip install {pkg}` failed here")
                continue
            stamp.touch()
        peers.append(cls)
    return peers


# ----------------------------------------------------------------- /proc

def stat(pid):
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])  # state, ppid


def alive(pid):
    s = stat(pid)
    return s is not None and s[0] not in "ZX"


def children(pid):
    # One read where the kernel offers it (CONFIG_PROC_CHILDREN), rather
    # than a scan of /proc, which costs milliseconds and would be measured.
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(p) for p in listed if alive(int(p))]
    except OSError:
        pass
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            s = stat(int(entry))
            if s and s[1] == pid and s[0] not in "ZX":
                out.append(int(entry))
    return out


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def switches(pid):
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if "ctxt_switches" in line:
                total += int(line.split()[1])
    return total


class ForkWatch:
    """When each process was forked, from the kernel's process events (the
    netlink proc connector; root): a timestamp on CLOCK_MONOTONIC taken by
    the kernel in `fork`, so a start or a respawn is timed to the
    microsecond whatever the polling that notices it costs. Polling still
    says when to stop waiting; it no longer sets the figure."""

    NETLINK_CONNECTOR, CN_IDX_PROC, PROC_CN_MCAST_LISTEN, PROC_EVENT_FORK = 11, 1, 1, 1

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, self.NETLINK_CONNECTOR)
        try:
            # Room for the events of 1,000 runners' start (and s6's
            # supervisors) between two drains.
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
            self.sock.bind((0, self.CN_IDX_PROC))
            cn = struct.pack("=IIIIHHI", self.CN_IDX_PROC, 1, 0, 0, 4, 0,
                             self.PROC_CN_MCAST_LISTEN)
            self.sock.send(struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, 0) + cn)  # NLMSG_DONE
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        self.forks = {}
        self.lost = False
        self.polled = 0  # figures that had to be timed by polling after all

    def drain(self):
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError:  # ENOBUFS: events were dropped
                self.lost = True
                continue
            off = 0
            while off + 16 + 20 + 32 <= len(data):
                length = struct.unpack_from("=I", data, off)[0]
                what, _cpu, ts = struct.unpack_from("=IIQ", data, off + 36)
                if what == self.PROC_EVENT_FORK:
                    _ppid, _ptgid, pid, tgid = struct.unpack_from("=iiii", data, off + 52)
                    if pid == tgid:  # a process, not a thread
                        self.forks[pid] = ts
                off += max(16, (length + 3) & ~3)

    def begin(self):
        """A new measurement: returns its start, on the kernel's clock."""
        self.drain()
        self.forks.clear()
        self.lost = False
        return time.monotonic_ns()

    def since(self, t0, pids):
        """Milliseconds from `t0` until the last of `pids` was forked, or
        None if an event is missing (dropped, or forked before `t0`)."""
        self.drain()
        stamps = [self.forks.get(p) for p in pids]
        if self.lost or not stamps or None in stamps:
            return None
        return (max(stamps) - t0) / 1e6


def fork_watch():
    try:
        return ForkWatch()
    except OSError as e:
        print(f"no process events here ({e}): start and respawn timed by polling /proc")
        return None


WATCH = None  # set in main()


def clock():
    """The start of a start or respawn measurement: on our clock, and on
    the kernel's where there are fork events."""
    return time.perf_counter(), WATCH.begin() if WATCH else 0


def timed(t0, pids):
    """A start or respawn in ms since `t0` (`clock()`): by the fork events
    where they can be had, else as polled."""
    t0_perf, t0_ns = t0
    exact = WATCH.since(t0_ns, pids) if WATCH else None
    if exact is not None:
        return exact
    if WATCH:
        WATCH.polled += 1
    return (time.perf_counter() - t0_perf) * 1000


def poll(cond, limit=120.0, step=0.001):
    start = time.perf_counter()
    while not cond():
        if time.perf_counter() - start > limit:
            raise TimeoutError("condition not met within %.0fs" % limit)
        time.sleep(step)
    return time.perf_counter() - start


def read_pid(path):
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------- masters

class Ours:
    name = "ours"
    replaces_all = True

    def __init__(self, tmp, runners=None, extra="", own=()):
        self.var = tmp / "var"
        self.cfg = tmp / "mailman.toml"
        lines = [f'[mailman]\nvar_dir = "{self.var}"\n', "[logging]\nstderr = false\n",
                 f'[runner.default]\ncommand = {TRIVIAL}\nrestart_delay = "0s"\n']
        if runners is None:
            self.n = 12
            lines += [f"[runner.{b}]\nstart = false\n" for b in BUILTIN_OFF]
        else:
            self.n = runners
            lines += [f"[runner.{b}]\nstart = false\n" for b in DEFAULT_12 + BUILTIN_OFF
                      if b not in own]
            lines += [f"[runner.b{i}]\n" for i in range(runners)]
        self.cfg.write_text("".join(lines) + extra)
        self.cli = [str(BIN), "-C", str(self.cfg)]

    def start(self):
        return subprocess.Popen(self.cli + ["start", "-q"])

    def master(self):
        return read_pid(self.var / "master.pid")

    def status(self):
        return self.cli + ["status"]

    def stop(self):
        return subprocess.Popen(self.cli + ["stop", "-q", "--no-wait"])


class Mailman:
    name = "GNU Mailman 3.3.10"

    def __init__(self, tmp):
        self.n = 12
        self.var = tmp / "var"
        self.cfg = tmp / "mailman.cfg"
        (tmp / "gunicorn.cfg").write_text("[gunicorn]\ncontrol_socket_disable = true\n")
        self.cfg.write_text(
            "[mailman]\nlayout: here\nsite_owner: postmaster@example.com\n"
            f"[paths.here]\nvar_dir: {self.var}\n"
            f"[mta]\nincoming: mailman.mta.null.NullMTA\nlmtp_port: {free_port()}\n"
            f"[webservice]\nport: {free_port()}\nconfiguration: {tmp / 'gunicorn.cfg'}\n")
        self.cli = [str(MM_VENV / "bin" / "mailman"), "-C", str(self.cfg), "--run-as-root"]

    def start(self):
        return subprocess.Popen(self.cli + ["start"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def master(self):
        return read_pid(self.var / "master.pid")

    def status(self):
        return self.cli + ["status"]

    def stop(self):
        return subprocess.Popen(self.cli + ["stop"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)


class Supervisord:
    name = "supervisord 4.3.0"

    def __init__(self, tmp):
        self.n = 12
        self.pidfile = tmp / "supervisord.pid"
        self.cfg = tmp / "supervisord.conf"
        sock = tmp / "supervisor.sock"
        progs = "".join(
            f"[program:p{i}]\ncommand=sleep 100000\nautorestart=true\nstartsecs=0\n"
            for i in range(12))
        self.cfg.write_text(
            f"[unix_http_server]\nfile={sock}\n"
            f"[supervisord]\npidfile={self.pidfile}\nlogfile={tmp / 'supervisord.log'}\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
            f"[supervisorctl]\nserverurl=unix://{sock}\n" + progs)
        self.bin = SV_VENV / "bin"

    def start(self):
        return subprocess.Popen([str(self.bin / "supervisord"), "-c", str(self.cfg)])

    def master(self):
        return read_pid(self.pidfile)

    def status(self):
        return [str(self.bin / "supervisorctl"), "-c", str(self.cfg), "status"]

    def stop(self):
        return subprocess.Popen([str(self.bin / "supervisorctl"), "-c", str(self.cfg),
                                 "shutdown"], stdout=subprocess.DEVNULL)


class S6:
    """s6-svscan on a scan directory of 12 services; the runners are its
    s6-supervise processes' children."""
    name = "s6 2.11"
    replaces_all = True

    def __init__(self, tmp, n=12):
        self.n = n
        self.scan = tmp / "scan"
        for i in range(n):
            d = self.scan / f"p{i}"
            d.mkdir(parents=True)
            (d / "run").write_text("#!/bin/sh\nexec sleep 100000\n")
            (d / "run").chmod(0o755)
        self.proc = None

    def start(self):
        # -c: room for every service (the default is 500).
        self.proc = subprocess.Popen(["s6-svscan", "-c", str(self.n + 16), str(self.scan)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return subprocess.Popen(["true"])

    def master(self):
        return self.proc.pid if self.proc else None

    def runners(self, pid):
        return [r for s in children(pid) for r in children(s)]

    def status(self):
        return ["s6-svstat", str(self.scan / "p0")]

    def stop(self):
        # s6-svscan takes SIGTERM as `s6-svscanctl -t`: every service and
        # supervisor down, then it exits (the caller times that).
        self.proc.send_signal(signal.SIGTERM)
        return subprocess.Popen(["true"])


class BashLoop:
    """The floor: bash forking the 12 runners in a loop and waiting. Its
    `status` is `/bin/true` (the least a command can cost)."""
    name = "bash loop"
    # Runners that die together: bash's `wait -n` returns for one of them,
    # and the loop replaces only some (no figure).
    replaces_all = False

    def __init__(self, tmp, n=12):
        self.n = n
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["bash", "-c", f"for ((i = 0; i < {self.n}; i++)); do sleep 100000 & done; "
             "trap 'kill $(jobs -p); exit' TERM; "
             "while :; do wait -n; sleep 100000 & done"], stderr=subprocess.DEVNULL)
        return subprocess.Popen(["true"])

    def master(self):
        return self.proc.pid if self.proc else None

    def status(self):
        return ["/bin/true"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return subprocess.Popen(["true"])


# ----------------------------------------------------------------- runs

def one_run(master, idle):
    """start, RSS, status, idle wake-ups, respawn, stop for one master."""
    r = {}
    runners = getattr(master, "runners", children)
    t0 = clock()
    starter = master.start()
    # Polled finely only where there are no fork events to time it by
    # (the polling competes for the two cores with what it measures).
    step = 0.002 if WATCH else 0.0002
    poll(lambda: master.master() and len(runners(master.master())) >= master.n, step=step)
    pid = master.master()
    r["start_ms"] = timed(t0, runners(pid))
    starter.wait()
    time.sleep(8 if isinstance(master, Mailman) else 0.5)  # let runners settle
    r["rss_mib"] = rss_kib(pid) / 1024
    t = time.perf_counter()
    run(master.status())
    r["status_ms"] = (time.perf_counter() - t) * 1000
    # The master closes the `status` connection when it sees the client
    # gone, which can be after the command has exited: not idle yet.
    time.sleep(0.2)
    before = switches(pid)
    time.sleep(idle)
    r["wakeups"] = (switches(pid) - before) * 10 / idle  # per 10 s
    kids = runners(pid)
    victim = kids[0]
    t = clock()
    os.kill(victim, signal.SIGKILL)
    # Fine-grained where polling sets the figure: it is a millisecond or
    # two, and each poll costs a read of /proc.
    poll(lambda: victim not in runners(pid) and len(runners(pid)) >= master.n,
         step=0.002 if WATCH else 0.0001)
    r["respawn_ms"] = timed(t, [p for p in runners(pid) if p not in kids])
    # Again once it has answered a `status` and replaced a runner: the
    # pages of its own code those paths touched stay mapped.
    r["rss_after_mib"] = rss_kib(pid) / 1024
    everyone = [pid] + children(pid) + runners(pid)
    t = time.perf_counter()
    stopper = master.stop()
    poll(lambda: not any(alive(p) for p in everyone))
    r["stop_ms"] = (time.perf_counter() - t) * 1000
    stopper.wait()
    return r


def settle(pids, limit=60.0):
    """Until each of `pids` runs `sleep` (exec'd) and sleeps in it, then half
    a second more for the supervisor's own turns: what is measured next is
    a command, not the tail of a start (at 1,000 runners, `status` called at
    the last fork ran against ~1,000 dynamic loaders still to finish on two
    cores, as many as the supervisor had outpaced)."""
    def asleep(pid):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return True  # gone: nothing of it left to wait for
        s = stat(pid)
        return comm == "sleep" and (s is None or s[0] == "S")
    poll(lambda: all(asleep(p) for p in pids), limit=limit, step=0.01)
    time.sleep(0.5)


def status_ms(master, paired=False):
    """The `status` command with the master's runners up: the median of 11.
    With `paired`, `/bin/true` is called in turn with it, and its median is
    returned too: the command and the floor measured at the same moments,
    rather than minutes apart under another master."""
    times, floor = [], []
    for _ in range(11):
        t = time.perf_counter()
        run(master.status())
        times.append((time.perf_counter() - t) * 1000)
        if paired:
            t = time.perf_counter()
            run(["/bin/true"])
            floor.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), statistics.median(floor) if paired else None


def scale_peer(cls, n):
    """start, stop, `status`, and every runner killed at once until all are
    forked again, of a master (ours, s6, the bash loop) with `n` runners;
    for ours, `/bin/true` called in turn with `status` too."""
    with tempfile.TemporaryDirectory() as tmp:
        m = cls(Path(tmp), n)
        runners = getattr(m, "runners", children)
        t = clock()
        m.start().wait()
        poll(lambda: m.master() and len(runners(m.master())) >= n, step=0.002)
        start = timed(t, runners(m.master()))
        settle(runners(m.master()))
        status, floor = status_ms(m, paired=cls is Ours)
        pid = m.master()
        storm = None
        if cls.replaces_all:
            # Every runner up for a second first (no guard against a quick
            # crash applies), then all killed at once.
            time.sleep(1.0)
            first = set(runners(pid))
            t = clock()
            for r in first:
                os.kill(r, signal.SIGKILL)

            def again():
                return [r for r in runners(pid) if r not in first]
            poll(lambda: len(again()) >= n, step=0.005)
            storm = timed(t, again())
        everyone = [pid] + children(pid) + runners(pid)
        t = time.perf_counter()
        m.stop().wait()
        poll(lambda: not any(alive(p) for p in everyone), step=0.002)
        ratio = status / floor if floor else None
        return start, (time.perf_counter() - t) * 1000, status, storm, floor, ratio


def capture_run(lines):
    """Runner output through the master into the log: MB/s, lines lost."""
    payload = "0" * 99
    with tempfile.TemporaryDirectory() as tmp:
        cmd = (f'["sh", "-c", "yes {payload} | head -n {lines}; echo CAPTURE-DONE; '
               'exec sleep 100000"]')
        m = Ours(Path(tmp), runners=0,
                 extra=f"[runner.flood]\ncommand = {cmd}\n")
        log = m.var / "logs" / "mailman.log"

        def done():
            try:
                with open(log, "rb") as f:
                    f.seek(max(0, os.path.getsize(log) - 300))
                    return b"CAPTURE-DONE" in f.read()
            except OSError:
                return False
        t = time.perf_counter()
        m.start().wait()
        poll(done, limit=300, step=0.005)
        secs = time.perf_counter() - t
        m.stop().wait()
        poll(lambda: not (m.var / "master.pid").exists())
        got = 0
        with open(log, "rb") as f:
            for line in f:
                if line.rstrip(b"\n").endswith(payload.encode()):
                    got += 1
        return lines * 100 / 1e6 / secs, lines - got


def queue_run(stages, n, handler):
    """Entries per second from a pre-filled first queue through `stages`
    (each one runner; each hands entries to `handler`, if any, then to the
    next stage; the last removes them), timed from `start` until every
    queue is empty. Without a handler, entries only move, and the last
    stage keeps them."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = []
        for i, stage in enumerate(stages):
            nxt = stages[i + 1] if i + 1 < len(stages) else ""
            extra.append(f'[runner.{stage}]\nstart = true\ncommand = {DEFAULT_COMMAND}\n'
                         f'sleep_time = "10ms"\nnext = "{nxt}"\n')
            if handler:
                extra.append(f'handler = ["{handler}"]\n')
        m = Ours(Path(tmp), runners=0, extra="".join(extra), own=stages)
        entry = Path(tmp) / "entry"
        entry.write_text("From: a@example.com\nTo: b@example.com\nSubject: x\n\n" + "y" * 2000)
        subprocess.run(m.cli + ["inject", stages[0]] + [str(entry)] * n,
                       check=True, stdout=subprocess.DEVNULL)
        # Without a handler the last stage keeps its entries: done when
        # they have all reached it.
        dirs = [m.var / "queue" / s for s in (stages if handler else stages[:-1])]

        def empty():
            for d in dirs:
                with os.scandir(d) as it:
                    if any(e.name.endswith((".msg", ".bak")) for e in it):
                        return False
            return True
        t = time.perf_counter()
        m.start().wait()
        poll(empty, limit=600, step=0.01)
        secs = time.perf_counter() - t
        m.stop().wait()
        poll(lambda: not (m.var / "master.pid").exists())
        return n / secs


def spawn_floor(n):
    """What fork + exec of /bin/true costs here: a shell loop, per second."""
    t = time.perf_counter()
    subprocess.run(["sh", "-c", f"i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"],
                   check=True)
    return n / (time.perf_counter() - t)


def summary(values):
    return statistics.median(values), min(values), max(values)


def fmt(v, unit):
    if unit == "MiB":
        return f"{v:.1f}"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="one run each, 1 s idle window")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    runs = 1 if args.smoke else args.runs
    idle = 1.0 if args.smoke else 10.0
    peers = ensure()
    global WATCH
    WATCH = fork_watch()

    # Interleaved (ours, s6, the loop, supervisord, Mailman's, ours, ...), so
    # that the machine's drift over the minutes a run takes falls on every
    # master alike rather than on whichever ran last.
    masters = [Ours] + peers
    rows = {cls.name: [] for cls in masters}
    for i in range(runs):
        for cls in masters:
            with tempfile.TemporaryDirectory() as tmp:
                rows[cls.name].append(one_run(cls(Path(tmp)), idle))
    results = {}
    for cls in masters:
        mine = rows[cls.name]
        results[cls.name] = {k: summary([r[k] for r in mine]) for k in mine[0]}
        print(f"{cls.name}: " + ", ".join(f"{k} {v[0]:.2f}" for k, v in results[cls.name].items()),
              flush=True)

    scale = {}
    for n in ((100,) if args.smoke else (100, 1000)):
        # Interleaved: ours, s6, the loop, ours, ...
        pairs = {cls.name: [] for cls in [Ours, S6, BashLoop] if cls is Ours or cls in peers}
        for _ in range(runs):
            pairs["ours"].append(scale_peer(Ours, n))
            for cls in (S6, BashLoop):
                if cls in peers:
                    pairs[cls.name].append(scale_peer(cls, n))
        scale[n] = {name: tuple(None if None in (col := [p[i] for p in v]) else summary(col)
                                for i in range(6))
                    for name, v in pairs.items()}
        print(f"{n} runners: " + ", ".join(
            f"{name} start {s[0][0]:.0f} ms stop {s[1][0]:.0f} ms status {s[2][0]:.2f} ms "
            f"all killed → all again {f'{s[3][0]:.0f} ms' if s[3] else '–'}"
            + (f" (/bin/true in turns {s[4][0]:.2f} ms, ratio {s[5][0]:.2f})" if s[5] else "")
            for name, s in scale[n].items()), flush=True)
    lines = 100_000 if args.smoke else 1_000_000
    caps = [capture_run(lines) for _ in range(runs)]
    capture = summary([c[0] for c in caps])
    lost = max(c[1] for c in caps)
    print(f"ours, log capture: {capture[0]:.0f} MB/s, {lost} lines lost", flush=True)
    if lost:
        sys.exit("lines were lost")
    n = 500 if args.smoke else 5000
    queues = {}
    for label, stages, handler in QUEUE_CASES:
        queues[label] = summary([queue_run(stages, n, handler) for _ in range(runs)])
        print(f"ours, {label}: {queues[label][0]:.0f} entries/s", flush=True)
    queues["floor: a shell loop running /bin/true"] = summary(
        [spawn_floor(n) for _ in range(runs)])
    print(f"floor, shell loop of /bin/true: {queues['floor: a shell loop running /bin/true'][0]:.0f}/s",
          flush=True)
    if args.smoke:
        print("smoke run complete")
        return
    if "GNU Mailman 3.3.10" not in results or "s6 2.11" not in results:
        sys.exit("the report needs Mailman's master and s6")
    write_report(results, scale, capture, queues, runs)


QUEUE_TARGETS = {  # entries/s, ours, on a 2-core machine
    "one runner, handler /bin/true": "≥ 1000",
    "in → pipeline → out, handler /bin/true at each": "≥ 500",
    "in → pipeline → out, no handlers (moves only, until all wait in out)": "≥ 10000",
}

# Queue throughput cases: (label, stages, handler).
QUEUE_CASES = [
    ("one runner, handler /bin/true", ["work"], "/bin/true"),
    ("in → pipeline → out, handler /bin/true at each", ["in", "pipeline", "out"], "/bin/true"),
    ("in → pipeline → out, no handlers (moves only, until all wait in out)",
     ["in", "pipeline", "out"], ""),
]


def timing_note():
    if not WATCH:
        return "Start and respawn were timed by polling /proc (no process events here)."
    note = ("Start and respawn are timed by the kernel's process events: from just before the "
            "command (or the `kill`) to the `fork` of the last runner (the replacement), on the "
            "kernel's clock.")
    if WATCH.polled:
        note += f" {WATCH.polled} figures lacked an event and were timed by polling /proc."
    return note


def write_report(results, scale, capture, queues, runs):
    ours = results["ours"]
    rows = [("start: command → 12 runners forked", "start_ms", "ms"),
            ("stop: command → master and runners gone", "stop_ms", "ms"),
            ("`status` command (the loop: `/bin/true`)", "status_ms", "ms"),
            ("master RSS, 12 runners", "rss_mib", "MiB"),
            ("master RSS, 12 runners, after a `status` and a respawn", "rss_after_mib", "MiB"),
            ("master wake-ups per 10 s idle", "wakeups", ""),
            ("kill -9 of a runner → new runner", "respawn_ms", "ms")]
    names = [n for n in ("ours", "bash loop", "s6 2.11", "supervisord 4.3.0",
                         "GNU Mailman 3.3.10") if n in results]
    out = ["# Benchmarks", "",
           f"Measured by `python3 bench/bench.py` ({runs} runs each, the masters taking turns; "
           f"median [min..max]) on "
           f"{platform.node() or 'this machine'}: {os.cpu_count()} cores, "
           f"{platform.machine()}, Linux {platform.release()}, "
           f"{time.strftime('%Y-%m-%d', time.gmtime())}. Ours, the bash loop, s6 and supervisord "
           "run 12 × `sleep 100000` (s6 through a `run` script that execs it); Mailman's master "
           'runs its own 12 Python runners. Ours uses `restart_delay = "0s"` for the respawn '
           "figure (no back-off on the first crash). " + timing_note(), "",
           "| figure | " + " | ".join(names) + " | ours ÷ bash loop | ours ÷ s6 | target (ours) |",
           "|---|" + "---|" * (len(names) + 3)]
    target_of = {"start_ms": "≤ 20 ms", "stop_ms": "≤ 50 ms", "status_ms": "≤ 2 ms",
                 "rss_mib": "≤ 3 MiB", "rss_after_mib": "≤ 2.5 MiB", "wakeups": "0", "respawn_ms": "≤ 2 ms"}

    def ratio(key, name):
        other = results.get(name, {}).get(key)
        return f"{ours[key][0] / other[0]:.2f}" if other and other[0] else "–"
    for label, key, unit in rows:
        cells = []
        for name in names:
            med, lo, hi = results[name][key]
            u = f" {unit}" if unit else ""
            cells.append(f"{fmt(med, unit)}{u} [{fmt(lo, unit)}..{fmt(hi, unit)}]")
        out.append(f"| {label} | " + " | ".join(cells) + f" | {ratio(key, 'bash loop')} | "
                   f"{ratio(key, 's6 2.11')} | {target_of[key]} |")
    out += ["", "With more runners (ours, s6, the bash loop; interleaved; `status` is the median "
            "of 11 calls per run once every runner sleeps, the loop's is `/bin/true`):", "",
            "| figure | ours | s6 2.11 | bash loop | ours ÷ s6 | ours ÷ bash loop |",
            "|---|---|---|---|---|---|"]
    for n, by in scale.items():
        for what, i in (("start", 0), ("stop", 1), ("`status`", 2),
                        ("every runner killed at once → all forked again", 3)):
            cell = {k: v[i] for k, v in by.items()}
            digits = 2 if i == 2 else 0

            def show(name):
                v = cell.get(name)
                return (f"{v[0]:.{digits}f} ms [{v[1]:.{digits}f}..{v[2]:.{digits}f}]"
                        if v else "–")

            def rel(name):
                v = cell.get(name)
                return f"{cell['ours'][0] / v[0]:.2f}" if v and v[0] else "–"
            out.append(f"| {what}, {n:,} runners | {show('ours')} | {show('s6 2.11')} | "
                       f"{show('bash loop')} | {rel('s6 2.11')} | {rel('bash loop')} |")
    out += ["", "Ours only:", "", "| figure | median [min..max] | target |", "|---|---|---|"]
    for n, by in scale.items():
        s = by["ours"]
        if s[5]:
            out.append(f"| `status` ÷ `/bin/true` called in turns with it, {n:,} runners (ratio "
                       f"per run; `status` {s[2][0]:.2f} ms, `/bin/true` {s[4][0]:.2f} ms) | "
                       f"{s[5][0]:.2f} [{s[5][1]:.2f}..{s[5][2]:.2f}] | ≤ 1.15 at 1,000 |")
    out.append(f"| log capture (100-byte lines, no line lost) | {capture[0]:.0f} MB/s "
               f"[{capture[1]:.0f}..{capture[2]:.0f}] | ≥ 100 MB/s |")
    for label, q in queues.items():
        out.append(f"| queue: {label} (5,000 entries) | {q[0]:.0f} /s "
                   f"[{q[1]:.0f}..{q[2]:.0f}] | {QUEUE_TARGETS.get(label, '')} |")
    (TARGET / "bench-report.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
