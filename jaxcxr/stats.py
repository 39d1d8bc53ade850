"""Table 1 of your copy of NIH ChestX-ray14: images, patients and per-class positives of each split.

  python -m jaxcxr.stats --config=configs/hernia.py --data_dir=/data/chestxray14
  python -m jaxcxr.stats --config=configs/hernia.py --config.data.split=random --json

Reads only the label file (and, for the official split, train_val_list.txt and test_list.txt); images are
not needed. The split is the one training would use: config.data.split, config.data.val_fraction,
config.data.split_seed and config.data.target (config.seed does not change it). Run it from the
repository root (configs import each other as `configs.*`).
"""

import json
import os

from absl import flags
from ml_collections import config_flags

from jaxcxr import cli
from jaxcxr import config_check
from jaxcxr.data import nih

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with an arm: configs/hernia.py:focal. Override fields with "
    "--config.FIELD=VALUE (e.g. --config.data.split=random).", lock_config=True)
flags.DEFINE_string("data_dir", None, "Data folder holding the label file; overrides config.data.dir.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
flags.mark_flags_as_required(["config"])


def _data_dir(config):
  """The folder to read: --data_dir, else config.data.dir (resolved as training resolves it)."""
  if FLAGS.data_dir:
    return os.path.abspath(os.path.expanduser(FLAGS.data_dir))
  if config.data.source == "phantom" and not config.data.dir:
    from jaxcxr.data import datasets  # pylint: disable=g-import-not-at-top  (PIL, tqdm: only when needed)
    return datasets.data_dir(config)
  return os.path.abspath(os.path.expanduser(config.data.dir))


def compute(config, directory):
  """The statistics as one JSON-ready dict: where they come from, the split and table1 of every part."""
  label_file = nih.locate_label_file(directory, config.data.get("label_file", ""))
  meta = nih.read_labels(label_file)
  name = config.data.split
  split_seed = config.data.split_seed
  splits = nih.split(meta, directory, name=name, val_fraction=config.data.val_fraction, seed=split_seed,
                     target=config.data.target)
  parts = {"all": meta}
  if name == "official":  # NIH's own train_val list, to compare with published counts.
    parts["train_val"] = nih.concat([splits["train"], splits["val"]])
  parts.update(splits)
  return {"data_dir": directory, "label_file": label_file, "split": name,
          "val_fraction": config.data.val_fraction, "split_seed": split_seed, "target": config.data.target,
          "classes": list(nih.CLASSES), "table": nih.table1(parts),
          "target_by_split": nih.describe_split(splits, target=config.data.target)}


def _cell(count, share):
  return f"{count:,}" if share is None else f"{count:,} {100 * share:5.2f}%"


def format_table(stats):
  """The statistics as a fixed-width text table: one column per part, one row per quantity."""
  table = stats["table"]
  parts = list(table)
  rows = [("images", [f"{table[p]['images']:,}" for p in parts]),
          ("patients", [f"{table[p]['patients']:,}" for p in parts])]
  for c in stats["classes"]:
    rows.append((c, [_cell(table[p]["positives"][c], table[p]["prevalence"][c]) for p in parts]))
  rows.append((nih.NO_FINDING, [_cell(table[p]["no_finding"], table[p]["no_finding_prevalence"]) for p in parts]))
  rows.append(("sex M / F", [f"{table[p]['sexes'].get('M', 0):,} / {table[p]['sexes'].get('F', 0):,}"
                             for p in parts]))
  rows.append(("view PA / AP", [f"{table[p]['views'].get('PA', 0):,} / {table[p]['views'].get('AP', 0):,}"
                                for p in parts]))
  rows.append(("median age (years)", ["-" if table[p]["age_median"] is None else f"{table[p]['age_median']:g}"
                                      for p in parts]))
  first = max(len(r[0]) for r in rows)
  widths = [max(len(p), *(len(r[1][i]) for r in rows)) for i, p in enumerate(parts)]
  def line(label, cells):
    return "  ".join([label.ljust(first)] + [c.rjust(w) for c, w in zip(cells, widths)]).rstrip()
  split_note = stats["split"]
  if stats["split"] == "official":
    split_note += (f" (NIH train_val_list.txt / test_list.txt; val = {stats['val_fraction']:g} of train_val "
                   f"patients, split seed {stats['split_seed']})")
  else:
    split_note += f" (patient-level 70/10/20, split seed {stats['split_seed']})"
  target = ", ".join(f"{name} {d['target_images']:,} images / {d['target_patients']:,} patients"
                     for name, d in stats["target_by_split"].items())
  out = [f"NIH ChestX-ray14 label file: {stats['label_file']}", f"Split: {split_note}",
         f"Target {stats['target']}: {target}",
         "Positives per class (prevalence = positives / images of that column).", "",
         line("", parts), line("", ["-" * w for w in widths])]
  for i, (label, cells) in enumerate(rows):
    if i in (2, 2 + len(stats["classes"]) + 1):
      out.append("")
    out.append(line(label, cells))
  return "\n".join(out)


def main(argv):
  cli.start(argv, logs=False)
  config_check.check(FLAGS.config)
  with cli.user_errors("jaxcxr.stats", nih.DataError):
    stats = compute(FLAGS.config, _data_dir(FLAGS.config))
  print(json.dumps(stats, indent=2) if FLAGS.json else format_table(stats))


if __name__ == "__main__":
  cli.run(main, "jaxcxr.stats")
