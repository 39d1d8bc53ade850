"""Transparent huge pages for a command's host memory: XLA:CPU's train step runs 10-15% faster with them.

Why: XLA:CPU allocates a program's temporaries afresh on every call. For ResNet-18's train step at 128 px
(batch 64) that is about 1.5 GB per step, and glibc serves allocations that large with a new mmap each
time, so each step first touches some 360,000 fresh 4-KiB pages (a page fault and a zeroing each) and
the strided copies of the convolutions' backward pass then miss the TLB. glibc's
`glibc.malloc.hugetlb=1` tunable makes malloc ask the kernel for transparent huge pages (`madvise`) on
the memory it maps: page faults drop to about 1,500 per step and the step takes 10-15% less time
(`benchmarks/hostmem_bench.py`, BENCHMARKS.md). PyTorch gains about as much from it.

How: glibc reads its tunables only when a process starts, so a command that wants them re-executes
itself once, first thing, with `glibc.malloc.hugetlb=1` added to GLIBC_TUNABLES; nothing has run yet, so
nothing is lost. It does so only on Linux with glibc 2.35 or later and transparent huge pages in
`madvise` mode (with `always` every large mapping gets them already; with `never` there is nothing to
gain), and never when GLIBC_TUNABLES already sets `glibc.malloc.hugetlb` (the user's choice stands).
JAXCXR_HUGE_PAGES=0 turns it off. Values and results do not change: only where memory comes from.
"""

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "JAXCXR_HUGE_PAGES"
_DONE = "JAXCXR_HUGE_PAGES_REEXEC"  # Set in the re-executed process: never re-execute twice.
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path=THP_MODE_FILE):
  """The kernel's transparent-huge-page mode ('always', 'madvise' or 'never'), or None if unknown."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def _glibc_at_least(version, major, minor):
  try:
    have = tuple(int(p) for p in version.split(".")[:2])
  except ValueError:
    return False
  return have >= (major, minor)


def reexec_env(environ, *, system, libc, thp):
  """The environment to re-execute with, or None when this process should run as it is.

  `system` is platform.system(), `libc` platform.libc_ver(), `thp` thp_mode().
  """
  if environ.get(OPT_OUT, "1") == "0" or environ.get(_DONE):
    return None
  if system != "Linux" or libc[0] != "glibc" or not _glibc_at_least(libc[1], 2, 35) or thp != "madvise":
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables:
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
  env[_DONE] = "1"
  return env


def reexec_with_huge_pages():
  """Re-executes this process (same interpreter, same arguments) with huge pages, when reexec_env says so.

  Call it first thing in a command's `__main__`, before JAX is imported.
  """
  env = reexec_env(os.environ, system=platform.system(), libc=platform.libc_ver(), thp=thp_mode())
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
