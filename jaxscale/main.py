"""Command line entry point: `python -m jaxscale.main --config configs/X.py --workdir DIR`.

Any config key can be overridden, e.g. `--config.num_train_steps=50 --config.model.d_model=128`.
All logic lives in `jaxscale.train` so it can be imported from tests and notebooks.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory (local or gs://) for the run record.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  # Orbax logs every save phase at INFO; keep the progress lines readable.
  logging.get_absl_handler().addFilter(lambda record: 'orbax' not in record.pathname)
  import jax  # noqa: PLC0415  (after absl has parsed flags such as --jax_platforms)
  if os.environ.get('JAX_COORDINATOR_ADDRESS') or os.environ.get('TPU_WORKER_HOSTNAMES'):
    jax.distributed.initialize()  # Multi-process launch: coordinator from the environment.
  from jaxscale import train  # noqa: PLC0415
  logging.info('JAX %s on %d %s device(s), %d process(es).', jax.__version__, jax.device_count(),
               jax.devices()[0].platform, jax.process_count())
  from jaxscale.config_validation import ConfigError  # noqa: PLC0415
  try:
    train.run(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    logging.error('Invalid config: %s', e)
    raise SystemExit(f'Invalid config: {e}') from None


if __name__ == '__main__':
  app.run(main)
