"""The run folder (WORKDIR) in one place: its config.json, its checkpoints and the barriers around them.

  WORKDIR/config.json      the resolved config of the run (written by process 0 when training starts)
  WORKDIR/checkpoints/     Orbax: the latest `train.keep_checkpoints` plus the best by the target's
                           validation AUPRC (metric 'val_target_auprc')

Every stage that reads or writes a run (the trainer, evaluation, embedding export, the SMOTE and cRT
write-backs, the study) goes through these functions, so a run folder has one layout and one policy.
"""

import json
import os
import shutil
import time
from typing import List, Optional, Sequence, Tuple, Union

from absl import logging
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxcxr import errors

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"
# The validation metric that ranks checkpoints ('best') for train.rank_by 'target' and 'macro'; a
# checkpoint's metrics name the one that ranked it under RANK_KEY (older checkpoints: the target's).
RANK_METRICS = {"target": "val_target_auprc", "macro": "val_macro_auprc"}
BEST_METRIC = RANK_METRICS["target"]
RANK_KEY = "rank_metric"


def rank_metric(config) -> str:
  """The validation metric that ranks the checkpoints of `config` (train.rank_by; 'target' if unset)."""
  by = config.train.get("rank_by", "target") if "train" in config else "target"
  if by not in RANK_METRICS:
    raise errors.ConfigError(f"train.rank_by must be one of {', '.join(RANK_METRICS)}, got {by!r}.")
  return RANK_METRICS[by]


def ranking_value(metrics: dict) -> float:
  """The value a checkpoint is ranked by: its metrics' RANK_KEY metric."""
  return metrics[metrics.get(RANK_KEY, BEST_METRIC)]
# Fields that must match the training run for its checkpoints to restore into a config's model.
MUST_MATCH = ("model.name", "data.image_size")
# Fields that change which images are in each split: a mismatch is warned about.
SHOULD_MATCH = ("seed", "data.source", "data.split", "data.split_seed", "data.val_fraction",
                "data.phantom.num_images", "data.phantom.hernia_prevalence", "data.phantom.label_noise",
                "data.phantom.seed")


class RunFolderError(errors.UserError):
  """The run folder lacks what was asked for (a config, checkpoints, a step); the message says what to do."""


def path(workdir: str) -> str:
  """The absolute, user-expanded workdir."""
  return os.path.abspath(os.path.expanduser(workdir))


# ----------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes WORKDIR/config.json (process 0 only)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
      f.write(config.to_json_best_effort(indent=2))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run wrote to WORKDIR/config.json, locked like a --config file's."""
  file = os.path.join(path(workdir), CONFIG_FILE)
  if not os.path.exists(file):
    raise RunFolderError(f"{file} not found: is {path(workdir)} a jaxcxr run? Pass --config (the config the "
                         "run was trained with, with the same overrides), or point --workdir at a trained run.")
  with open(file) as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.lock()
  return config


def get_field(tree, dotted: str):
  """tree['a']['b'] for 'a.b' (dicts or ConfigDicts); None where a part is absent."""
  node = tree
  for part in dotted.split("."):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      return None
  return node


def config_differences(saved, config, fields: Sequence[str]) -> List[Tuple[str, object, object]]:
  """(field, saved value, value now) for each of `fields` that the saved config sets and `config` changes."""
  out = []
  for k in fields:
    old, new = get_field(saved, k), get_field(config, k)
    if old is not None and old != new:
      out.append((k, old, new))
  return out


def check_config(config, workdir: str) -> None:
  """Compares `config` with the run's config.json (if any): an error on model differences (its checkpoints
  would not restore), a warning on data differences (the splits would differ from the run's)."""
  file = os.path.join(path(workdir), CONFIG_FILE)
  if not os.path.exists(file):
    return
  with open(file) as f:
    saved = json.load(f)
  bad = config_differences(saved, config, MUST_MATCH)
  if bad:
    raise RunFolderError(
        f"The config does not match the one this run was trained with ({file}): "
        + "; ".join(f"{k} was {a!r}, now {b!r}" for k, a, b in bad)
        + ". Pass the training config and overrides, or leave out --config to use config.json.")
  for k, a, b in config_differences(saved, config, SHOULD_MATCH):
    logging.warning("%s was %r in training, now %r: the splits may differ from the run's.", k, a, b)


# Fields a rerun may change without changing what the run computes; they are logged, not refused.
SAFE_ON_RESUME = ("train.num_steps", "train.eval_every", "train.checkpoint_every", "train.log_every",
                  "train.keep_checkpoints", "train.eval_batch_size", "train.compilation_cache",
                  "train.accept_config_change", "data.num_workers", "data.dir")


def flatten(tree, prefix="") -> dict:
  """{'a.b': value} of a nested dict."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def check_resume(config, workdir: str) -> None:
  """Before a run resumes in `workdir`: compares `config` with the config.json the run was started with.

  Changes to safe fields (SAFE_ON_RESUME, e.g. train.num_steps to extend a run) are logged. Any other
  change (model, data, split, loss, sampling, augmentation, optimiser, ...) stops the run with one line
  per field, old -> new, unless train.accept_config_change is set. Fields the saved config lacks (added
  in a later version) are logged only.
  """
  file = os.path.join(path(workdir), CONFIG_FILE)
  if not os.path.exists(file):
    return
  with open(file) as f:
    saved = flatten(json.load(f))
  now = flatten(json.loads(config.to_json_best_effort()))
  changed = sorted(k for k in saved.keys() & now.keys() if saved[k] != now[k])
  for k in sorted(now.keys() - saved.keys()):
    logging.info("config field %s (now %r) is new since this run started.", k, now[k])
  safe = [k for k in changed if k in SAFE_ON_RESUME]
  for k in safe:
    logging.info("Resuming with %s changed: %r -> %r.", k, saved[k], now[k])
  unsafe = [k for k in changed if k not in SAFE_ON_RESUME]
  if not unsafe:
    return
  accepted = bool(config.train.get("accept_config_change", False)) if "train" in config else False
  lines = "; ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in unsafe)
  if accepted:
    logging.warning("Resuming %s with a changed config (train.accept_config_change): %s.", workdir, lines)
    return
  raise RunFolderError(
      f"{path(workdir)} holds a run started with another config: {lines}. Use a new --workdir, or continue "
      "this run with the new values by adding --config.train.accept_config_change=True.")


# ----------------------------------------------------------------------------
# Checkpoints.
# ----------------------------------------------------------------------------

CORRUPT = "corrupt"


def quarantine(workdir: str, step: int, error: Exception) -> Optional[str]:
  """Moves WORKDIR/checkpoints/<step> aside (never deletes it) into checkpoints/corrupt/, with a warning
  naming the step and the error; returns where it went (process 0; None elsewhere)."""
  src = os.path.join(checkpoint_dir(workdir), str(step))
  if jax.process_index() != 0 or not os.path.isdir(src):
    return None
  dst_dir = os.path.join(checkpoint_dir(workdir), CORRUPT)
  os.makedirs(dst_dir, exist_ok=True)
  dst = os.path.join(dst_dir, f"{step}-{int(time.time())}")
  shutil.move(src, dst)
  logging.warning("The checkpoint at step %d does not restore (%s: %s); moved aside to %s.", step,
                  type(error).__name__, str(error).splitlines()[0][:300] if str(error) else "", dst)
  return dst



def checkpoint_dir(workdir: str) -> str:
  return os.path.join(path(workdir), CHECKPOINTS)


def has_checkpoints(workdir: str) -> bool:
  directory = checkpoint_dir(workdir)
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def require_checkpoints(workdir: str) -> None:
  """Raises RunFolderError unless WORKDIR/checkpoints holds at least one checkpoint."""
  if not has_checkpoints(workdir):
    raise RunFolderError(f"No checkpoints in {checkpoint_dir(workdir)}: train first (python -m jaxcxr.main "
                         f"--config=... --workdir={path(workdir)}), or point --workdir at a trained run.")


def checkpoint_manager(workdir: str, *, keep: Optional[int] = None, create: bool = False) -> ocp.CheckpointManager:
  """The Orbax manager of WORKDIR/checkpoints, ranked by each checkpoint's ranking metric (higher is better;
  see `ranking_value`).

  It keeps the latest `keep` checkpoints plus the best one (`keep` None: every checkpoint, e.g. a head
  written back once). Readers pass create=False and never save; their manager knows the 'state' item's
  handler, so that its metadata (the saved tree's shapes) can be read before restoring.
  """
  best = ranking_value
  policies = [ocp.checkpoint_managers.BestN(get_metric_fn=best, reverse=False, n=1,
                                            keep_checkpoints_without_metrics=False)]
  if keep is not None:
    policies.insert(0, ocp.checkpoint_managers.LatestN(n=keep))
  options = ocp.CheckpointManagerOptions(
      best_fn=best, best_mode="max", create=create,
      preservation_policy=(ocp.checkpoint_managers.AnyPreservationPolicy(policies) if keep is not None
                           else None))
  # Readers also name the Grain iterator's handler ('data', saved by the trainer beside 'state'): without it
  # Orbax warns on every read that an item it found could not be restored, although none was asked for.
  handlers = None if create else {"state": ocp.StandardCheckpointHandler(),
                                  "data": grain.checkpoint.CheckpointHandler()}
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def resolve_checkpoint(manager: ocp.CheckpointManager, checkpoint: Union[str, int] = "best") -> int:
  """The step that `checkpoint` ('best', 'latest' or a step number) names in `manager`.

  Raises:
    RunFolderError: no checkpoints, no ranked checkpoint for 'best', a malformed spec, or an absent step;
      the message lists the available steps.
  """
  steps = sorted(int(s) for s in manager.all_steps())
  directory = manager.directory
  if not steps:
    raise RunFolderError(f"No checkpoints in {directory}: train first (python -m jaxcxr.main).")
  best, latest = manager.best_step(), manager.latest_step()
  available = (f"available steps: {', '.join(map(str, steps))} "
               f"(best: {'none ranked' if best is None else best}, latest: {latest})")
  spec = str(checkpoint).strip()
  if spec == "best":
    if best is None:
      raise RunFolderError(f"No checkpoint in {directory} has validation metrics to rank it; use "
                           f"--checkpoint=latest or a step. {available[0].upper()}{available[1:]}.")
    return int(best)
  if spec == "latest":
    return int(latest)
  try:
    step = int(spec)
  except ValueError:
    raise RunFolderError(f"--checkpoint must be 'best', 'latest' or a step number, got {spec!r}; "
                         f"{available}.") from None
  if step not in steps:
    raise RunFolderError(f"No checkpoint at step {step} in {directory}; {available}.")
  return step


# ----------------------------------------------------------------------------
# Barriers.
# ----------------------------------------------------------------------------


def wait_for_all(name: str, *, timeout_s: int) -> None:
  """A barrier over processes through the coordination service (not a device collective, whose transport
  times out within a minute while process 0 may spend many minutes preparing data). No-op with one process."""
  if jax.process_count() > 1:
    # JAX has no public barrier of its coordination service; this is the client jax.distributed set up.
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)
