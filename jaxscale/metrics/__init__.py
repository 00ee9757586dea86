"""What every run measures and writes: metric writers, FLOPs, memory, classification reports.

`jaxscale.metrics.read_jsonl(path)` reads a run's `metrics.jsonl`.
"""

from jaxscale.metrics.writers import read_jsonl

__all__ = ['read_jsonl']
