"""One arm of the study, start to finish: the stages above the trainer, composed in order.

  train (train.py) -> test report of the best checkpoint (report/)
    -> [embeddings (embeddings/) -> a new head: SMOTE (smote/) or cRT (crt/)]

`main` and `study` call `run`. Each stage takes the model context that training returns (mesh, model,
splits and the run's checkpoints), so nothing is loaded or compiled twice and `train.py` knows nothing of
what comes after it.
"""

import os

import jax
import ml_collections

from jaxcxr import embeddings
from jaxcxr import head_stages
from jaxcxr import model_context
from jaxcxr import reports
from jaxcxr import train
from jaxcxr import workdir_lock


def report_dir(config, workdir: str) -> str:
  """Where an arm's final test report lives: WORKDIR/report/, or WORKDIR/smote/ or crt/ for those arms."""
  if head_stages.is_smote(config):
    return os.path.join(workdir, "smote")
  return os.path.join(workdir, "crt" if head_stages.is_crt(config) else "report")


def test_report(ctx: model_context.ModelContext, *, checkpoint="best") -> dict:
  """Scores `checkpoint` (default the best by the target's validation AUPRC) on test with thresholds chosen
  on validation; writes WORKDIR/report/ and prints the table (process 0)."""
  config = ctx.config
  step, variables = ctx.restore(checkpoint)
  val, test = ctx.splits["val"], ctx.splits["test"]
  scores, val_scores = ctx.predict_split(variables, test), ctx.predict_split(variables, val)
  report = reports.build_report(config, step=step, val_labels=val.meta.labels, val_patients=val.meta.patients,
                                val_scores=val_scores, labels=test.meta.labels, scores=scores)
  if jax.process_index() == 0:
    out_dir = os.path.join(ctx.workdir, "report")
    reports.write(report, out_dir, labels=test.meta.labels, scores=scores, highlight=config.data.target,
                  arrays={"patients": test.meta.patients, "val_labels": val.meta.labels, "val_scores": val_scores,
                          "val_patients": val.meta.patients})
    reports.show(report, f"Test report ({report['split']}, checkpoint step {step}, thresholds by "
                 f"{report['threshold_rule']} on validation)", out_dir=out_dir)
  return report


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the arm `config` describes in `workdir` (resuming if it can), then runs its later stages.

  Returns the arm's final report: the backbone's test report, or the new head's for SMOTE and cRT arms.
  """
  if head_stages.is_smote(config):  # A bad smote block fails before training, not after it.
    head_stages.check_config(config, check_augment=True)
  os.makedirs(workdir, exist_ok=True)
  # One run per workdir: a second one started here stops at once, naming the process that holds it.
  with workdir_lock.hold(workdir, process_index=jax.process_index()):
    ctx = train.train(config, workdir)
    report = test_report(ctx)
    if head_stages.is_smote(config):
      embedded, meta = embeddings.export(ctx, checkpoint=config.smote.checkpoint)
      report = head_stages.run_smote(ctx, embeddings=embedded, meta=meta)
    elif head_stages.is_crt(config):
      embedded, meta = embeddings.export(ctx, checkpoint=config.crt.checkpoint, views=0)
      report = head_stages.run_crt(ctx, embeddings=embedded, meta=meta)
  return report
