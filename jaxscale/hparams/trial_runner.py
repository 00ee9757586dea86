"""Running one trial: the trainer as a subprocess, its eval rows reported as they are written.

A runner is called as `runner(workdir, overrides, on_eval)` and returns when the run has finished
(its summary.json written). `on_eval(step, row)` is called once per eval row of metrics.jsonl, in
order; it raises `optuna.TrialPruned` to stop the trial, and the runner then stops its run.
Tests inject cheap runners with the same signature.
"""

import ctypes
import os
import signal
import subprocess
import sys
import time

from jaxscale.metrics import writers
from jaxscale.scaling.sweeps.launcher import read_summary

LOG_TAIL_LINES = 10


class RunFailed(RuntimeError):
  """The trial's run exited with an error (its train.log says why)."""


def eval_rows(workdir) -> list[dict]:
  """metrics.jsonl rows holding an eval loss (a torn last line is skipped)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  return [row for row in writers.read_jsonl(path) if 'eval_loss' in row]


def read_objective(workdir, key: str) -> float:
  """`key` of the run's summary.json, else of its last metrics.jsonl row that has it."""
  summary = read_summary(workdir)
  if key in summary and summary[key] is not None:
    return float(summary[key])
  path = os.path.join(workdir, 'metrics.jsonl')
  rows = writers.read_jsonl(path) if os.path.exists(path) else []
  values = [row[key] for row in rows if key in row]
  if not values:
    raise RunFailed(f'The run in {workdir} recorded no {key!r} (summary.json or metrics.jsonl); '
                    'set spec.search.objective to a key its eval rows have, e.g. eval_loss.')
  return float(values[-1])


def _die_with_parent() -> None:
  """In the child: SIGTERM it (the trainer saves and exits) if the search process dies, even by
  SIGKILL, so a resumed search never finds its trial's old run still writing the workdir."""
  if sys.platform.startswith('linux'):
    PR_SET_PDEATHSIG = 1  # noqa: N806  (linux/prctl.h)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class TrainerRunner:
  """`python -m jaxscale.main --config BASE --workdir W --config.key=value...`, polled."""

  def __init__(self, base_config: str, python: str = sys.executable, poll_seconds: float = 1.0):
    self._base_config, self._python, self._poll_seconds = base_config, python, poll_seconds

  def command(self, workdir, overrides) -> list[str]:
    return [self._python, '-m', 'jaxscale.main', f'--config={self._base_config}',
            f'--workdir={workdir}', *(f'--config.{override}' for override in overrides)]

  def __call__(self, workdir, overrides, on_eval) -> None:
    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(workdir, 'train.log')
    with open(log_path, 'a') as log:
      process = subprocess.Popen(self.command(workdir, overrides), stdout=log,
                                 stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
      try:
        reported = 0
        while True:
          done = process.poll() is not None
          rows = eval_rows(workdir)
          for row in rows[reported:]:
            on_eval(int(row['step']), row)  # May raise optuna.TrialPruned.
          reported = len(rows)
          if done:
            break
          time.sleep(self._poll_seconds)
      except BaseException:
        process.kill()  # Pruned, or the search itself is stopping: the run must not outlive it.
        process.wait()
        raise
    if process.returncode != 0:
      with open(log_path, errors='replace') as f:
        tail = ''.join(f.readlines()[-LOG_TAIL_LINES:])
      raise RunFailed(f'exit status {process.returncode}; {log_path} ends:\n{tail}')

