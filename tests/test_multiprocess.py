"""2 processes x 2 simulated CPU devices on the loopback address equal 1 process x 4 devices."""

import os
import signal
import subprocess

import jax
import numpy as np

from jaxcxr import experiment
from jaxcxr import model_context
from tests.helpers import tiny_config, tiny_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = dict(num_steps=4, eval_every=4, checkpoint_every=4)
# Both sides name the arm: one that oversamples and augments, so the check covers the sampled stream's
# process shards and the augmentation keys as well as the step.
ARM = "oversample"


def _launch(workdir, data_dir, timeout=420):
  flags = [f"--config.{k}={v}" for k, v in tiny_overrides(data_dir, **STEPS).items()]
  env = dict(os.environ, PYTHON=os.environ.get("PYTHON", "python"), DEVICES_PER_PROCESS="2",
             LOG_DIR=str(workdir) + "_logs")
  env["PATH"] = os.path.dirname(__import__("sys").executable) + os.pathsep + env["PATH"]
  proc = subprocess.Popen(["bash", "launch/local_multiprocess.sh", "2", f"--config=configs/demo.py:{ARM}",
                           f"--workdir={workdir}", *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
  try:
    out, _ = proc.communicate(timeout=timeout)
  finally:  # Leave no process behind, whatever happened.
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  return proc.returncode, out


def test_two_processes_equal_one_process_four_devices(tiny_data_dir, tmp_path):
  config = tiny_config(tiny_data_dir, ARM, **STEPS)
  assert config.data.augment.enabled and config.data.sampling.name != "none"
  experiment.run(config, str(tmp_path / "single"))
  rc, out = _launch(tmp_path / "multi", tiny_data_dir)
  assert rc == 0, out[-3000:]
  # One report, written by process 0.
  assert (tmp_path / "multi" / "report" / "report.json").exists()
  single = model_context.ModelContext.from_workdir(str(tmp_path / "single")).restore_step(4)
  multi = model_context.ModelContext.from_workdir(str(tmp_path / "multi")).restore_step(4)
  for a, b in zip(jax.tree.leaves(model_context.to_host(single["params"])),
                  jax.tree.leaves(model_context.to_host(multi["params"]))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  leftover = subprocess.run(["pgrep", "-f", f"workdir={tmp_path / 'multi'}"], capture_output=True, text=True)
  assert leftover.stdout.strip() == ""
