"""Metric writers: TensorBoard (clu) and `metrics.jsonl`, the record the scaling tools read.

Only process 0 writes; other processes get a logging-only writer.
"""

import json
import math
from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers
from etils import epath

from jaxscale.metrics import scalar_writer, wandb_writer


class JsonlWriter(scalar_writer.ScalarsOnlyWriter):
  """Appends one JSON object per `write_scalars` call: {"step": s, name: value, ...}."""

  def __init__(self, path: epath.Path):
    self._path = epath.Path(path)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    row = {'step': int(step)}
    row.update({k: _to_json_number(v) for k, v in scalars.items()})
    with self._path.open('a') as f:
      f.write(json.dumps(row) + '\n')


def _to_json_number(value):
  value = float(np.asarray(value))
  return value if math.isfinite(value) else str(value)  # JSON has no NaN/inf literals.


def create_writer(workdir: epath.Path, config=None) -> metric_writers.MetricWriter:
  """TensorBoard and metrics.jsonl, plus W&B where `config.metrics.wandb_project` asks."""
  if jax.process_index() > 0:
    return metric_writers.LoggingWriter()
  # No clu LoggingWriter: the loop logs its own one-line progress report.
  writers = [metric_writers.SummaryWriter(str(workdir)),
             JsonlWriter(epath.Path(workdir) / 'metrics.jsonl')]
  if config is not None and config.get('metrics', {}).get('wandb_project'):
    writers.append(wandb_writer.create(workdir, config))
  return metric_writers.MultiWriter(writers)


def write_summary(writer, summary: Mapping[str, Any]) -> None:
  """The final summary to the trackers that keep one (W&B); the others have summary.json."""
  for each in getattr(writer, '_writers', [writer]):
    if hasattr(each, 'write_summary'):
      each.write_summary(summary)


def read_jsonl(path: epath.Path) -> list[dict]:
  """Rows of a metrics.jsonl, skipping a torn last line from a killed process."""
  rows = []
  for line in epath.Path(path).read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows
