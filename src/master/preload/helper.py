# The preload helper (docs/mailman-core.md, "Preloaded runners"): imports
# Mailman's code once, then forks Mailman's runners on the master's request.
#
# Run by the master (wire.rs) as
# `python3 -c 'exec(os.environ.pop(...))' FD MASTER CFG CACHE`, where FD is
# its end of a SOCK_SEQPACKET socket pair, CFG Mailman's configuration file
# and CACHE its code cache (code_cache.py, which comes first in the script).
# Before forking it only does what needs no database, socket or log:
# imports Mailman's modules, runs Mailman's first initialisation step
# (`initialize_1`: the component registry, the event subscribers, the
# configuration read from CFG, Mailman's directories), does once what each
# runner would do for itself before its first query (the object mapping,
# the database driver, the schema migrations' map, a database-creation lock
# retried sooner), and imports the modules that needed the configuration.
# Each runner then runs Mailman's own `runner` entry point, which does the
# rest of the initialisation (logging, plugins, database, rules, chains,
# pipelines) itself, exactly as the `runner` program would; so does `init`,
# when it is Mailman's `runner --list`, forked as a runner is. What was
# loaded is made immortal (where the Python can: 3.12, 3.13) and frozen
# before the first fork, so that runners using it do not copy its pages.
#
# The configuration is read once: if CFG changes (its inode, size or
# modification time), the helper forks nothing more, answers the request
# with an error and exits 75, and the master starts a new one.
#
# Wire format, one datagram each:
#   master -> helper: JSON {"id": N, "argv": [...], "env": {...}} with the
#                     runner's stdin, stdout, stderr (and its slice lock) as
#                     SCM_RIGHTS.
#   master -> helper: "go" when the helper may read the configuration (and
#                     make Mailman's directories): at once if `init` is to
#                     be forked from it (a request like a runner's), else
#                     once `init` has run.
#   helper -> master: "ready" once the code is loaded; "N PID" once runner N
#                     is forked; "N error TEXT" if it could not be.
# The runner is forked twice: its first parent exits at once, so that the
# master (a child subreaper, or PID 1) adopts it and reaps it as any runner.
# It goes on only once the master has its pid and it is the master's child.

import ctypes
import gc
import importlib
import json
import os
import pkgutil
import socket
import sys
import sysconfig
import time

PR_SET_PDEATHSIG = 1
PR_SET_MEMORY_MERGE = 67
SIGKILL = 9
# Packages whose modules are Mailman's test suite, documentation, database
# migration scripts (which initialise Mailman as they are imported) or
# translations: never imported by a runner.
SKIP = ("tests", "testing", "docs", "messages", "alembic")


def load():
    """Imports every module of Mailman a runner may use (and, through them,
    their libraries): what each runner would otherwise import for itself."""
    import mailman
    import mailman.bin.runner  # noqa: F401
    import zope.event

    count = walk(mailman.__path__, "mailman.")
    # Nothing may have started Mailman's initialisation: each runner does it
    # once, and twice would register its event subscribers twice.
    if zope.event.subscribers:
        sys.exit("preload: importing Mailman's modules initialised it; not preloading")
    return count


# The code cache (code_cache.py) while the helper loads, if it has one.
CACHE = None


def walk(path, prefix):
    """Imports the modules under `path` (skipping SKIP before importing
    anything of theirs); returns how many."""
    count = 0
    if CACHE is not None:
        listed = CACHE.modules_in(path, prefix)
    else:
        listed = [(i.name, i.ispkg) for i in pkgutil.iter_modules(path, prefix)]
    for name, package in listed:
        if any(part in SKIP for part in name.split(".")):
            continue
        try:
            module = importlib.import_module(name)
        except BaseException:  # an optional database driver, a missing extra
            continue
        count += 1
        if package:
            count += walk(module.__path__, name + ".")
    return count


# The exit status that asks the master for a new helper at once.
RELOAD = 75


def identity(path):
    """What tells a changed configuration file from the one loaded."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def initialise(cfg):
    """Mailman's first initialisation step, once for every runner; each
    runner's own `initialize` then skips it."""
    from mailman.core.initialize import initialize_1, initialize_2, initialize_3
    import mailman.bin.runner

    initialize_1(cfg)
    # Mailman's modules that cannot be imported before the configuration is
    # read (its REST API's: they bind the password hasher as they load),
    # as the runner that uses them would import them after its own
    # `initialize_1`; the walk returns how many modules are loaded now.
    count = walk(mailman.__path__, "mailman.")
    # The database's object mapping, built in memory (no connection): what
    # each runner would otherwise build for itself on its first query.
    try:
        import sqlalchemy.orm

        sqlalchemy.orm.configure_mappers()
    except Exception:
        pass
    # Each is what every runner would otherwise do for itself, and what it
    # costs each of them in memory of its own; none opens the database.
    warmed = []
    for warm in (load_driver, read_migrations, quick_lock):
        try:
            warmed.append(warm())
        except Exception as e:
            print(f"preload: {warm.__name__}: {e!r}; each runner does it itself", file=sys.stderr)

    def rest(config_path=None, propagate_logs=None):
        initialize_2(propagate_logs=propagate_logs)
        initialize_3()

    return count, warmed, lambda: setattr(mailman.bin.runner, "initialize", rest)


def load_driver():
    """The database's SQLAlchemy dialect and driver module (`sqlite3`,
    `psycopg2`, `pymysql`), loaded and not connected. With SQLite, SQLAlchemy
    also runs once on a private in-memory database (an engine, a connection,
    the schema check's query), so that the code it sets up on first use is
    shared: Mailman's database file is not opened."""
    import sqlalchemy
    from mailman.config import config
    from mailman.utilities.string import expand

    url = sqlalchemy.engine.make_url(expand(config.database.url, None, config.paths))
    driver = url.get_dialect().import_dbapi()
    loaded = f"the database driver ({driver.__name__})"
    if url.get_backend_name() != "sqlite":
        return loaded
    from alembic.migration import MigrationContext

    engine = sqlalchemy.create_engine(
        "sqlite://", isolation_level="READ UNCOMMITTED", pool_pre_ping=True
    )
    try:
        with engine.connect() as connection:
            MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    return loaded


def read_migrations():
    """Alembic's map of Mailman's schema migration scripts (read from files,
    each script run once), which each runner's schema check would read for
    itself to learn the newest revision: built once, and handed to
    Mailman's `SchemaManager`. An upgrade of the schema, where one is due,
    reads the scripts afresh (alembic's own commands)."""
    import mailman.database.factory as factory
    from alembic.script import ScriptDirectory
    from mailman.database.alembic import alembic_cfg

    scripts = ScriptDirectory.from_config(alembic_cfg)
    scripts.get_current_head()
    count = sum(1 for _ in scripts.walk_revisions())

    class Read(ScriptDirectory):
        @classmethod
        def from_config(cls, cfg):
            return scripts if cfg is alembic_cfg else ScriptDirectory.from_config(cfg)

    factory.ScriptDirectory = Read
    return f"{count} schema migrations"


def quick_lock():
    """Mailman's database-creation lock (`dbcreate.lck`, flufl.lock's), which
    each runner takes in turn as it opens the database, for milliseconds: a
    runner that finds it taken sleeps 0.01-2 s at random before it tries
    again (flufl.lock's pace), so of twelve runners forked at once the last
    waited seconds for a lock free most of that time. Runners forked from
    here try again every 10-60 ms: the same lock, claimed the same way."""
    import random
    import mailman.database.factory as factory
    from flufl.lock import Lock

    if not callable(getattr(Lock, "_sleep", None)):
        raise RuntimeError("flufl.lock has no Lock._sleep")

    class Quick(Lock):
        def _sleep(self):
            time.sleep(0.01 + random.random() * 0.05)

    factory.Lock = Quick
    return "the database lock retried every 10-60 ms"


def intermediate(sock, request, fds, master):
    """In the first child: fork the runner, tell the master its pid, then
    let it go on and exit (the runner is adopted by the master)."""
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError as e:
        sock.send(f"{request['id']} error fork: {e.strerror}".encode())
        os._exit(1)
    if pid == 0:
        os.close(w)
        sock.close()
        return runner(r, request, fds, master)
    os.close(r)
    try:
        # Its own group before the master hears of it: a stop reaches it.
        os.setpgid(pid, pid)
        sock.send(f"{request['id']} {pid}".encode())
    except OSError:
        os._exit(1)  # the runner reads end-of-file and exits
    os.write(w, b"1")
    os._exit(0)


def runner(r, request, fds, master):
    """In the runner: wait until the master knows it and is its parent, then
    take its descriptors and environment."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    go = os.read(r, 1)
    os.close(r)
    if go != b"1":
        os._exit(1)
    deadline = time.monotonic() + 30
    while os.getppid() != master:
        if time.monotonic() > deadline:
            os._exit(1)
        time.sleep(0.0005)
    # As every runner of the master's: killed if the master dies. Set only
    # now (it is its parent's death that counts), then checked once more.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)
    if os.getppid() != master:
        os._exit(1)
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    for fd in fds[:3]:
        if fd > 2:
            os.close(fd)
    # The slice lock (fds[3], if any) stays open: held while the runner lives.
    for key, value in request["env"].items():
        os.environ[key] = value
    sys.argv = request["argv"]
    return True


def serve(sock, master, cfg, loaded):
    """Forks a runner per request; returns only in a runner."""
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 1 << 20, 4)
        except InterruptedError:
            continue
        if not message:
            os._exit(0)  # the master closed its end
        request = json.loads(message)
        if identity(cfg) != loaded:
            sock.send(f"{request['id']} error {cfg} changed".encode())
            print(f"preload: {cfg} changed; a new helper reads it", file=sys.stderr)
            sys.exit(RELOAD)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as e:
            sock.send(f"{request['id']} error fork: {e.strerror}".encode())
            for fd in fds:
                os.close(fd)
            continue
        if pid == 0:
            if intermediate(sock, request, fds, master):
                return
        for fd in fds:
            os.close(fd)
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break


def immortalize(*mortal):
    """`immortal_objects`: makes every object loaded so far immortal
    (CPython 3.12 and 3.13, PEP 683), as Python makes its own constants: its
    reference count is no longer written, so a runner that uses an object
    does not copy the page it lies on (a runner's copies were mostly pages
    that differed from the helper's in reference counts alone). The objects
    are those on the collector's lists and, through them, the strings,
    numbers, tuples and code they refer to; not `mortal`, which must still
    be freed when let go. An immortal object is never freed: these are
    Mailman's modules, classes, functions and configuration, which a runner
    keeps to its end anyway. Returns what was done, for the log line.

    Sound because nothing else runs meanwhile (one thread), every address
    written is a live object's (the collector's or `gc.get_referents`'
    answer, held in `todo` while written), and a mortal object's count is
    never written (nor are its referents reached through it)."""
    v = sys.version_info
    where = f"Python {v.major}.{v.minor}"
    if (
        sys.implementation.name != "cpython"
        or not (3, 12) <= v[:2] <= (3, 13)  # the layouts known here
        or hasattr(sys, "gettotalrefcount")  # a debug build: another layout
        or sysconfig.get_config_var("Py_GIL_DISABLED")
        or sys.byteorder != "little"
        or ctypes.sizeof(ctypes.c_void_p) != 8
    ):
        return f"objects left mortal (immortal ones need CPython 3.12 or 3.13; this is {where})"
    started = time.monotonic()
    # The low 32 bits of an object's reference count (its first field),
    # written as a 32-bit word at the object's address: all ones is
    # immortal on 3.12 and 3.13 (64-bit builds), as Python's own immortal
    # objects are. A count of 2**31 or more is already immortal (Python's
    # own, or reached before): `sys.getrefcount` is the quickest look.
    mem = memoryview((ctypes.c_char * (1 << 47)).from_address(0)).cast("B").cast("I")
    # The mortal ones, and the tuple holding them (made by this call, so on
    # the collector's lists): an immortal holder would keep them alive.
    skip = frozenset((id(mortal), *map(id, mortal)))
    code = type(main.__code__)
    refs = sys.getrefcount
    todo = gc.get_objects()
    count = 0
    while todo:
        batch = []
        codes = []
        for o in todo:
            if refs(o) >= 0x80000000:
                continue
            at = id(o)
            if at in skip:
                continue
            mem[at >> 2] = 0xFFFFFFFF
            batch.append(o)
            if type(o) is code:
                codes.append(o)
        count += len(batch)
        # What they refer to; a code object's parts are not listed.
        todo = gc.get_referents(*batch)
        for c in codes:
            todo += (c.co_consts, c.co_names, c.co_varnames, c.co_freevars, c.co_cellvars)
            todo += (c.co_filename, c.co_name, c.co_qualname, c.co_linetable, c.co_exceptiontable)
    mem.release()
    return f"{count} objects made immortal in {time.monotonic() - started:.2f}s"


def offer_to_merge():
    """`merge_pages`: this process's memory, and so each runner's (the
    setting is inherited by a fork), offered to the kernel's same-page
    merging. Said in the log line, as what was done or why not."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0:
        error = os.strerror(ctypes.get_errno())
        return f"memory not offered to same-page merging (prctl: {error})"
    return "memory offered to same-page merging"


def main():
    fd, master, cfg = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    os.set_inheritable(fd, False)
    started = time.monotonic()
    # No collection until the fork (Python's advice for a process that forks
    # without exec): the imports run without the collector's passes over
    # what they have made so far, and leave no holes in shared pages that a
    # runner's new objects would fill, copying them.
    gc.disable()
    # As the `runner` program's search path, which begins with its own
    # directory, not the working directory (`-c` puts that first; here
    # the var dir, whose files would shadow any module).
    if sys.path and sys.path[0] == "":
        del sys.path[0]
    global CACHE
    try:
        CACHE = CodeCache(sys.argv[4]) if len(sys.argv) > 4 else None
    except Exception as e:
        print(f"preload: no code cache ({e!r})", file=sys.stderr, flush=True)
    first = load()
    while True:
        go = sock.recv(16)
        if not go:
            os._exit(0)  # the master closed its end
        if go == b"go":
            break
    loaded = identity(cfg)
    count, warmed, finish = initialise(cfg)
    if CACHE is not None:
        warmed.append(CACHE.close())
        CACHE = None
    # `immortal_objects`, before the freeze: the collector's lists still
    # hold every object.
    if os.environ.pop("MAILMAN_PRELOAD_IMMORTAL", None) == "1":
        warmed.append(immortalize(sock))
    # What was loaded stays out of the collector's reach: a collection in a
    # runner does not touch (and so copy) these pages. Runners (and the
    # helper) collect their own objects from here on.
    gc.freeze()
    gc.enable()
    if os.environ.pop("MAILMAN_PRELOAD_MERGE", None) == "1":
        warmed.append(offer_to_merge())
    print(
        f"preloaded {count} modules ({count - first} once configured), {cfg}"
        + "".join(f", {what}" for what in warmed)
        + f" in {time.monotonic() - started:.2f}s",
        file=sys.stderr,
        flush=True,
    )
    sock.send(b"ready")
    serve(sock, master, cfg, loaded)
    # A runner, now: Mailman's own entry point, as the `runner` program.
    del sock
    finish()
    from mailman.bin.runner import main as run

    sys.exit(run())


main()
