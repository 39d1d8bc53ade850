"""Fault injection: damaged checkpoints, a changed config, SIGTERM and SIGKILL mid-run, then a rerun."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxcxr import errors
from jaxcxr import experiment
from jaxcxr import model_context
from jaxcxr import runfolder
from jaxcxr import train
from tests.helpers import tiny_config
from tests.helpers import tiny_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def uninterrupted(tiny_data_dir, tmp_path_factory):
  """The tiny run, start to finish, never interrupted: (config, workdir, report)."""
  config = tiny_config(tiny_data_dir)
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  return config, workdir, experiment.run(config, workdir)


def _params(workdir, step):
  return jax.device_get(model_context.ModelContext.from_workdir(workdir).restore_step(step)["params"])


def _largest_file(directory):
  files = [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]
  return max(files, key=os.path.getsize)


def test_truncated_latest_checkpoint_is_set_aside_and_the_run_resumes(tiny_data_dir, tmp_path, caplog):
  workdir = str(tmp_path)
  train.train(tiny_config(tiny_data_dir, num_steps=6, eval_every=100), workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  assert sorted(n for n in os.listdir(ckpts) if n.isdigit()) == ["2", "4", "6"]
  victim = _largest_file(os.path.join(ckpts, "6"))
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 3)
  report = experiment.run(tiny_config(tiny_data_dir, num_steps=8), workdir)  # More steps: extends the run.
  assert report["checkpoint_step"] in (4, 8) and report["classes"]
  assert any("step 6 does not restore" in r.getMessage() for r in caplog.records)
  kept = os.listdir(os.path.join(ckpts, runfolder.CORRUPT))
  assert len(kept) == 1 and kept[0].startswith("6-")  # Kept aside, never deleted.
  assert "8" in os.listdir(ckpts)
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [l["step"] for l in lines if "train_loss" in l] == [2, 4, 6, 8]  # 6 redone from the step-4 state.


def test_deleted_checkpoint_file_also_falls_back(tiny_data_dir, tmp_path):
  workdir = str(tmp_path)
  train.train(tiny_config(tiny_data_dir, num_steps=4, eval_every=100), workdir)
  os.remove(_largest_file(os.path.join(workdir, "checkpoints", "4")))
  train.train(tiny_config(tiny_data_dir, num_steps=6, eval_every=100), workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  assert {"2", "6"} <= set(os.listdir(ckpts)) and os.listdir(os.path.join(ckpts, runfolder.CORRUPT))


def test_a_save_killed_half_way_is_ignored(tiny_data_dir, tmp_path):
  """What a SIGKILL in the middle of an Orbax save leaves: a temporary step folder with partial files. The
  rerun resumes from the last finished checkpoint and completes; the partial save is never restored."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path)
  train.train(tiny_config(tiny_data_dir, num_steps=4, eval_every=100), workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  partial = os.path.join(ckpts, "6.orbax-checkpoint-tmp-1764500000")
  shutil.copytree(os.path.join(ckpts, "4"), partial)
  victim = _largest_file(partial)
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)
  report = experiment.run(tiny_config(tiny_data_dir, num_steps=6, eval_every=100), workdir)
  assert report["checkpoint_step"] == 6
  assert "6" in os.listdir(ckpts) and not os.path.exists(os.path.join(ckpts, runfolder.CORRUPT))
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [l["step"] for l in lines if "train_loss" in l] == [2, 4, 6]


def test_a_changed_config_is_refused_and_safe_changes_continue(uninterrupted, tiny_data_dir):
  config, workdir, _ = uninterrupted
  changed = tiny_config(tiny_data_dir)
  changed.model.name = "resnet10_w16"
  changed.loss.name = "focal"
  with pytest.raises(runfolder.RunFolderError) as info:
    train.train(changed, workdir)
  message = str(info.value)
  assert "model.name: 'resnet_tiny' -> 'resnet10_w16'" in message and "loss.name: 'weighted_bce' -> 'focal'" in message
  assert "new --workdir" in message and "accept_config_change=True" in message and "\n" not in message
  assert json.load(open(os.path.join(workdir, "config.json")))["model"]["name"] == "resnet_tiny"  # Untouched.


def test_sigterm_saves_the_current_step_and_the_rerun_matches(uninterrupted, tiny_data_dir, tmp_path,
                                                             monkeypatch):
  """A real SIGTERM to this process in the middle of step 5 (between the checkpoints of 4 and 6): the run
  saves step 5, stops with errors.Preempted; the rerun ends with the uninterrupted run's report."""
  config, full_dir, full = uninterrupted
  original = model_context.ModelContext.global_batch
  calls = {"n": 0}

  def signalling(self, local):
    calls["n"] += 1
    if calls["n"] == 6:  # Batch 6 is read while step 5 runs.
      os.kill(os.getpid(), signal.SIGTERM)
    return original(self, local)

  monkeypatch.setattr(model_context.ModelContext, "global_batch", signalling)
  workdir = str(tmp_path / "preempted")
  with pytest.raises(errors.Preempted, match=r"SIGTERM at step \d+ .*Rerun the same command") as info:
    experiment.run(config, workdir)
  assert info.value.exit_code == 75
  monkeypatch.setattr(model_context.ModelContext, "global_batch", original)
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
  assert steps[-1] % 2 == 1, steps  # Saved at the step it stopped, not at a periodic one.
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
  resumed = experiment.run(config, workdir)
  assert resumed == full
  for a, b in zip(jax.tree.leaves(_params(full_dir, 8)), jax.tree.leaves(_params(workdir, 8))):
    np.testing.assert_array_equal(a, b)


def _main(workdir, data_dir, tmp_path, **train_fields):
  overrides = [f"--config.{k}={v}" for k, v in tiny_overrides(data_dir, **train_fields).items()]
  env = dict(os.environ, JAX_PLATFORMS="cpu", HOME=str(tmp_path), PYTHONUNBUFFERED="1")
  return subprocess.Popen([sys.executable, "-m", "jaxcxr.main", "--config=configs/demo.py:weighted", *overrides,
                           f"--workdir={workdir}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _wait_for_step(workdir, step, proc, timeout_s=240):
  path = os.path.join(workdir, "metrics.jsonl")
  end = time.time() + timeout_s
  while time.time() < end and proc.poll() is None:
    if os.path.exists(path) and any(json.loads(l).get("step", 0) >= step for l in open(path) if l.strip()):
      return True
    time.sleep(0.2)
  return False


def test_command_line_sigterm_exits_75_within_a_minute_and_sigkill_resumes(tiny_data_dir, tmp_path):
  """`jaxcxr.main` between periodic checkpoints: SIGTERM saves the current step and exits with 75 within
  60 s; then a SIGKILL of the rerun (no chance to save) and a third run that finishes from the checkpoints."""
  workdir = str(tmp_path / "run")
  proc = _main(workdir, tiny_data_dir, tmp_path, num_steps=400, eval_every=1000, checkpoint_every=1000,
               log_every=2)
  assert _wait_for_step(workdir, 4, proc), proc.communicate()[1][-3000:]
  sent = time.time()
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 75, err[-3000:]
  assert time.time() - sent < 60
  assert "Rerun the same command" in err and "Traceback" not in err
  steps = [int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()]
  assert len(steps) == 1 and 4 <= steps[0] < 400
  # Rerun, killed without warning after a few more steps: nothing to save, nothing lost beyond them.
  proc = _main(workdir, tiny_data_dir, tmp_path, num_steps=400, eval_every=1000, checkpoint_every=1000,
               log_every=2)
  assert _wait_for_step(workdir, steps[0] + 4, proc), proc.communicate()[1][-3000:]
  proc.kill()
  proc.communicate()
  # A third run with fewer steps left finishes from the saved checkpoint and writes the report.
  proc = _main(workdir, tiny_data_dir, tmp_path, num_steps=steps[0] + 6, eval_every=1000,
               checkpoint_every=1000, log_every=2)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert "Resuming from the checkpoint at step" in err
  assert os.path.exists(os.path.join(workdir, "report", "report.json"))


def test_a_second_run_on_a_busy_workdir_stops_at_once_and_the_first_finishes(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "busy")
  first = _main(workdir, tiny_data_dir, tmp_path, num_steps=60, eval_every=1000, checkpoint_every=1000,
                log_every=2)
  assert _wait_for_step(workdir, 2, first), first.communicate()[1][-3000:]
  started = time.time()
  second = _main(workdir, tiny_data_dir, tmp_path, num_steps=60, eval_every=1000, checkpoint_every=1000,
                 log_every=2)
  _, err = second.communicate(timeout=120)
  assert second.returncode != 0 and time.time() - started < 30, err[-2000:]
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and "in use by" in lines[0] and str(first.pid) in lines[0], err[-2000:]
  _, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-3000:]
  assert os.path.exists(os.path.join(workdir, "report", "report.json"))
