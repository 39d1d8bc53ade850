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
    ({"JAXCXR_HUGE_PAGES": "Off"}, {}),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, {}),  # The user's own choice stands.
    ({hostmem.REEXEC_GUARD: "1"}, {}),  # Never twice, even if glibc dropped the variable.
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


def test_a_process_reexecutes_itself_with_its_arguments(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hostmem.OPT_OUT, hostmem.REEXEC_GUARD)}
  if hostmem.reexec_env(env, system=platform.system(), libc=platform.libc_ver(), thp=hostmem.thp_mode()) is None:
    pytest.skip("this machine gives no reason to re-execute (not Linux/glibc 2.35+, or THP not 'madvise')")
  script = tmp_path / "command.py"
  # No flush after 'start': stdout is a pipe, so the hook itself must flush it before exec, or it is lost.
  script.write_text("import os, sys\nfrom jaxcxr import hostmem\nprint('start')\n"
                    "hostmem.reexec_with_huge_pages(__spec__, __file__)\n"
                    "print(os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])\n")
  env["PYTHONPATH"] = os.pathsep.join([ROOT, str(tmp_path)])
  run = lambda argv, **extra: subprocess.run([sys.executable, *argv], env={**env, **extra}, capture_output=True,
                                             text=True, timeout=120, check=True).stdout.splitlines()
  # 'start' twice: the process ran its first line, re-executed, and ran again with the tunable set.
  rerun = ["start", "start", "glibc.malloc.hugetlb=1 ['a', '--b=1']"]
  assert run([str(script), "a", "--b=1"]) == rerun
  assert run(["-m", "command", "a", "--b=1"]) == rerun
  assert run([str(script)], JAXCXR_HUGE_PAGES="0", GLIBC_TUNABLES="glibc.malloc.perturb=0") == [
      "start", "glibc.malloc.perturb=0 []"]
  # The same source run by another program (runpy from `python -c`, as a forked test runner does; pdb) does
  # not re-execute that program.
  runner = f"import runpy, sys; sys.argv = ['x']; runpy.run_path({str(script)!r}, run_name='__main__')"
  assert run(["-c", runner]) == ["start", " []"]


def test_launched_as_reads_the_interpreters_own_command_line():
  path = os.path.join(ROOT, "jaxcxr", "main.py")
  launched = lambda *argv, module="jaxcxr.main": hostmem.launched_as(["python", *argv], module, path)
  assert launched("-m", "jaxcxr.main", "--config=x")
  assert launched("-X", "dev", "-u", "-mjaxcxr.main")
  assert launched(path, "--config=x", module=None)
  assert not launched("-m", "pdb", "-m", "jaxcxr.main")  # A debugger or profiler hosts the command.
  assert not launched("-m", "cProfile", "-o", "out", "-m", "jaxcxr.main")
  assert not launched("driver.py", "-m", "jaxcxr.main")  # Arguments of another script.
  assert not launched("-c", "runner code")
  assert not launched("-m", "pytest", "tests")
  assert not launched("-m", "jaxcxr.study")


HEAVY_COMMANDS = ["main", "study", "bench", "evaluate", "export_embeddings", "smote"]


@pytest.mark.parametrize("command", HEAVY_COMMANDS)
def test_heavy_commands_reexecute_before_their_imports(command):
  """The commands that run XLA for long call the hook at the top of `__main__`, before any import other than
  hostmem's own: re-executing after `import jax` would import everything twice."""
  import ast  # pylint: disable=g-import-not-at-top
  with open(os.path.join(ROOT, "jaxcxr", f"{command}.py")) as f:
    body = ast.parse(f.read()).body
  hooks = [i for i, node in enumerate(body) if isinstance(node, ast.If) and "reexec_with_huge_pages" in
           ast.unparse(node) and "__main__" in ast.unparse(node.test)]
  assert len(hooks) == 1, f"jaxcxr/{command}.py has no `if __name__ == '__main__'` hook at module level"
  hook = hooks[0]
  imports = [i for i, node in enumerate(body) if isinstance(node, (ast.Import, ast.ImportFrom))]
  assert [ast.unparse(body[i]) for i in imports if i < hook] == ["from jaxcxr import hostmem"]
