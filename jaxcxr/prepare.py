"""Prepares NIH ChestX-ray14 (or the phantom data) once, ahead of training, on all CPU cores.

  python -m jaxcxr.prepare --config=configs/hernia.py --config.data.dir=/data/chestxray14
  python -m jaxcxr.prepare --config=configs/hernia.py --config.data.dir=/data/chestxray14 --strict
  python -m jaxcxr.prepare --config=configs/demo.py --notfds

Decodes every listed image (8-bit or 16-bit grey, RGB or RGBA) to uint8 grey at config.data.image_size
into <data.dir>/jaxcxr_prepared/<size>px-<key>/ (the memory-mapped array training reads), then exports the
same images with their labels, image id, patient id, view, age and sex as a TFDS dataset in ArrayRecord
files (readable with tfds.data_source / Grain, no TensorFlow needed) under
<data.dir>/jaxcxr_prepared/tfds/. Missing, zero-byte, truncated and corrupt files are left out and listed
by name and reason in preparation_report.json; --strict makes any of them an error. Killed, it resumes
where it stopped when rerun. `python -m jaxcxr.main` runs the first step itself on first use.
"""

import os

from absl import flags
from ml_collections import config_flags

from jaxcxr import cli
from jaxcxr import config_check
from jaxcxr.data import datasets
from jaxcxr.data import nih

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file: configs/hernia.py. Its data fields say what to prepare (data.source, "
    "data.dir, data.image_size). Override with --config.FIELD=VALUE.", lock_config=True)
flags.DEFINE_bool("strict", None, "Make any missing, empty, truncated or corrupt image a fatal error naming "
                  "the files (default: config.data.strict, False in the shipped configs).")
flags.DEFINE_integer("num_workers", 0, "Decoding processes; 0 = all CPU cores.")
flags.DEFINE_bool("tfds", True, "Also export the prepared images as a TFDS ArrayRecord dataset.")
flags.mark_flags_as_required(["config"])


def main(argv):
  cli.start(argv)
  config = FLAGS.config
  config_check.check(config)
  if FLAGS.strict is not None:
    config.data.strict = FLAGS.strict
  with cli.user_errors("jaxcxr.prepare", nih.DataError):
    if config.data.source == "chestmnist":
      raise nih.DataError("data.source='chestmnist' needs no preparation: training reads chestmnist.npz directly.")
    print(f"Preparing {datasets.data_dir(config)} at {config.data.image_size} px on "
          f"{FLAGS.num_workers or os.cpu_count()} processes.", flush=True)
    prepared, _ = datasets.prepare_config(config, num_workers=FLAGS.num_workers, log_summary=False)
    print(datasets.summary(prepared.report))
    if FLAGS.tfds:
      from jaxcxr.data import tfds_builder  # pylint: disable=g-import-not-at-top  (tensorflow_datasets is slow to import)
      builder = tfds_builder.build(config, prepared)
      print(f"TFDS dataset {builder.info.full_name} (ArrayRecord) in {builder.data_dir}: "
            + ", ".join(f"{k} {v.num_examples:,}" for k, v in builder.info.splits.items()) + " images.")


if __name__ == "__main__":
  cli.run(main, "jaxcxr.prepare")
