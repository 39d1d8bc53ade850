"""How this process joins a multi-process run: explicit flags, environment variables, or a known cluster.

`plan(...)` is a pure function of the flags and an environment dict; `initialize(...)` applies it with
`jax.distributed.initialize` before any other JAX call and logs which way was taken. In order:

  flags        --coordinator_address, --num_processes, --process_id (all three), e.g. from
               launch/local_multiprocess.sh.
  environment  JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and JAX_PROCESS_ID (or, in a Kubernetes
               indexed Job / JobSet, the JOB_COMPLETION_INDEX that Kubernetes sets): launch/jobset.yaml.
  slurm        srun with more than one task (SLURM_JOB_ID, SLURM_NTASKS > 1): launch/slurm.sbatch.
  openmpi      mpirun with more than one rank (OMPI_MCA_orte_hnp_uri, OMPI_COMM_WORLD_SIZE > 1).
  cloud_tpu    a Cloud TPU VM (JAX found libtpu and TPU chips; worker list from the metadata server) or
               GKE TPU pods (TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES): launch/tpu_pod.sh.

For slurm, openmpi and cloud_tpu, `jax.distributed.initialize()` is called with no arguments and JAX's own
cluster detection (jax/_src/clusters) reads the rest. Anything else is a single process: nothing to do.
JAX's Kubernetes auto-detection is not used: it needs the `kubernetes` package and a service account that
may read pods; the explicit environment variables need neither.
"""

import dataclasses
import os
from typing import Mapping, Optional

from absl import logging

from jaxcxr import errors


# Explicit arguments: skip JAX's cluster probes (they would, e.g., warn on Kubernetes without the
# `kubernetes` package); every local device stays visible to the one process of its host or pod.
_NO_DETECTION = {"cluster_detection_method": "deactivate"}


class ClusterError(errors.UserError, ValueError):
  """The flags or the environment describe an incomplete multi-process run; the message says what to set."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """How to call jax.distributed.initialize: `kind` names the source, `kwargs` its arguments."""
  kind: str
  kwargs: dict
  description: str


def _int(env, name, default=None):
  value = env.get(name, default)
  try:
    return int(value)
  except ValueError:
    raise ClusterError(f"Environment variable {name}={value!r} is not an integer.") from None


def plan(*, env: Mapping[str, str], coordinator_address: Optional[str] = None,
         num_processes: Optional[int] = None, process_id: Optional[int] = None,
         on_cloud_tpu: bool = False) -> Optional[Plan]:
  """The way this process joins a multi-process run, or None for a single-process run.

  Args:
    env: the environment (os.environ).
    coordinator_address, num_processes, process_id: the command-line flags (None when not given).
    on_cloud_tpu: whether JAX runs on a Cloud TPU VM (jax._src.cloud_tpu_init.running_in_cloud_tpu_vm).
  """
  flags = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  if any(v is not None for v in flags.values()):
    missing = [f"--{k}" for k, v in flags.items() if v is None]
    if missing:
      raise ClusterError(f"Multi-process flags are incomplete: give {', '.join(missing)} as well "
                         "(or none of the three to let the cluster be detected).")
    return Plan("flags", {**flags, **_NO_DETECTION}, f"flags: coordinator {coordinator_address}, process {process_id} of "
                f"{num_processes}")

  if env.get("JAX_COORDINATOR_ADDRESS"):
    count_name = "JAX_NUM_PROCESSES"
    id_name = "JAX_PROCESS_ID" if "JAX_PROCESS_ID" in env else "JOB_COMPLETION_INDEX"
    missing = [n for n in (count_name, id_name) if n not in env]
    if missing:
      raise ClusterError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} is not: set "
                         "JAX_NUM_PROCESSES and JAX_PROCESS_ID (in a Kubernetes indexed Job, the "
                         "JOB_COMPLETION_INDEX Kubernetes sets serves as the process id).")
    kwargs = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"],
              "num_processes": _int(env, count_name), "process_id": _int(env, id_name)}
    return Plan("environment", {**kwargs, **_NO_DETECTION}, f"environment: coordinator {kwargs['coordinator_address']}, "
                f"process {kwargs['process_id']} ({id_name}) of {kwargs['num_processes']}")

  if "SLURM_JOB_ID" in env and _int(env, "SLURM_NTASKS", "1") > 1:
    needed = ("SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
    missing = [n for n in needed if n not in env]
    if missing:
      raise ClusterError(f"SLURM job {env['SLURM_JOB_ID']} has SLURM_NTASKS={env['SLURM_NTASKS']} but "
                         f"{', '.join(missing)} is unset: start one process per task with `srun python -m "
                         "jaxcxr.main ...` (see launch/slurm.sbatch), not python directly.")
    return Plan("slurm", {}, f"SLURM job {env['SLURM_JOB_ID']}: task {env['SLURM_PROCID']} of "
                f"{env['SLURM_NTASKS']} (local task {env['SLURM_LOCALID']} of its node)")

  if "OMPI_MCA_orte_hnp_uri" in env and _int(env, "OMPI_COMM_WORLD_SIZE", "1") > 1:
    return Plan("openmpi", {}, f"Open MPI: rank {env.get('OMPI_COMM_WORLD_RANK', '?')} of "
                f"{env['OMPI_COMM_WORLD_SIZE']}")

  workers = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
  if (on_cloud_tpu and env.get("TPU_SKIP_MDS_QUERY") is None) or "," in workers:
    where = f"workers {workers}" if workers else "workers from the TPU metadata server"
    return Plan("cloud_tpu", {}, f"Cloud TPU: worker {env.get('TPU_WORKER_ID', '?')}, {where}")
  return None


def initialize(*, coordinator_address=None, num_processes=None, process_id=None, env=None):
  """Joins the multi-process run that `plan` finds (if any); must run before any other JAX call."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top

  env = os.environ if env is None else env
  p = plan(env=env, coordinator_address=coordinator_address, num_processes=num_processes,
           process_id=process_id, on_cloud_tpu=cloud_tpu_init.running_in_cloud_tpu_vm)
  if p is None:
    logging.info("Single process: no multi-process flags, cluster or coordinator environment found.")
    return None
  logging.info("Joining a multi-process run via %s.", p.description)
  jax.distributed.initialize(**p.kwargs)
  logging.info("Joined as process %d of %d.", jax.process_index(), jax.process_count())
  return p
