"""A disk cache of decoded arrays: decode once, memory-map afterwards.

Flower's deployment engine starts a ClientApp process for every message, so whatever a process decodes (a compressed
archive, scikit-learn's digits, a folder of PNGs) it decodes again for the next message. An entry here is a folder
of plain ``.npy`` files under ``$MEANET_CACHE_DIR`` (default ``~/.cache/meanet``; ``off`` turns caching off), named
by a hash of everything its content depends on (the source's path, size and modification times, the decoding
parameters, :data:`FORMAT`), so a changed source is never served stale: it gets a new entry. An entry is written
whole into a temporary folder and renamed into place (readers never see half of one); a damaged entry is removed and
rebuilt. Reads are copy-on-write memory maps: nothing is copied until an array is written, and the pages are shared
by every process reading the entry. Writing an entry removes the ones it replaces (same source, older content) and
those whose source is gone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

CACHE_ENV = "MEANET_CACHE_DIR"
DEFAULT_CACHE = Path("~/.cache/meanet")
FORMAT = 1
"""Part of every key: bump it when what an entry holds changes meaning."""
SOURCE = "source.txt"
"""The file of an entry naming what it was decoded from (see :func:`write_entry`)."""
TMP = ".tmp-"
log = logging.getLogger("meanet.data")


def cache_root() -> Path | None:
    """``$MEANET_CACHE_DIR`` (default ``~/.cache/meanet``), or None when caching is off (``off``, ``0``, ``none``)."""
    root = os.environ.get(CACHE_ENV, str(DEFAULT_CACHE))
    if root.strip().lower() in ("", "off", "0", "none"):
        return None
    return Path(root).expanduser()


def entry_for(kind: str, label: str, *key: object) -> Path | None:
    """The entry folder ``ROOT/kind/label-HASH`` for ``key`` (everything the content depends on), or None when
    caching is off."""
    root = cache_root()
    if root is None:
        return None
    digest = hashlib.sha256("|".join(str(k) for k in (FORMAT, kind, *key)).encode()).hexdigest()[:16]
    return root / kind / f"{label}-{digest}"


def file_stamp(path: Path) -> tuple[str, int, int]:
    """What identifies a file's content cheaply: its resolved path, size and modification time (ns)."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def tree_stamp(root: Path) -> tuple[str, int, int, int]:
    """What identifies a folder's (or a file's) content cheaply: its resolved path, the number of entries under it,
    their total size and the newest modification time (ns) of it and anything under it. Adding, removing, renaming
    or rewriting a file changes it."""
    stat = root.stat()
    count, size, newest = 0, stat.st_size if not root.is_dir() else 0, stat.st_mtime_ns
    if root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            for names, is_file in ((dirnames, False), (filenames, True)):
                for name in names:
                    count += 1
                    try:
                        entry = (Path(dirpath) / name).stat()
                    except OSError:
                        continue  # a dangling link: the reader reports it
                    newest = max(newest, entry.st_mtime_ns)
                    size += entry.st_size if is_file else 0
    return str(root.resolve()), count, size, newest


def read_entry(entry: Path | None) -> dict[str, np.ndarray] | None:
    """Every array of ``entry`` (name -> copy-on-write memory map), or None when it is missing or unreadable (a
    damaged entry is removed, so the caller's rebuild replaces it)."""
    if entry is None or not entry.is_dir():
        return None
    try:
        arrays = {p.stem: np.load(p, mmap_mode="c", allow_pickle=False) for p in sorted(entry.glob("*.npy"))}
        if not arrays:
            raise ValueError("no arrays in it")
        return arrays
    except (OSError, ValueError) as err:
        log.warning("ignoring the unreadable cache entry %s (%s); rebuilding it", entry, err)
        shutil.rmtree(entry, ignore_errors=True)
        return None


def write_entry(entry: Path | None, arrays: Mapping[str, np.ndarray], source: Path | None = None) -> None:
    """Write ``arrays`` as ``entry`` atomically (a temporary folder renamed into place); a failure (read-only home,
    full disk, another process's entry renamed first) only costs speed.

    ``source``: the file or folder the arrays were decoded from. It is noted in the entry, and the entries of its kind
    decoded from the same source (now stale: the source changed) or from a source that no longer exists are removed,
    so the cache holds one entry per existing source.
    """
    if entry is None:
        return
    tmp = entry.with_name(f"{entry.name}{TMP}{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for key, value in arrays.items():
            np.save(tmp / f"{key}.npy", np.asarray(value), allow_pickle=False)
        if source is not None:
            (tmp / SOURCE).write_text(str(source.resolve()), encoding="utf-8")
        os.replace(tmp, entry)
    except OSError as err:
        if not entry.is_dir():
            log.warning("could not cache decoded arrays in %s (%s); loading stays slower", entry, err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if source is not None:
        _prune(entry, str(source.resolve()))


def _prune(entry: Path, source: str) -> None:
    """Remove the entries beside ``entry`` decoded from ``source`` (stale) or from a source that is gone."""
    try:
        siblings = [p for p in entry.parent.iterdir() if p != entry and TMP not in p.name and p.is_dir()]
    except OSError:
        return
    for sibling in siblings:
        try:
            noted = (sibling / SOURCE).read_text(encoding="utf-8")
        except OSError:
            continue  # no source noted (or another process removed it): left alone
        if noted == source or not Path(noted).exists():
            shutil.rmtree(sibling, ignore_errors=True)


def cached(
    entry: Path | None, build: Callable[[], Mapping[str, np.ndarray]], source: Path | None = None
) -> Mapping[str, np.ndarray]:
    """The arrays of ``entry`` when it holds them, else ``build()``'s, written to ``entry`` (decoded from ``source``,
    see :func:`write_entry`) for the next reader."""
    arrays = read_entry(entry)
    if arrays is not None:
        return arrays
    built = build()
    write_entry(entry, built, source)
    return built


__all__ = ["CACHE_ENV", "cache_root", "cached", "entry_for", "file_stamp", "read_entry", "tree_stamp", "write_entry"]
