"""jaxcxr.hostmem: when a command re-executes itself with transparent huge pages, and that it does."""

import os
import platform
import subprocess
import sys

import pytest

from jaxcxr import hostmem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINUX = dict(system="Linux", libc=("glibc", "2.36"), thp="madvise")


def test_reexec_env_adds_the_tunable_and_a_guard():
  env = hostmem.reexec_env({"PATH": "/bin"}, **LINUX)
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1" and env["PATH"] == "/bin"
  again = hostmem.reexec_env(env, **LINUX)
  assert again is None  # The re-executed process runs as it is.
  kept = hostmem.reexec_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **LINUX)
  assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ,overrides", [
    ({"JAXCXR_HUGE_PAGES": "0"}, {}),  # The user's opt-out.
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, {}),  # The user's own choice stands.
    ({"JAXCXR_HUGE_PAGES_REEXEC": "1"}, {}),  # Never twice, even if glibc dropped the variable.
    ({}, {"system": "Darwin"}),
    ({}, {"libc": ("", "")}),  # musl and others.
    ({}, {"libc": ("glibc", "2.34")}),  # No hugetlb tunable before glibc 2.35.
    ({}, {"thp": "always"}),  # Every large mapping gets huge pages already.
    ({}, {"thp": "never"}),  # Nothing to gain.
    ({}, {"thp": None}),  # No /sys file: unknown kernel setting.
])
def test_reexec_env_leaves_the_process_alone(environ, overrides):
  assert hostmem.reexec_env(environ, **{**LINUX, **overrides}) is None


def test_thp_mode_reads_the_bracketed_mode(tmp_path):
  path = tmp_path / "enabled"
  path.write_text("always [madvise] never\n")
  assert hostmem.thp_mode(str(path)) == "madvise"
  assert hostmem.thp_mode(str(tmp_path / "missing")) is None


def test_a_process_reexecutes_itself_with_its_arguments():
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXCXR_HUGE_PAGES",
                                                          "JAXCXR_HUGE_PAGES_REEXEC")}
  if hostmem.reexec_env(env, system=platform.system(), libc=platform.libc_ver(), thp=hostmem.thp_mode()) is None:
    pytest.skip("this machine gives no reason to re-execute (not Linux/glibc 2.35+, or THP not 'madvise')")
  code = ("import os, sys; from jaxcxr import hostmem; print('start', flush=True); "
          "hostmem.reexec_with_huge_pages(); print(os.environ['GLIBC_TUNABLES'], sys.argv[1:])")
  proc = subprocess.run([sys.executable, "-c", code, "a", "--b=1"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120, check=True)
  # 'start' twice: the process ran its first line, re-executed, and ran again with the tunable set.
  assert proc.stdout.splitlines() == ["start", "start", "glibc.malloc.hugetlb=1 ['a', '--b=1']"]
  off = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "JAXCXR_HUGE_PAGES": "0",
                                                                    "GLIBC_TUNABLES": "glibc.malloc.perturb=0"},
                       capture_output=True, text=True, timeout=120, check=True)
  assert off.stdout.splitlines() == ["start", "glibc.malloc.perturb=0 []"]


HEAVY_COMMANDS = ["main", "study", "bench", "evaluate", "export_embeddings", "smote"]


@pytest.mark.parametrize("command", HEAVY_COMMANDS)
def test_heavy_commands_reexecute_before_their_imports(command):
  """The commands that run XLA for long call the hook at the top of `__main__`, before any import other than
  hostmem's own: re-executing after `import jax` would import everything twice."""
  import ast  # pylint: disable=g-import-not-at-top
  with open(os.path.join(ROOT, "jaxcxr", f"{command}.py")) as f:
    body = ast.parse(f.read()).body
  hook = next(i for i, node in enumerate(body) if isinstance(node, ast.If) and "reexec_with_huge_pages" in
              ast.unparse(node) and "__main__" in ast.unparse(node.test))
  imports = [i for i, node in enumerate(body) if isinstance(node, (ast.Import, ast.ImportFrom))]
  assert [ast.unparse(body[i]) for i in imports if i < hook] == ["from jaxcxr import hostmem"]
