"""Stages that give a trained backbone a new head, trained on its embeddings: feature-space SMOTE and cRT.

  python -m jaxcxr.export_embeddings --config=configs/demo.py:smote --workdir=/tmp/demo_smote
  python -m jaxcxr.smote --config=configs/demo.py:smote --workdir=/tmp/demo_smote
  python -m jaxcxr.evaluate --workdir=/tmp/demo_smote/smote      # the combined model, on images

(`python -m jaxcxr.main --config=configs/demo.py:smote --workdir=W` runs all of it after training.)

1. Resampling (`smote.method`, resampling.py) fitted on the TRAINING embeddings only (validation and test
   never reach it).
2. A new head ('linear' or 'mlp', heads.py) is trained with optax on the resampled features with the
   configured loss (`smote.loss`, default `loss.name`).
3. Thresholds are chosen on the validation embeddings (`train.threshold_rule`) and the test split is
   reported in the trainer's format (reports.build_report), with the backbone's own metrics (same
   checkpoint, same rule) beside it, in WORKDIR/smote/: report.json (key `backbone`), report.md, roc.png,
   pr.png, scores.npz.
4. Write-back (linear head only): the standardisation is folded into the kernel and bias, which replace
   params['head'] of the backbone checkpoint; the result is saved with Orbax as WORKDIR/smote/checkpoints
   (with config.json) so that `python -m jaxcxr.evaluate --workdir=WORKDIR/smote` scores images with it.
   An MLP head has no place in the ResNet's single Dense head and is reported on embeddings only.

cRT (`crt.enabled`, arm `crt`): decoupled classifier re-training: the frozen backbone's training embeddings,
a fresh linear head trained with class-balanced sampling, reported and written back like the SMOTE head, in
WORKDIR/crt/.
"""

import os
import shutil
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxcxr import embeddings as emb_lib
from jaxcxr import errors
from jaxcxr import heads
from jaxcxr import losses
from jaxcxr import metrics as metrics_lib
from jaxcxr import model_context
from jaxcxr import reports
from jaxcxr import resampling
from jaxcxr import runfolder
from jaxcxr.data import nih
from jaxcxr.data import sampling


class SmoteError(errors.UserError):
  """The SMOTE stage cannot run as asked; the message says why and what to do."""


def check_config(config: ml_collections.ConfigDict, *, check_augment: bool = False) -> None:
  """Fails fast on a bad `config.smote` (before any training); with `check_augment`, also checks the
  data.augment settings that views use."""
  s = config.smote
  if s.method not in resampling.METHODS:
    raise SmoteError(f"smote.method must be one of {', '.join(resampling.METHODS)}, got {s.method!r}.")
  if s.head not in heads.HEADS:
    raise SmoteError(f"smote.head must be one of {', '.join(heads.HEADS)}, got {s.head!r}.")
  if s.loss and s.loss not in losses.LOSS_NAMES:
    raise SmoteError(f"smote.loss must be '' or one of {', '.join(losses.LOSS_NAMES)}, got {s.loss!r}.")
  if s.k_neighbors < 1 or s.ratio <= 0 or s.steps < 1 or s.batch_size < 1 or s.views < 0 or s.hidden < 1:
    raise SmoteError("Need smote.k_neighbors >= 1, smote.ratio > 0, smote.steps >= 1, smote.batch_size >= 1, "
                     f"smote.views >= 0 and smote.hidden >= 1; got {s.k_neighbors}, {s.ratio}, {s.steps}, "
                     f"{s.batch_size}, {s.views}, {s.hidden}.")
  if check_augment and s.views:
    emb_lib.make_augment_fn(config, views=s.views)  # Raises on bad data.augment settings.


def is_smote(config) -> bool:
  """Whether `config` runs the SMOTE stage after training."""
  return "smote" in config and "method" in config.smote and config.smote.method != "none"


def smote_dir(workdir: str) -> str:
  return os.path.join(runfolder.path(workdir), "smote")


def write_back(ctx: model_context.ModelContext, out: str, *, step: int, kernel, bias,
               val_metric: Optional[float]) -> str:
  """Saves the model variables of checkpoint `step` with params['head'] = (kernel, bias) as a run folder
  OUT (checkpoints/ and config.json) that `jaxcxr.evaluate --workdir=OUT` reads."""
  variables = ctx.restore_step(step)
  head = variables["params"]["head"]
  if head["kernel"].shape != kernel.shape:
    raise SmoteError(f"The head's kernel is {kernel.shape}, the model's {head['kernel'].shape}.")
  params = dict(variables["params"])
  params["head"] = {"kernel": jax.device_put(jnp.asarray(kernel, head["kernel"].dtype), ctx.replicated),
                    "bias": jax.device_put(jnp.asarray(bias, head["bias"].dtype), ctx.replicated)}
  variables = {"params": params, "batch_stats": variables["batch_stats"]}
  ckpt_dir = runfolder.checkpoint_dir(out)
  if jax.process_index() == 0:
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # A rerun replaces the earlier write-back.
  runfolder.write_config(ctx.config, out)
  runfolder.wait_for_all("jaxcxr_head_writeback", timeout_s=600)
  metric = 0.0 if val_metric is None else float(val_metric)
  manager = runfolder.checkpoint_manager(out, create=True)
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(variables)),
               metrics={runfolder.BEST_METRIC: metric, runfolder.RANK_KEY: runfolder.BEST_METRIC})
  manager.wait_until_finished()
  manager.close()
  return ckpt_dir


def run_smote(ctx: model_context.ModelContext, *, embeddings: Optional[dict] = None, meta: Optional[dict] = None,
              progress: bool = True, verbose: bool = True) -> dict:
  """Resamples the run's training embeddings, trains the head, reports on test and writes back.

  Args:
    ctx: the run's model context (its config's `smote` block drives this stage).
    embeddings, meta: as returned by `embeddings.export`; default: read from WORKDIR/embeddings.
    progress, verbose: progress bars; print the table (process 0).

  Returns:
    The report (also WORKDIR/smote/report.json).
  """
  config, workdir = ctx.config, ctx.workdir
  check_config(config)
  s = config.smote
  if embeddings is None:
    embeddings, meta = emb_lib.load(emb_lib.embeddings_dir(workdir))
  if s.views and not meta.get("views"):
    raise SmoteError(f"smote.views={s.views} but the embeddings in {emb_lib.embeddings_dir(workdir)} have no "
                     "views: export them again with this config.")
  tr = embeddings["train"]
  res = resampling.resample(tr.features, tr.labels, method=s.method, k_neighbors=s.k_neighbors, ratio=s.ratio,
                            seed=config.seed, progress=progress)
  loss_config = config.loss.copy_and_resolve_references()
  if s.loss:
    loss_config.name = s.loss
  params, mean, std, final_loss = heads.train_head(res.features, res.labels, head_config=s,
                                                   loss_config=loss_config, seed=config.seed, progress=progress)
  extra = {"stage": "smote", "method": s.method, "k_neighbors": s.k_neighbors, "ratio": s.ratio,
           "head": s.head, "head_loss": loss_config.name, "head_steps": s.steps, "head_final_loss": final_loss,
           "views": int(meta.get("views", 0)), "train_rows": int(len(tr)), "train_views": int(tr.is_view.sum()),
           "synthetic_rows": int(res.is_synthetic.sum()), "resampling": res.log}
  title = (f"{s.method} ratio {s.ratio}, {s.head} head with {loss_config.name}")
  return _report_head(ctx, smote_dir(workdir), embeddings=embeddings, meta=meta, head=(params, mean, std),
                      kind=s.head, extra=extra, title=title, verbose=verbose)


def crt_dir(workdir: str) -> str:
  return os.path.join(runfolder.path(workdir), "crt")


def is_crt(config) -> bool:
  """Whether `config` runs decoupled classifier re-training after training."""
  return "crt" in config and bool(config.crt.enabled)


def run_crt(ctx: model_context.ModelContext, *, embeddings: Optional[dict] = None, meta: Optional[dict] = None,
            progress: bool = True, verbose: bool = True) -> dict:
  """Decoupled classifier re-training (cRT, Kang et al. 2020): the backbone stays frozen (its training
  embeddings are the input), a new linear head starts from scratch (zero kernel, prior-odds bias) and is
  trained with class-balanced sampling (P(image) proportional to the sum of 1 / n_class over its labels,
  data.sampling's 'class_balanced' weights); thresholds on validation, report on test, head written back.

  Returns:
    The report (also WORKDIR/crt/report.json); `python -m jaxcxr.evaluate --workdir=WORKDIR/crt` scores
    images with the new head.
  """
  config, workdir = ctx.config, ctx.workdir
  c = config.crt
  if c.loss and c.loss not in losses.LOSS_NAMES:
    raise errors.ConfigError(f"crt.loss must be '' or one of {', '.join(losses.LOSS_NAMES)}, got {c.loss!r}.")
  if embeddings is None:
    embeddings, meta = emb_lib.load(emb_lib.embeddings_dir(workdir))
  tr = embeddings["train"]
  real = ~tr.is_view
  features, labels = tr.features[real], tr.labels[real]
  loss_config = config.loss.copy_and_resolve_references()
  if c.loss:
    loss_config.name = c.loss
  weights = sampling.class_balanced_weights(labels)
  params, mean, std, final_loss = heads.train_head(features, labels, head_config=c, loss_config=loss_config,
                                                   seed=config.seed, sample_weights=weights, progress=progress)
  extra = {"stage": "crt", "head": "linear", "head_sampling": "class_balanced", "head_loss": loss_config.name,
           "head_steps": c.steps, "head_final_loss": final_loss, "train_rows": int(real.sum())}
  return _report_head(ctx, crt_dir(workdir), embeddings=embeddings, meta=meta, head=(params, mean, std),
                      kind="linear", extra=extra, title=f"class-balanced linear head with {loss_config.name}",
                      verbose=verbose)


def _report_head(ctx, out, *, embeddings, meta, head, kind, extra, title, verbose):
  """Thresholds on validation, the test report beside the backbone's, the write-back (linear heads) and
  the files in OUT: what every head stage ends with."""
  config = ctx.config
  params, mean, std = head
  val, test = embeddings["val"], embeddings["test"]
  val_scores = heads.head_probs(params, mean, std, val.features)
  test_scores = heads.head_probs(params, mean, std, test.features)
  target = config.data.target
  val_target = metrics_lib.evaluate_scores(labels=val.labels, scores=val_scores, classes=nih.CLASSES,
                                           thresholds=np.full(len(nih.CLASSES), 0.5))["classes"][target]
  step = int(meta["checkpoint_step"])
  backbone = reports.build_report(config, step=step, val_labels=val.labels, val_scores=val.backbone_probs,
                                  labels=test.labels, scores=test.backbone_probs)
  report = reports.build_report(config, step=step, val_labels=val.labels, val_scores=val_scores,
                                val_patients=val.patient_ids, labels=test.labels, scores=test_scores, extra=extra)
  report["backbone"] = {k: backbone[k] for k in ("checkpoint_step", "threshold_rule", "classes", "macro")}
  if kind == "linear":
    kernel, bias = heads.fold_linear(params, mean, std)
    report["write_back"] = write_back(ctx, out, step=step, kernel=kernel, bias=bias,
                                      val_metric=val_target["auprc"])
    report["evaluate_command"] = f"python -m jaxcxr.evaluate --workdir={out}"
  else:
    report["write_back"] = None
    report["write_back_note"] = ("an MLP head cannot be written into the model's single Dense head; it is "
                                 "reported on embeddings only (use smote.head='linear' to evaluate on images)")
    logging.warning("%s head: %s.", kind, report["write_back_note"])
  if jax.process_index() == 0:
    reports.write(report, out, labels=test.labels, scores=test_scores, highlight=target,
                  arrays={"patients": test.patient_ids, "val_labels": val.labels, "val_scores": val_scores,
                          "val_patients": val.patient_ids})
    with open(os.path.join(out, "report.md"), "a") as f:
      f.write(_markdown_extra(report))
    if verbose:
      reports.show(report, f"{extra['stage'].upper() if extra['stage'] == 'smote' else 'cRT'} head report "
                   f"({report['split']}, embeddings of checkpoint step {step}, {title}, thresholds by "
                   f"{config.train.threshold_rule} on validation)", out_dir=out, table=format_table(report))
  return report


def _with_backbone_row(report):
  target = report["target"]
  classes = {**report["classes"], f"{target} (backbone)": report["backbone"]["classes"][target]}
  return {**report, "classes": classes}


def format_table(report: dict) -> str:
  """reports.format_table of the new head with the backbone's own target row beside it."""
  return reports.format_table(_with_backbone_row(report))


def _markdown_extra(report: dict) -> str:
  target = report["target"]
  head, base = report["classes"][target], report["backbone"]["classes"][target]
  keys = ("auroc", "auprc", "recall", "precision", "f1", "threshold")
  fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
  stage = {"smote": "SMOTE", "crt": "cRT"}.get(report.get("stage"), "new")
  lines = ["", f"## {target}: {stage} head against the backbone's own head", "",
           "| model | " + " | ".join(keys) + " |", "|:--|" + "--:|" * len(keys),
           f"| {stage} head | " + " | ".join(fmt(head[k]) for k in keys) + " |",
           "| backbone | " + " | ".join(fmt(base[k]) for k in keys) + " |", ""]
  if report.get("resampling"):
    lines += ["## Resampling (training embeddings only)", "",
              "| class | positives | negatives | method | k | synthetic | note |", "|:--|--:|--:|:--|--:|--:|:--|"]
    for e in report["resampling"]:
      lines.append(f"| {e['class']} | {e['n_pos']} | {e['n_neg']} | {e['method']} | {e['k_neighbors']} | "
                   f"{e['synthetic']} | {e.get('note', '')} |")
  return "\n".join(lines) + "\n"
