"""Every command given a bad input: exit code 2, one non-empty line on stderr, no traceback, before any work.

The sweep runs each case as its own process, forked from one runner that has already imported what the
commands import (JAX, Flax, Orbax, scikit-learn, ...): a fresh `python -m jaxcxr.main` spends ~4 s of CPU
on imports alone, forty of them would not fit the suite's budget. In each fork the command module itself
runs as `__main__` from its source (runpy), with its own argv, stdout and stderr, exactly as `python -m`
would run it after the imports. A few cases also run as plain `python -m` processes, so that the real
entry path is covered end to end.
"""

import concurrent.futures
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Commands that take --config, and the flags each needs besides it (WORKDIR is replaced per case).
CONFIG_COMMANDS = {
    "main": ["--workdir=WORKDIR"], "evaluate": ["--workdir=WORKDIR"], "study": ["--workdir=WORKDIR"],
    "smote": ["--workdir=WORKDIR"], "export_embeddings": ["--workdir=WORKDIR"], "prepare": [], "stats": [],
    "inspect_data": [], "bench": [],
}
# One bad value for each kind of field: (kind, config argument, extra override, what the line must name).
BAD_VALUES = [
    ("misspelt name", "configs/demo.py", "--config.loss.name=focall", "loss.name='focall'"),
    ("negative size", "configs/demo.py", "--config.train.batch_size=-4", "train.batch_size=-4"),
    ("fraction out of range", "configs/demo.py", "--config.data.sampling.ratio=1.5", "data.sampling.ratio=1.5"),
    ("unknown arm token", "configs/demo.py:nosucharm", None, "'nosucharm'"),
    ("unknown field", "configs/demo.py", "--config.train.batch_sizee=4", "batch_sizee"),
    ("wrong type", "configs/demo.py", "--config.train.num_steps=many", "num_steps"),
    ("missing config file", "configs/nosuch.py", None, "configs/nosuch.py"),
]
# phantom takes no config: its flags, one of each kind.
PHANTOM_CASES = [
    ("negative size", ["--num_images=-4"], "num_images"),
    ("fraction out of range", ["--hernia_prevalence=1.5"], "hernia_prevalence"),
    ("wrong type", ["--image_size=abc"], "image_size"),
    ("config given", ["--config=configs/demo.py:nosucharm"], "config"),
]
# Commands that read a training run's workdir.
WORKDIR_COMMANDS = ("evaluate", "export_embeddings", "smote")
# Commands that use a trained run and take no --config: (command, the arguments besides --workdir).
USE_COMMANDS = {"predict": ["INPUT"], "localize": []}
# Cases that also run as plain `python -m` processes (one per kind of failure path).
PLAIN = [("stats", "unknown arm token"), ("prepare", "unknown field"), ("inspect_data", "negative size"),
         ("main", "misspelt name")]

RUNNER = r"""
import json, os, runpy, sys, time, traceback
import jax, flax, ml_collections, optax, orbax.checkpoint, grain, sklearn, imblearn, matplotlib  # What commands import.
# The libraries the commands stand on; the commands themselves define their flags when run, once per child.
from jaxcxr import config_check, embeddings, evaluation, experiment, head_stages, study_runner, train
config_check.check(ml_collections.ConfigDict())  # Imports the modules the check reads names from.

def child(module, argv, err):
  fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  os.dup2(fd, 2)
  os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
  sys.argv = [module] + argv
  sys.modules.pop(module, None)  # Run the module's source as __main__, not the imported copy.
  code = 1
  try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    code = 0
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if not isinstance(e.code, (int, type(None))):
      print(e.code, file=sys.stderr)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)

cases = json.loads(sys.stdin.read())
running, results = {}, {}
for i, (module, argv, err) in enumerate(cases):
  while len(running) >= 2:
    pid, status = os.wait()
    j, t0 = running.pop(pid)
    results[j] = (os.waitstatus_to_exitcode(status), time.monotonic() - t0)
  pid = os.fork()
  if pid == 0:
    child(module, argv, err)
  running[pid] = (i, time.monotonic())
while running:
  pid, status = os.wait()
  j, t0 = running.pop(pid)
  results[j] = (os.waitstatus_to_exitcode(status), time.monotonic() - t0)
print(json.dumps([results[i] for i in range(len(cases))]))
"""


def _env(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", HOME=str(tmp_path / "home"))
  env.pop("JAX_NUM_CPU_DEVICES", None)
  return env


def _cases(tmp_path, trained):
  """(id, module, argv, must_name) for every command and bad value; `trained` is a finished tiny run."""
  out = []
  for command in ("evaluate", "export_embeddings"):  # A checkpoint that does not exist.
    out.append((f"{command}: checkpoint 999", f"jaxcxr.{command}", [f"--workdir={trained}", "--checkpoint=999"],
                "step 999"))
  for command, extra in USE_COMMANDS.items():
    argv = [a.replace("INPUT", trained) for a in extra]
    out.append((f"{command}: checkpoint 999", f"jaxcxr.{command}",
                [f"--workdir={trained}", "--checkpoint=999", *argv], "step 999"))
  for command, extra in CONFIG_COMMANDS.items():
    for kind, config, override, must_name in BAD_VALUES:
      workdir = str(tmp_path / "work" / f"{command}-{kind.replace(' ', '_')}")
      argv = [f"--config={config}"] + ([override] if override else [])
      argv += [a.replace("WORKDIR", workdir) for a in extra]
      out.append((f"{command}: {kind}", f"jaxcxr.{command}", argv, must_name))
  for kind, argv, must_name in PHANTOM_CASES:
    out.append((f"phantom: {kind}", "jaxcxr.phantom", [f"--out={tmp_path / 'phantom'}"] + argv, must_name))
  empty = tmp_path / "empty_workdir"
  empty.mkdir()
  for command in WORKDIR_COMMANDS:  # A workdir without a run, with and without --config.
    for suffix, extra in (("", []), (" with --config", ["--config=configs/demo.py:smote"])):
      out.append((f"{command}: empty workdir{suffix}", f"jaxcxr.{command}", [f"--workdir={empty}", *extra],
                  str(empty)))
  for command, extra in USE_COMMANDS.items():
    argv = [a.replace("INPUT", str(empty)) for a in extra]
    out.append((f"{command}: empty workdir", f"jaxcxr.{command}", [f"--workdir={empty}", *argv], str(empty)))
  return out


def _check(case_id, rc, stderr, must_name):
  lines = [line for line in stderr.splitlines() if line.strip()]
  problems = []
  if rc != 2:
    problems.append(f"exit code {rc}")
  if "Traceback" in stderr:
    problems.append("a traceback")
  if len(lines) != 1:
    problems.append(f"{len(lines)} lines")
  elif must_name not in lines[0]:
    problems.append(f"a line without {must_name!r}")
  return f"{case_id}: {', '.join(problems)}:\n{stderr[-1500:]}" if problems else None


@pytest.fixture(scope="module")
def trained(tiny_data_dir, tmp_path_factory):
  """A finished two-step run of the tiny config (one checkpoint, at step 2)."""
  from jaxcxr import experiment  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("trained"))
  experiment.run(tiny_config(tiny_data_dir, num_steps=2, eval_every=2, checkpoint_every=2, log_every=1,
                             warmup_steps=1), workdir)
  return workdir


@pytest.fixture(scope="module")
def sweep(trained, tmp_path_factory):
  """Runs every case (forked from one runner, two at a time) and the PLAIN ones as `python -m`, in parallel."""
  tmp_path = tmp_path_factory.mktemp("bad_input")
  cases = _cases(tmp_path, trained)
  errs = [str(tmp_path / f"err{i}.txt") for i in range(len(cases))]
  by_id = {c[0]: c for c in cases}
  env = _env(tmp_path)

  def plain(case_id):
    _, module, argv, _ = by_id[case_id]
    proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stderr

  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    plain_runs = {f"{c}: {k}": pool.submit(plain, f"{c}: {k}") for c, k in PLAIN}
    runner = subprocess.run([sys.executable, "-c", RUNNER], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600, input=json.dumps([(m, a, e) for (_, m, a, _), e in zip(cases, errs)]))
    assert runner.returncode == 0, runner.stderr[-3000:]
    codes = json.loads(runner.stdout.strip().splitlines()[-1])
    results = {}
    for (case_id, _, _, _), err, (rc, _) in zip(cases, errs, codes):
      with open(err) as f:
        results[case_id] = (rc, f.read())
    plain_results = {k: f.result() for k, f in plain_runs.items()}
  return by_id, results, plain_results


def test_every_command_rejects_every_bad_value_in_one_line(sweep):
  by_id, results, _ = sweep
  ids = [i for i in results if "empty workdir" not in i and "checkpoint 999" not in i]
  assert len(ids) == len(CONFIG_COMMANDS) * len(BAD_VALUES) + len(PHANTOM_CASES)
  failures = [_check(i, *results[i], by_id[i][3]) for i in ids]
  failures = [f for f in failures if f]
  assert not failures, f"{len(failures)} of {len(results)} cases failed:\n\n" + "\n\n".join(failures)


def test_config_errors_name_field_value_and_what_is_allowed(sweep):
  _, results, _ = sweep
  assert results["main: misspelt name"][1].strip() == (
      "jaxcxr: config.loss.name='focall' is not allowed: use one of 'bce', 'weighted_bce', 'focal', "
      "'class_balanced', 'asl', 'ldam', 'logit_adjusted'.")
  assert "an integer >= 1" in results["stats: negative size"][1]
  assert "a number in (0, 1)" in results["bench: fraction out of range"][1]
  assert "valid tokens: arms baseline" in results["prepare: unknown arm token"][1]
  assert 'Did you mean "batch_size"' in results["evaluate: unknown field"][1]


@pytest.mark.parametrize("case_id", [f"{c}: {k}" for c, k in PLAIN])
def test_plain_processes_agree(sweep, case_id):
  by_id, results, plain_results = sweep
  rc, stderr = plain_results[case_id]
  failure = _check(case_id + " (python -m)", rc, stderr, by_id[case_id][3])
  assert failure is None, failure
  assert stderr.strip() == results[case_id][1].strip()  # The forked run said the same.


def test_workdir_without_a_run(sweep):
  """evaluate / export_embeddings / smote on an empty folder, with and without --config, and predict and
  localize on one: one line."""
  by_id, results, _ = sweep
  ids = [i for i in results if "empty workdir" in i]
  assert len(ids) == 2 * len(WORKDIR_COMMANDS) + len(USE_COMMANDS)
  failures = [f for f in (_check(i, *results[i], by_id[i][3]) for i in ids) if f]
  assert not failures, "\n\n".join(failures)


def test_checkpoint_that_does_not_exist(sweep):
  """--checkpoint=999 on a run whose only checkpoint is step 2: one line listing the steps there are."""
  by_id, results, _ = sweep
  for command in ("evaluate", "export_embeddings", *USE_COMMANDS):
    case_id = f"{command}: checkpoint 999"
    failure = _check(case_id, *results[case_id], by_id[case_id][3])
    assert failure is None, failure
    assert "available steps: 2" in results[case_id][1]
