"""`python -m jaxscale.main` whose first FLAKY_READS train-state reads fail on this process, as
a network file system or an overloaded host may fail them (used by the two-process tests)."""

import os

import orbax.checkpoint as ocp
from absl import app

from jaxscale import main

_real_restore = ocp.StandardCheckpointHandler.restore
_failures_left = [int(os.environ.get('FLAKY_READS', '0'))]


def _flaky_restore(self, *args, **kwargs):
  if _failures_left[0] > 0:
    _failures_left[0] -= 1
    raise OSError('simulated read error (connection reset)')
  return _real_restore(self, *args, **kwargs)


if __name__ == '__main__':
  ocp.StandardCheckpointHandler.restore = _flaky_restore
  app.run(main.main)
