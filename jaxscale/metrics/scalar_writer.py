"""The base of writers that record scalars only (metrics.jsonl, W&B): clu's other kinds of
metrics (images, histograms, ...) are accepted and dropped."""

from typing import Any, Mapping

from clu import metric_writers


class ScalarsOnlyWriter(metric_writers.MetricWriter):
  """A clu writer whose subclasses implement `write_scalars`; everything else does nothing."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    raise NotImplementedError

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass
