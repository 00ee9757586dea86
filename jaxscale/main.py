"""Command line entry point: `python -m jaxscale.main --config configs/X.py --workdir DIR`.

Any config key can be overridden, e.g. `--config.num_train_steps=50 --config.model.d_model=128`.
All logic lives in `jaxscale.train` so it can be imported from tests and notebooks.

Multi-process runs call `jax.distributed.initialize()` when the environment describes one:
- explicitly: JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID (any
  machines, CPU included: CPU processes talk through gloo);
- SLURM with SLURM_NTASKS > 1 (JAX reads the rest from SLURM's variables);
- Cloud TPU VMs (TPU_WORKER_HOSTNAMES).
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from jaxscale.config.validation import ConfigError

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
  if _CONFIG.value.deterministic:  # Read when the GPU backend starts, so before importing jax.
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                               + ' --xla_gpu_deterministic_ops=true').strip()
  import jax  # noqa: PLC0415  (after absl has parsed flags such as --jax_platforms)
  _initialize_distributed(jax)
  # The trainer imports JAX and TensorFlow: only after absl has parsed the flags and XLA_FLAGS is
  # set for config.deterministic.
  from jaxscale.train import loop  # noqa: PLC0415
  logging.info('JAX %s on %d %s device(s), %d process(es).', jax.__version__, jax.device_count(),
               jax.devices()[0].platform, jax.process_count())
  extra_actions = []
  if _CONFIG.value.get('lm_eval', {}).get('tasks'):
    # lm-eval and the inference stage load only for runs that ask (after TensorFlow, as above).
    from jaxscale.inference import lm_eval_action  # noqa: PLC0415
    extra_actions.append(lm_eval_action.make)
  try:
    loop.run(_CONFIG.value, _WORKDIR.value, extra_actions=extra_actions)
  except ConfigError as e:
    logging.error('Invalid config: %s', e)
    raise SystemExit(f'Invalid config: {e}') from None


def _initialize_distributed(jax):
  env = os.environ
  multi_process = (env.get('JAX_COORDINATOR_ADDRESS') or int(env.get('SLURM_NTASKS', '1')) > 1
                   or env.get('TPU_WORKER_HOSTNAMES'))
  if multi_process and not jax.config.jax_cpu_collectives_implementation:
    # CPU processes need a cross-process collective backend (no-op on GPU and TPU).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if env.get('JAX_COORDINATOR_ADDRESS'):
    num_processes, process_id = env.get('JAX_NUM_PROCESSES'), env.get('JAX_PROCESS_ID')
    # Without them JAX asks the cluster environment (SLURM, TPU, ...) for the numbers.
    jax.distributed.initialize(
        num_processes=int(num_processes) if num_processes else None,
        process_id=int(process_id) if process_id else None)
  elif int(env.get('SLURM_NTASKS', '1')) > 1 or env.get('TPU_WORKER_HOSTNAMES'):
    jax.distributed.initialize()  # Coordinator, process count and id from the cluster.


if __name__ == '__main__':
  app.run(main)
