"""Transparent huge pages for a command's host memory: XLA:CPU's larger train steps run faster with them.

Why: XLA:CPU allocates a program's temporaries afresh on every call. For ResNet-18's train step at 128 px
(batch 64) that is about 1.5 GB per step, and glibc serves allocations that large with a new mmap each
time, so each step first touches about 370,000 fresh 4-KiB pages (a page fault and a zeroing each) and
the strided copies of the convolutions' backward pass then miss the TLB. glibc's
`glibc.malloc.hugetlb=1` tunable makes malloc ask the kernel for transparent huge pages (`madvise`) on
the memory it maps: page faults drop to about 1,700 per step and the step takes 10% less time at 128 px;
at 64 px the gain measured between none and 14% (`benchmarks/hostmem_bench.py`, BENCHMARKS.md). PyTorch
gains from it too.

How: glibc reads its tunables only when a process starts, so a command that wants them re-executes
itself once, first thing, with `glibc.malloc.hugetlb=1` added to GLIBC_TUNABLES; nothing has run yet, so
nothing is lost. It does so only on Linux with glibc 2.35 or later and transparent huge pages in
`madvise` mode (with `always` every large mapping gets them already; with `never` there is nothing to
gain), never when GLIBC_TUNABLES already sets `glibc.malloc.hugetlb` (the user's choice stands), and only
when the interpreter's own command line runs the command (`python -m jaxcxr.main ...` or `python
jaxcxr/main.py ...`): under a debugger or profiler (`python -m pdb -m jaxcxr.main`), a test runner or a
notebook it does nothing. JAXCXR_HUGE_PAGES=0 (or false/no/off) turns it off. The variable stays set, so
child processes (the bench's PyTorch peer, loader workers) get huge pages too. Values and results do not
change: only where memory comes from.
"""

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "JAXCXR_HUGE_PAGES"
REEXEC_GUARD = "JAXCXR_HUGE_PAGES_REEXEC"  # Set in the re-executed process: never re-execute twice.
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
  if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off") or environ.get(REEXEC_GUARD):
    return None
  if system != "Linux" or libc[0] != "glibc" or not _glibc_at_least(libc[1], 2, 35) or thp != "madvise":
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables:
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
  env[REEXEC_GUARD] = "1"
  return env


def launched_as(orig_argv, module, path):
  """Whether the interpreter's own command line (`sys.orig_argv`) runs this command directly, as `python
  [options] -m MODULE ...` or `python [options] PATH ...`. Only then does re-executing it rerun the command
  and nothing else: a program that runs the command's source itself (pdb, a profiler, runpy in a forked
  test runner, a notebook) is left alone."""
  args = list(orig_argv[1:])
  i = 0
  while i < len(args):
    a = args[i]
    if a == "-m":
      return i + 1 < len(args) and args[i + 1] == module
    if a.startswith("-m"):
      return a[2:] == module
    if a in ("-X", "-W", "--check-hash-based-pycs"):
      i += 2  # Options that take the next argument as their value.
      continue
    if a == "-c" or a.startswith("-c") or a == "-":
      return False
    if not a.startswith("-"):  # The script: python's first argument that is not an option.
      return bool(path) and os.path.abspath(a) == os.path.abspath(path)
    i += 1
  return False


def reexec_with_huge_pages(spec, path):
  """Re-executes this process (same interpreter, same arguments) with huge pages, when reexec_env says so
  and the process was launched as this command.

  Call it first thing in a command's `__main__`, before JAX is imported, with that module's `__spec__` and
  `__file__`.
  """
  if not launched_as(sys.orig_argv, getattr(spec, "name", None), path):
    return
  env = reexec_env(os.environ, system=platform.system(), libc=platform.libc_ver(), thp=thp_mode())
  if env is None:
    return
  if not sys.executable:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
  except OSError:
    return  # Run on as it is, without huge pages.
