# The preload helper's code cache (docs/mailman-core.md, "The code
# cache"): the compiled code of every module the helper imports, in one
# file in the var dir, so that its next start reads one file instead of
# searching, checking and reading a thousand (on Docker's fuse-overlayfs,
# each of those costs a round trip to a file system in user space).
#
# A module found in the cache is loaded by Python's own file loader, with
# its file name, package path, resources and source as ever: only its
# compiled code comes from the cache (which holds what Python's loader
# returned when the module was last imported from its file). The cache is
# used only if it was written by the same Python, with the same module
# search path, and no directory searched or holding a cached module has
# changed since (the check Python's own finder makes before trusting its
# listing of a directory). Modules imported that the cache does not hold
# (a new start-up path, another database driver) are loaded as ever, and a
# new cache holding them too replaces it once the helper has loaded.
#
# The file: the modules' code (marshal), then the index (marshal: each
# module's file, whether it is a package, where its code is), then the
# index's offset (8 bytes, little-endian).
#
# Defined here, used by helper.py (the two are one script).

import contextlib
import importlib.machinery
import importlib.util
import marshal
import mmap
import os
import pkgutil
import sys

# What a cache written by another version of this code has: not used.
CACHE_FORMAT = 1
_FILE_LOADER = importlib.machinery.SourceFileLoader


def cache_key(dirs):
    """What must not have changed since the cache was written."""
    key = [CACHE_FORMAT, sys.version, sys.executable, sys.flags.optimize, list(sys.path)]
    for d in dirs:
        try:
            key.append((d, os.stat(d).st_mtime_ns))
        except OSError:
            key.append((d, None))
    return key


class _Cached(_FILE_LOADER):
    """Python's file loader for a module of the cache: its code from the
    cache while it is open (its file once it is closed)."""

    cache = None
    where = None

    def get_code(self, fullname):
        view = self.cache.view if self.cache else None
        if view is not None:
            off, n = self.where
            try:
                code = marshal.loads(view[off : off + n])
            except Exception:
                code = None
            if code is not None:
                self.cache.used(fullname, self, off, n)
                return code
        return super().get_code(fullname)


class CodeCache:
    """The cache at `path`, and the next one: finds modules in the cache
    (first of `sys.meta_path`) while it is open, and notes what it and
    Python's own loader gave, to write a new cache if the old one lacked a
    module (or there was none)."""

    def __init__(self, path):
        self.path = path
        self.tmp = f"{path}.{os.getpid()}.tmp"
        self.index = {}
        # pkgutil.iter_modules's answers (the helper's walk), by path and
        # prefix: from the cache, and as given this time.
        self.listings = {}
        self.listed = {}
        self.relisted = False
        self.view = None
        self.map = None
        self.hits = []  # (name, file, is package, offset, length) in the old
        self.new = []  # (name, file, is package, offset, length) in `tmp`
        self.out = None
        self.size = 0
        self.error = None
        self.opened = self._open()
        self._get_code = _FILE_LOADER.get_code
        cache = self

        def get_code(loader, fullname):
            code = cache._get_code(loader, fullname)
            # Imported (in `sys.modules` as it runs), not a file run as a
            # module by its path (alembic's migration scripts), which no
            # import would find in the cache.
            module = sys.modules.get(fullname)
            if (
                code is not None
                and type(loader) is _FILE_LOADER
                and getattr(module, "__loader__", None) is loader
            ):
                cache.missed(fullname, loader, code)
            return code

        _FILE_LOADER.get_code = get_code
        sys.meta_path.insert(0, self)

    def _sweep(self):
        """New caches that helpers which died did not finish."""
        folder, base = os.path.split(self.path)
        with contextlib.suppress(OSError):
            for name in os.listdir(folder or "."):
                pid = name[len(base) + 1 : -len(".tmp")]
                if name.startswith(base + ".") and name.endswith(".tmp") and pid.isdigit():
                    try:
                        os.kill(int(pid), 0)
                    except ProcessLookupError:
                        with contextlib.suppress(OSError):
                            os.unlink(os.path.join(folder, name))
                    except OSError:
                        pass

    def _open(self):
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return False
        view = None
        try:
            self.map = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
            view = memoryview(self.map)
            at = int.from_bytes(view[-8:], "little")
            meta = marshal.loads(view[at:-8])
            if meta["key"] == cache_key(meta["dirs"]):
                self.index, self.listings, self.view = meta["index"], meta["listings"], view
                return True
        except Exception:  # empty, cut short, not ours
            pass
        finally:
            os.close(fd)
        if view is not None:
            view.release()
        if self.map is not None:
            with contextlib.suppress(BufferError):
                self.map.close()
            self.map = None
        return False

    def find_spec(self, name, path=None, target=None):
        entry = self.index.get(name) if self.view is not None else None
        if entry is None:
            return None
        origin, package, off, n = entry
        loader = _Cached(name, origin)
        loader.cache, loader.where = self, (off, n)
        return importlib.util.spec_from_file_location(
            name,
            origin,
            loader=loader,
            submodule_search_locations=[os.path.dirname(origin)] if package else None,
        )

    def modules_in(self, path, prefix):
        """`pkgutil.iter_modules(path, prefix)`'s names and whether each is
        a package: from the cache while it is open and holds them (their
        directories have not changed), else listed."""
        key = (tuple(path), prefix)
        found = self.listings.get(key) if self.view is not None else None
        if found is None:
            found = [(i.name, i.ispkg) for i in pkgutil.iter_modules(path, prefix)]
            self.relisted = True
        self.listed[key] = found
        return found

    def used(self, name, loader, off, n):
        self.hits.append((name, loader.path, loader.is_package(name), off, n))

    def missed(self, name, loader, code):
        if self.error is not None:
            return
        try:
            data = marshal.dumps(code)
            self._output().write(data)
            self.new.append((name, loader.path, loader.is_package(name), self.size, len(data)))
            self.size += len(data)
        except Exception as e:
            self.error = e

    def close(self):
        """Python's loader as it was, the cache closed, and a new one
        written if a module was missing from it. What it did, for the log."""
        _FILE_LOADER.get_code = self._get_code
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        try:
            changed = self.new or self.relisted
            written = self._write() if changed and self.error is None else False
        except Exception as e:
            self.error = e
            written = False
        if self.out is not None and not self.out.closed:
            self.out.close()
        if not written:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
        self.index, self.listings, self.listed = {}, {}, {}
        view, self.view = self.view, None
        if view is not None:
            view.release()
        if self.map is not None:
            with contextlib.suppress(BufferError):
                self.map.close()
        hits, new, self.hits, self.new = len(self.hits), len(self.new), [], []
        said = []
        if self.opened:
            said.append(f"the code of {hits} modules from the code cache")
        if written:
            cached = f"{new} more" if self.opened else f"the code of {new} modules"
            said.append(f"{cached} cached for the next start")
        if self.error is not None:
            said.append(f"no code cache written ({self.error!r})")
        return ", ".join(said) or "no code cache"

    def _output(self):
        """The new cache's file, made on first use (never another's)."""
        if self.out is None:
            self._sweep()
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self.out = os.fdopen(os.open(self.tmp, flags, 0o644), "wb")
        return self.out

    def _write(self):
        self._output()
        index = {}
        for name, origin, package, off, n in self.new:
            index[name] = (origin, package, off, n)
        for name, origin, package, off, n in self.hits:
            if name not in index:
                index[name] = (origin, package, self.size, n)
                self.out.write(self.view[off : off + n])
                self.size += n
        dirs = {p for p in sys.path if p} | {os.path.dirname(e[0]) for e in index.values()}
        dirs = sorted(dirs.union(*(path for path, _ in self.listed)))
        meta = {"index": index, "listings": self.listed, "dirs": dirs, "key": cache_key(dirs)}
        self.out.write(marshal.dumps(meta))
        self.out.write(self.size.to_bytes(8, "little"))
        self.out.close()
        os.rename(self.tmp, self.path)
        return True
