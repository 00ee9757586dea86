"""When to stop for a preemption notice, agreed by every process of the run.

A SIGTERM (how schedulers and TPU VM maintenance stop a job), or SIGUSR2 (the signal submitit
asks SLURM to send before a job's time limit or on preemption), often reaches one host of a
multi-host job first, or only one. Each process must stop at the same step: the save is a
collective, so a process that stops alone leaves the others waiting in the next train step.

- Multi-process runs with JAX's preemption service (on by default under
  `jax.distributed.initialize`): JAX's own SIGTERM handler tells the coordination service, which
  picks the next step every process will reach; `multihost_utils.reached_preemption_sync_point`
  answers True at that same step everywhere. No Python handler is installed, since one would
  replace JAX's.
- Without that service: a Python handler sets a local flag, and the flags of all processes are
  or-ed together every `agree_every_steps` steps (the same steps on every process).
- One process: the local flag, checked every step.
"""

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


# Each asks for a checkpoint and a clean exit; the scheduler (or submitit's requeue) restarts.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


def _jax_preemption_service_running() -> bool:
  return jax.process_count() > 1 and bool(jax.config.jax_enable_preemption_service)


class PreemptionNotice:
  """`reached(step)`: whether every process stops at `step` to checkpoint and return."""

  def __init__(self, agree_every_steps: int = 1):
    self._event = threading.Event()
    self._agree_every_steps = max(agree_every_steps, 1)
    self._uses_jax_service = _jax_preemption_service_running()
    if not self._uses_jax_service and threading.current_thread() is threading.main_thread():
      for signum in STOP_SIGNALS:
        signal.signal(signum, lambda signum, frame: self._event.set())

  def reached(self, step: int) -> bool:
    if self._uses_jax_service:
      return multihost_utils.reached_preemption_sync_point(step)
    if jax.process_count() == 1:
      return self._event.is_set()
    if step % self._agree_every_steps:
      return False
    # Every process reaches this line at the same step: or the flags together.
    flags = multihost_utils.process_allgather(np.asarray(self._event.is_set(), np.int32))
    return bool(np.any(flags))
