"""Weights & Biases as one more metric writer: the same scalars as TensorBoard and metrics.jsonl,
the resolved config, and the final summary. Selected by `config.metrics.wandb_project`;
`wandb_mode='offline'` writes the run under WORKDIR/wandb without touching the network (`wandb
sync` uploads it later). A resumed run continues the same W&B run (its id is kept in the workdir).
"""

import uuid
from typing import Any, Mapping

import numpy as np
from etils import epath

from jaxscale.config import validation
from jaxscale.metrics import scalar_writer

MODES = ('online', 'offline')


@validation.register_check
def check_metrics(config):
  if 'metrics' in config:
    validation.check_choice('metrics.wandb_mode', config.metrics.wandb_mode, MODES)


class WandbWriter(scalar_writer.ScalarsOnlyWriter):

  def __init__(self, run):
    self.run = run

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self.run.log({k: float(np.asarray(v)) for k, v in scalars.items()}, step=int(step))

  def write_hparams(self, hparams):
    self.run.config.update(dict(hparams), allow_val_change=True)

  def write_summary(self, summary: Mapping[str, Any]):
    """The run's final numbers (W&B's run summary)."""
    self.run.summary.update({k: v for k, v in summary.items()
                             if isinstance(v, (int, float, str, bool)) or v is None})

  def close(self):
    self.run.finish()


def create(workdir, config) -> WandbWriter:
  """A W&B run for `workdir`, its config the resolved run config."""
  metrics = config.metrics
  check_metrics(config)
  import wandb  # pylint: disable=import-outside-toplevel  (only runs that ask for W&B need it)
  workdir = epath.Path(workdir)
  id_file = workdir / 'wandb_run_id'
  run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:16]
  id_file.write_text(run_id)
  run = wandb.init(project=metrics.wandb_project, entity=metrics.wandb_entity or None,
                   mode=metrics.wandb_mode, dir=str(workdir), id=run_id, resume='allow',
                   name=workdir.name, config=config.to_dict())
  return WandbWriter(run)
