"""Trains and evaluates a chest X-ray classifier described by an ml_collections config.

  python -m jaxcxr.main --config=configs/demo.py --workdir=/tmp/jaxcxr_demo
  python -m jaxcxr.main --config=configs/hernia.py:focal --config.data.dir=/data/nih --workdir=/tmp/hernia

Rerunning the same command in the same workdir resumes from its latest checkpoint. The test report is
written to WORKDIR/report/ (report.json, report.md, roc.png, pr.png, scores.npz); SMOTE arms add WORKDIR/smote/.
"""

from jaxcxr import hostmem

if __name__ == "__main__":
  hostmem.reexec_with_huge_pages(__spec__, __file__)  # First: glibc reads its tunables only at start.

# pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags
import jax
from ml_collections import config_flags

from jaxcxr import cli
from jaxcxr import cluster
from jaxcxr import config_check
from jaxcxr import experiment

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and the report; a rerun resumes from it.")
config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with an arm: configs/hernia.py:focal. Override fields with "
    "--config.FIELD=VALUE (e.g. --config.train.num_steps=100).", lock_config=True)
flags.DEFINE_string("coordinator_address", None, "Multi-process runs: HOST:PORT of process 0. Not needed under "
                    "SLURM (srun), Open MPI, on Cloud TPU VMs or with JAX_COORDINATOR_ADDRESS, "
                    "JAX_NUM_PROCESSES and JAX_PROCESS_ID set: those are detected (see launch/).")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many processes take part.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index, 0 .. num_processes - 1.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  cli.start(argv)
  config_check.check(FLAGS.config)  # Before joining a cluster: a bad value stops every process at once.
  # Joins a multi-process run before any other JAX call: explicit flags, or a detected cluster.
  cluster.initialize(coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
                     process_id=FLAGS.process_id)
  config_check.check(FLAGS.config, num_devices=jax.device_count())
  cli.enable_compilation_cache(FLAGS.config.train.compilation_cache)
  experiment.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main, "jaxcxr")
