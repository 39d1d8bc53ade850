"""parallel.mode 'jit' and 'shard_map' on 4 simulated devices equal one device; cluster detection; launchers."""

import os
import shlex
import subprocess

import jax
import numpy as np
import pytest

from jaxcxr import cluster
from jaxcxr import losses
from jaxcxr import model_context
from jaxcxr import train

# ------------------------------------------------------------------------------------------------------
# parallel.mode


def _config(mode):
  from configs import demo  # pylint: disable=g-import-not-at-top
  config = demo.get_config("baseline")
  config.model.name = "resnet_tiny"
  config.train.warmup_steps = 1  # Full learning rate from step 1, so the parameters move measurably.
  config.parallel.mode = mode
  return config


def _run(mode, devices, batches):
  """Params, batch_stats and the per-step metrics after training on `batches` with `mode` on `devices`."""
  config = _config(mode)
  model = model_context.create_model(config, prevalence=np.full(14, 0.05))
  loss_fn = losses.get_loss_fn(config.loss, num_pos=np.ones(14), num_total=10)
  mesh = model_context.make_mesh(devices)
  step, evaluate = train.PARALLEL_MODES[mode](mesh, loss_fn, model)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  state = jax.device_put(train.create_train_state(config, model, jax.random.key(0, impl="rbg"), 32),
                         replicated)
  history = []
  for b in batches:
    old = state
    state, metrics = step(state, jax.device_put(b, data))
    assert old.params["head"]["kernel"].is_deleted(), "the state is donated"
    history.append(jax.device_get(metrics))
  assert state.params["head"]["kernel"].sharding.is_fully_replicated
  probs = evaluate(state, jax.device_put(batches[0], data))
  assert probs.sharding.is_fully_replicated
  return jax.device_get((state.params, state.batch_stats)), history, np.asarray(probs)


@pytest.fixture(scope="module")
def batches():
  rng = np.random.default_rng(0)
  return [{"image": rng.integers(0, 256, (16, 32, 32, 1), dtype=np.uint8),
           "labels": (rng.random((16, 14)) < 0.2).astype(np.float32)} for _ in range(3)]


@pytest.fixture(scope="module")
def one_device(batches):
  return _run("jit", jax.devices()[:1], batches)


@pytest.mark.parametrize("mode", ["jit", "shard_map"])
def test_four_devices_equal_one_device(mode, batches, one_device):
  assert jax.device_count() == 4, "conftest sets JAX_NUM_CPU_DEVICES=4"
  (params, stats), history, probs = _run(mode, jax.devices(), batches)
  (params1, stats1), history1, probs1 = one_device
  assert jax.tree.structure(params) == jax.tree.structure(params1)
  assert jax.tree.structure(stats) == jax.tree.structure(stats1)
  # The running BatchNorm statistics moved; each device's own statistics would differ from the global
  # ones (with bn_axis_name=None this test fails), so equality says they were synchronised.
  assert not np.allclose(stats["bn_init"]["mean"], 0.0)
  for a, b in zip(jax.tree.leaves((params, stats)), jax.tree.leaves((params1, stats1))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  for m, m1 in zip(history, history1):
    np.testing.assert_allclose(m["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m["grad_norm"], m1["grad_norm"], rtol=1e-4)
  np.testing.assert_allclose(probs, probs1, rtol=1e-4, atol=1e-6)


def test_unknown_mode_is_an_error():
  with pytest.raises(ValueError, match="parallel.mode must be one of"):
    model_context.parallel_mode(_config("pmap"))


# ------------------------------------------------------------------------------------------------------
# Multi-host: which way jax.distributed.initialize is called (pure function of flags and environment).

SLURM = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
         "SLURM_STEP_NODELIST": "gpu[01-02]"}


def test_single_process_needs_nothing():
  assert cluster.plan(env={}) is None
  assert cluster.plan(env={"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
  assert cluster.plan(env={"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "1"}) is None
  assert cluster.plan(env={"TPU_WORKER_HOSTNAMES": "localhost"}) is None
  assert cluster.plan(env={"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None


def test_flags_win_and_must_be_complete():
  p = cluster.plan(env=SLURM, coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1)
  assert p.kind == "flags"
  assert p.kwargs == {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1,
                      "cluster_detection_method": "deactivate"}
  with pytest.raises(cluster.ClusterError, match="--num_processes, --process_id"):
    cluster.plan(env={}, coordinator_address="10.0.0.1:1234")
  # process_id 0 is a given flag, not a missing one.
  assert cluster.plan(env={}, coordinator_address="h:1", num_processes=2, process_id=0).kwargs["process_id"] == 0


def test_coordinator_environment_and_kubernetes_completion_index():
  env = {"JAX_COORDINATOR_ADDRESS": "jaxcxr-workers-0-0.jaxcxr:1234", "JAX_NUM_PROCESSES": "4",
         "JOB_COMPLETION_INDEX": "3", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
  p = cluster.plan(env=env)
  assert p.kind == "environment" and "JOB_COMPLETION_INDEX" in p.description
  assert p.kwargs == {"coordinator_address": "jaxcxr-workers-0-0.jaxcxr:1234", "num_processes": 4,
                      "process_id": 3, "cluster_detection_method": "deactivate"}
  assert cluster.plan(env={**env, "JAX_PROCESS_ID": "2"}).kwargs["process_id"] == 2
  with pytest.raises(cluster.ClusterError, match="JAX_NUM_PROCESSES"):
    cluster.plan(env={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_PROCESS_ID": "0"})
  with pytest.raises(cluster.ClusterError, match="JAX_NUM_PROCESSES='four'"):
    cluster.plan(env={**env, "JAX_NUM_PROCESSES": "four"})


def test_slurm_open_mpi_and_cloud_tpu_leave_the_rest_to_jax():
  p = cluster.plan(env=SLURM)
  assert (p.kind, p.kwargs) == ("slurm", {}) and "task 9 of 16" in p.description
  with pytest.raises(cluster.ClusterError, match="srun"):  # python run directly inside an allocation
    cluster.plan(env={k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"})
  p = cluster.plan(env={"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "8",
                        "OMPI_COMM_WORLD_RANK": "5"})
  assert (p.kind, p.kwargs) == ("openmpi", {}) and "rank 5 of 8" in p.description
  assert cluster.plan(env={}, on_cloud_tpu=True).kind == "cloud_tpu"
  assert cluster.plan(env={"TPU_SKIP_MDS_QUERY": "1"}, on_cloud_tpu=True) is None
  p = cluster.plan(env={"TPU_WORKER_HOSTNAMES": "t-0,t-1,t-2,t-3", "TPU_WORKER_ID": "2"})
  assert (p.kind, p.kwargs) == ("cloud_tpu", {}) and "worker 2" in p.description


def test_main_calls_initialize_with_the_plan(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  assert cluster.initialize(env={}) is None and calls == []
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  monkeypatch.setattr(jax, "process_count", lambda: 16)
  assert cluster.initialize(env=SLURM).kind == "slurm" and calls == [{}]


# ------------------------------------------------------------------------------------------------------
# Launchers: shell syntax, and the exact remote command of the TPU pod script.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script", ["local_multiprocess.sh", "slurm.sbatch", "tpu_pod.sh"])
def test_launch_scripts_parse(script):
  subprocess.run(["bash", "-n", os.path.join(ROOT, "launch", script)], check=True)


def test_tpu_pod_script_runs_main_on_every_worker():
  env = dict(os.environ, TPU_NAME="pod", ZONE="us-east5-a", DRY_RUN="1", PYTHON="python3")
  out = subprocess.run(["bash", "launch/tpu_pod.sh", "--config=configs/demo.py", "--workdir=/mnt/a b"],
                       cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
  argv = shlex.split(out)
  assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
  assert "--worker=all" in argv and "--zone=us-east5-a" in argv
  remote = next(a for a in argv if a.startswith("--command="))[len("--command="):]
  assert shlex.split(remote)[-5:] == ["python3", "-m", "jaxcxr.main", "--config=configs/demo.py",
                                      "--workdir=/mnt/a b"]
  missing = subprocess.run(["bash", "launch/tpu_pod.sh"], cwd=ROOT, env={"PATH": os.environ["PATH"]},
                           capture_output=True, text=True)
  assert missing.returncode != 0 and "TPU_NAME" in missing.stderr


def test_jobset_coordinator_is_pod_zero_and_counts_agree():
  yaml = pytest.importorskip("yaml")
  with open(os.path.join(ROOT, "launch", "jobset.yaml")) as f:
    jobset = yaml.safe_load(f)
  rjob = jobset["spec"]["replicatedJobs"][0]
  job = rjob["template"]["spec"]
  env = {e["name"]: e["value"] for e in job["template"]["spec"]["containers"][0]["env"]}
  name = jobset["metadata"]["name"]
  assert env["JAX_COORDINATOR_ADDRESS"].startswith(f"{name}-{rjob['name']}-0-0.{name}:")
  assert job["completionMode"] == "Indexed" and jobset["spec"]["network"]["enableDNSHostnames"]
  assert int(env["JAX_NUM_PROCESSES"]) == job["parallelism"] == job["completions"]
  p = cluster.plan(env={**env, "JOB_COMPLETION_INDEX": "1"})
  assert p.kwargs["process_id"] == 1 and p.kwargs["num_processes"] == job["parallelism"]
