"""The host allocator under XLA:CPU: tcmalloc or huge pages instead of glibc's fresh `mmap` per step.

    merg-jax ...                      # re-executes itself once, first thing, with the fast allocator
    MERG_JAX_ALLOCATOR=system ...     # keep the allocator the process started with
    MERG_JAX_ALLOCATOR=tcmalloc ...   # require tcmalloc (an error naming the package when it is missing)
    MERG_JAX_ALLOCATOR=hugepages ...  # glibc with transparent huge pages

XLA:CPU allocates an executable's temporary buffers anew on every call. Through glibc, a block that large is a
fresh `mmap` that `free` returns to the kernel, so every call touches its working set for the first time: the
33.5M-parameter training step of docs/benchmarks.md took ~190,000 page faults (~780 MB) per step, each a trip
into the kernel that zeroes a 4 KiB page. tcmalloc keeps freed memory and hands it out again (no fault in the
steady state); glibc's `glibc.malloc.hugetlb=1` tunable asks for 2 MiB transparent huge pages (512× fewer faults).
Both are chosen when a process starts (the dynamic loader reads `LD_PRELOAD`, glibc reads `GLIBC_TUNABLES`), so
`merg-jax` re-executes itself once, before anything else runs, in the best of:

1. tcmalloc (`LD_PRELOAD`), when it is installed (Debian: `libtcmalloc-minimal4`), set to keep the memory it
   frees (`TCMALLOC_RELEASE_RATE=0`: the process holds its peak, as a training or serving loop needs anyway);
2. glibc's huge-page tunable, when the kernel's THP mode is not `never`;
3. otherwise the process goes on as it started.

A process whose `LD_PRELOAD` already names tcmalloc or jemalloc, or whose `GLIBC_TUNABLES` already sets
`glibc.malloc.hugetlb`, is left alone. The bench commands print `describe()` so a figure says which allocator it
was measured under; docs/performance.md has the measurements.
"""

from __future__ import annotations

import ctypes.util
import os
import pathlib
import sys
from collections.abc import Mapping

ENV = "MERG_JAX_ALLOCATOR"
CHOICES = ("auto", "tcmalloc", "hugepages", "system")
_REEXECUTED = "MERG_JAX_ALLOCATOR_REEXECUTED"  # set in the child: never re-execute twice
_HUGEPAGES = "glibc.malloc.hugetlb=1"
_THP_MODE = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def find_tcmalloc() -> str | None:
    """The tcmalloc shared library the dynamic loader would find (a soname or a path), or None."""
    for name in ("tcmalloc_minimal", "tcmalloc"):
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def thp_mode(path: pathlib.Path = _THP_MODE) -> str | None:
    """The kernel's transparent-huge-page mode (`always`, `madvise` or `never`), or None where it has none."""
    try:
        text = path.read_text()
    except OSError:
        return None
    chosen = [word[1:-1] for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else None


def describe(environ: Mapping[str, str] = os.environ) -> str:
    """The allocator this process runs with, from its environment: tcmalloc, jemalloc, glibc+hugepages or glibc."""
    preload = environ.get("LD_PRELOAD", "")
    if "tcmalloc" in preload:
        return "tcmalloc"
    if "jemalloc" in preload:
        return "jemalloc"
    tunables = environ.get("GLIBC_TUNABLES", "")
    if any(f"glibc.malloc.hugetlb={mode}" in tunables for mode in (1, 2)):  # 1: THP via madvise, 2: hugetlbfs
        return "glibc+hugepages"
    return "glibc"


_LOOK = object()  # "find it on this machine"


def allocator_env(environ: Mapping[str, str] = os.environ, *, tcmalloc=_LOOK,
                  thp=_LOOK) -> dict[str, str] | None:
    """The environment to re-execute in for the chosen allocator, or None when the current one is to stay.

    `tcmalloc` (a library or None) and `thp` (a THP mode or None) default to what this machine has
    (`find_tcmalloc()`, `thp_mode()`); tests pass them.
    Raises ValueError for a bad `MERG_JAX_ALLOCATOR`, or one that asks for what the machine lacks.
    """
    choice = environ.get(ENV, "auto") or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    current = describe(environ)
    if choice == "system" or environ.get(_REEXECUTED) or (choice == "auto" and current != "glibc"):
        return None
    tcmalloc = find_tcmalloc() if tcmalloc is _LOOK else tcmalloc
    thp = thp_mode() if thp is _LOOK else thp
    env = dict(environ, **{_REEXECUTED: "1"})
    if choice in ("auto", "tcmalloc") and tcmalloc:
        if current == "tcmalloc":
            return None
        env["LD_PRELOAD"] = ":".join(p for p in (tcmalloc, environ.get("LD_PRELOAD", "")) if p)
        # tcmalloc reports every allocation over 1 GiB on stderr; a 7B model's buffers are routinely larger.
        env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 60))
        # By default tcmalloc returns free spans to the kernel at a slow rate, so some calls fault again (a 64 MiB
        # temporary: 0 or ~3,700 faults per call, run to run); at 0 the process keeps its peak, as a step needs.
        env.setdefault("TCMALLOC_RELEASE_RATE", "0")
        return env
    if choice == "tcmalloc":
        raise ValueError(f"{ENV}=tcmalloc, but no tcmalloc library is installed "
                         "(Debian: apt-get install libtcmalloc-minimal4)")
    if thp in ("always", "madvise"):
        if current == "glibc+hugepages":
            return None
        env["GLIBC_TUNABLES"] = ":".join(p for p in (environ.get("GLIBC_TUNABLES", ""), _HUGEPAGES) if p)
        return env
    if choice == "hugepages":
        raise ValueError(f"{ENV}=hugepages, but the kernel's transparent huge pages are {thp or 'absent'} "
                         f"({_THP_MODE})")
    return None


def reexecute_with_fast_allocator() -> None:
    """Replaces this process by itself under the chosen allocator (same interpreter, same command line); returns
    only when nothing is to change. Call it first in a command's entry point, before JAX or PyTorch load."""
    env = allocator_env()
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, list(sys.orig_argv), env)
