"""The result row of `benchmarks/train_throughput.py` run in a fresh process (no compiled code or
JAX state shared with the caller): what compile_time.py and input_pipeline.py time the step by."""

import json
import pathlib
import subprocess
import sys

THROUGHPUT = pathlib.Path(__file__).with_name('train_throughput.py')


def run(args: list[str], env: dict[str, str] | None = None) -> dict:
  """train_throughput.py's last printed line (its JSON row), run with `args`."""
  result = subprocess.run([sys.executable, str(THROUGHPUT), *args], env=env, capture_output=True,
                          text=True, check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])
