"""jaxcxr.bench on the tiny config: it runs, its figures are consistent, and its fallbacks say what they did.

Speed itself is never asserted (benchmarks print figures; tests check that they are computed right).
"""

import importlib.util
import json
import math
import os
import platform
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxcxr import bench
from jaxcxr import cli
from jaxcxr.data import datasets
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir):
  config = tiny_config(data_dir, batch_size=8)
  config.train.compilation_cache = ""  # Leave the test session's own cache alone.
  return config


def test_summarize_takes_the_median_window():
  r = bench.summarize([0.3, 0.1, 0.2], batch=16, steps=4)
  assert math.isclose(r["images_per_s"], 16 * 4 / 0.2)
  assert math.isclose(r["ms_per_step"], 1e3 * 0.2 / 4)
  assert np.allclose(r["window_images_per_s"], [16 * 4 / s for s in (0.3, 0.1, 0.2)])


def test_step_loader_e2e_on_all_devices(tiny_data_dir, tmp_path):
  config = _config(str(tmp_path / "absent"))  # No data there: the loader must fall back to synthetic.
  res = bench.run_bench(config, parts=["step", "loader", "e2e"], steps=2, warmup=1, windows=2, peer="none",
                        data="auto", synthetic_images=64)
  assert res["device"]["kind"] == jax.devices()[0].device_kind
  assert res["device"]["count"] == jax.device_count() == 4
  assert res["config"]["compute_dtype"] == "float32"  # 'auto' on CPU.
  assert "SYNTHETIC" in res["loader_data"] and "absent" in res["loader_data"]
  for part in ("step", "loader", "e2e"):
    r = res["parts"][part]
    assert np.isfinite(r["images_per_s"]) and r["images_per_s"] > 0
    # images/s and ms/step describe the same median window of the global batch.
    assert math.isclose(r["images_per_s"] * r["ms_per_step"] / 1e3 / 8, 1.0, rel_tol=1e-9)
    assert len(r["window_images_per_s"]) == 2
  # The loader times windows several Grain read-ahead buffers long, not --steps batches.
  assert res["parts"]["loader"]["steps_per_window"] >= 4 * bench.grain_prefetch_buffer() // 8
  assert "% of step" in res["parts"]["e2e"]["notes"]
  json.dumps(res)  # Serialisable as written by --json_out.
  table = bench.format_table(res)
  assert [l.split()[0] for l in table.splitlines()[2:]] == ["step", "loader", "e2e"]


def test_loader_uses_prepared_data_when_present(tiny_data_dir):
  config = _config(tiny_data_dir)
  datasets.load_splits(config)  # Prepares the 32-px array once.
  split, note = bench.train_split(config, data="auto", synthetic_images=16)
  assert note.startswith("prepared phantom data") and len(split) == int(note.split(", ")[1].split()[0])
  split, note = bench.train_split(config, data="synthetic", synthetic_images=16)
  assert "SYNTHETIC" in note and len(split) == 16 and split.images.shape == (16, 32, 32)


def test_peer_is_skipped_without_pytorch(tmp_path, monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else object())
  res = bench.bench_peer(_config(str(tmp_path)), steps=1, warmup=1, windows=1)
  assert "torch not installed" in res["skipped"]
  config = _config(str(tmp_path))
  config.model.name = "resnet_tiny"
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
  assert "no torchvision counterpart" in bench.bench_peer(config, steps=1, warmup=1, windows=1)["skipped"]


def test_a_failing_torch_compile_is_a_skipped_row_with_the_reason(tmp_path, monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
  modes = []

  def child(code, *args, timeout_s):
    del code, timeout_s
    modes.append(args[-1])
    if args[-1] == "compile":
      raise RuntimeError("bench child process failed (exit 1):\nInductorError: no C++ compiler")
    return {"images_per_s": 10.0}

  monkeypatch.setattr(bench, "_run_child", child)
  config = _config(str(tmp_path))
  config.model.name = "resnet18"
  assert bench.bench_peer(config, steps=1, warmup=1, windows=1) == {"images_per_s": 10.0}
  res = bench.bench_peer(config, steps=1, warmup=1, windows=1, mode="compile")
  assert res["skipped"] == "torch.compile did not run: InductorError: no C++ compiler"
  assert modes == ["eager", "compile"]


def test_peer_notes_give_jaxcxr_over_each_peer(tmp_path):
  config = _config(str(tmp_path))
  peers = {"eager": {"images_per_s": 50.0, "torch": "2.x", "device": "cpu", "precision": "float32"},
           "compile": {"images_per_s": 80.0, "torch": "2.x", "device": "cpu", "precision": "float32",
                       "first_step_s": 12.0},
           }
  bench.peer_notes(peers, config=config, step={"images_per_s": 40.0})
  assert math.isclose(peers["eager"]["jaxcxr_over_torch"], 0.8)
  assert math.isclose(peers["compile"]["jaxcxr_over_torch"], 0.5)
  assert "eager" in peers["eager"]["notes"] and "torch.compile" in peers["compile"]["notes"]
  skipped = {"compile": {"skipped": "why"}}
  bench.peer_notes(skipped, config=config, step={"images_per_s": 40.0})
  assert skipped == {"compile": {"skipped": "why"}}


def test_torchvision_peer_runs_when_pytorch_is_installed(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  config = _config(str(tmp_path))
  config.model.name = "resnet18"
  config.data.image_size, config.train.batch_size = 32, 2
  res = bench.bench_peer(config, steps=1, warmup=1, windows=2)
  assert res["mode"] == "eager" and res["device"] == "cpu"
  assert len(res["window_images_per_s"]) == 2 and res["images_per_s"] > 0
  assert math.isclose(res["images_per_s"] * res["ms_per_step"] / 1e3 / 2, 1.0, rel_tol=1e-9)
  assert np.isfinite(res["final_loss"])


def test_enable_compilation_cache(tmp_path):
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  before = {k: getattr(jax.config, k) for k in keys}
  try:
    assert cli.enable_compilation_cache("") is None
    assert jax.config.jax_compilation_cache_dir == before["jax_compilation_cache_dir"]
    path = cli.enable_compilation_cache(str(tmp_path / "xla"), min_compile_time_secs=2.5)
    assert path == str(tmp_path / "xla") and os.path.isdir(path)
    assert jax.config.jax_compilation_cache_dir == path
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.5
  finally:
    for k, v in before.items():
      jax.config.update(k, v)


def test_cli_prints_table_and_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
  proc = subprocess.run(
      [sys.executable, "-m", "jaxcxr.bench", "--config=configs/demo.py:sample_only",
       "--config.model.name=resnet_tiny", "--config.data.image_size=32", "--config.train.batch_size=8",
       "--config.train.compilation_cache=", "--parts=step,loader", "--peer=none", "--data=synthetic",
       "--synthetic_images=64", "--steps=2", "--warmup=1", "--windows=1", f"--json_out={out}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  header = next(i for i, l in enumerate(lines) if l.startswith("part"))
  assert [l.split()[0] for l in lines[header + 2:header + 4]] == ["step", "loader"]
  saved = json.loads(out.read_text())
  assert saved["device"]["count"] == 1 and set(saved["parts"]) == {"step", "loader"}
  assert f"JSON: {out}" in proc.stdout
  # sample_only does not augment, and the step row says so (the PyTorch peer never does).
  assert saved["config"]["augment"] is False and saved["config"]["arm"] == "sample_only"
  assert "; no augmentation;" in saved["parts"]["step"]["notes"]
  # The command re-executed itself with huge pages where this machine allows it (jaxcxr.hostmem), and
  # the record says under which malloc settings the figures were taken.
  from jaxcxr import hostmem  # pylint: disable=g-import-not-at-top
  expected = hostmem.reexec_env(env, system=platform.system(), libc=platform.libc_ver(), thp=hostmem.thp_mode())
  assert saved["device"]["glibc_tunables"] == (expected or env).get("GLIBC_TUNABLES", "")
  assert f"GLIBC_TUNABLES={saved['device']['glibc_tunables'] or '(unset)'}, THP " in proc.stdout
  assert saved["device"]["thp"] == hostmem.thp_mode()


@pytest.mark.parametrize("mode", ["", "--kernel_grad", "--pool", "--skinny_dot"])
def test_xla_cpu_reproduction_script_runs_each_mode(mode):
  # The standalone script meant for an upstream report: every mode runs at a tiny size and prints one row
  # per map size (the --kernel_grad mode also checks the rewrite equals XLA's gradient).
  cmd = [sys.executable, "benchmarks/xla_cpu_small_conv.py", "--channels=8", "--batch=2", "--sizes=2,4",
         "--repeats=1"] + ([mode] if mode else [])
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-2000:]
  # Rows start with the map ("2x2") or, for --skinny_dot, M = batch * side^2 (8, 32).
  rows = [line for line in proc.stdout.splitlines()
          if line.split() and line.split()[0] in ("2x2", "4x4", "8", "32")]
  assert len(rows) == 2, proc.stdout
