"""The speed benchmark's GPU workload: ResNet-50 at 224 px, global batch 256, bf16 compute, fp32 params.

  python -m jaxcxr.bench --config=configs/bench_resnet50.py --json_out=/tmp/bench.json
  bash launch/gpu_bench.sh        # on a GPU machine: the same, with wheels, versions and a log

Only speed is measured, so no dataset is needed: the step runs on synthetic batches on the device, and the
loader reads the prepared phantom data at 224 px when it exists (else a synthetic in-memory split of the
same size, which the table says). Training with it would also work (phantom data, generated on first use).
"""

from configs import base


def get_config(arg=None):
  del arg
  config = base.get_config()
  config.data.source = "phantom"
  config.data.dir = ""  # ~/.cache/jaxcxr/phantom-224px-...; absent on a fresh machine -> synthetic loader data.
  config.data.image_size = 224
  config.data.target = "Hernia"
  config.model.name = "resnet50"
  config.model.dtype = "auto"  # bfloat16 on GPU/TPU, float32 on CPU; parameters stay float32.
  config.loss.name = "bce"
  config.train.batch_size = 256  # Global: per H100, the usual ResNet-50 benchmark batch.
  config.train.num_steps = 1000
  config.train.warmup_steps = 100
  return config
