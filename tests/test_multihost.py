"""Two CPU processes on localhost train exactly what one process does with the same global batch."""

import dataclasses
import importlib.util
import os
import socket
import subprocess
import sys

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import jaxscale.data
from jaxscale.data import indexed
from jaxscale.metrics import writers
from jaxscale.train import loop

NUM_STEPS = 6
OVERRIDES = {'num_train_steps': NUM_STEPS, 'log_every_steps': 1, 'eval_every_steps': 3,
             'checkpoint_every_steps': 3, 'num_eval_batches': 2, 'batch_size': 8,
             'dataset.seq_len': 32, 'model.num_layers': 1, 'model.d_model': 32,
             'model.mlp_dim': 64, 'optimizer.warmup_steps': 1}


def _default_config(data_dir):
  spec = importlib.util.spec_from_file_location('default_config', 'configs/default.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in {**OVERRIDES, 'dataset.data_dir': str(data_dir)}.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch_two_processes(workdir, data_dir, log_dir):
  port = _free_port()
  command = [sys.executable, '-m', 'jaxscale.main', '--config', 'configs/default.py',
             '--workdir', str(workdir), f'--config.dataset.data_dir={data_dir}'] + [
                 f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  processes = []
  for index in range(2):
    # 4 devices each: the same 8-device mesh as the single-process reference.
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(index),
               XLA_FLAGS='--xla_force_host_platform_device_count=4')
    log = open(log_dir / f'process_{index}.log', 'w')  # noqa: SIM115  (closed by the process)
    processes.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT),
                      log_dir / f'process_{index}.log'))
  for process, log in processes:
    try:
      process.wait(timeout=400)
    finally:
      if process.poll() is None:
        process.kill()
    assert process.returncode == 0, log.read_text()[-4000:]
  return [log.read_text() for _, log in processes]


def _two_shard_datasets(real_get_datasets):
  """get_datasets whose global train batch is process 0's shard then process 1's, as two
  processes assemble it; the eval set is already the same for any process count."""

  def get_datasets(dataset_config, *, local_batch_size, **kwargs):
    whole = real_get_datasets(dataset_config, local_batch_size=local_batch_size, **kwargs)
    shards = [real_get_datasets(dataset_config, local_batch_size=local_batch_size // 2,
                                num_eval_batches=kwargs['num_eval_batches'], seed=kwargs['seed'],
                                process_index=index, process_count=2).train
              for index in range(2)]
    # Grain streams (the default loader): zipped the same way, batches stay numpy.
    train_batches = indexed.IndexedBatches(
        batches=grain.experimental.ZipIterDataset([shard.batches for shard in shards]).map(
            lambda pair: {k: np.concatenate([pair[0][k], pair[1][k]]) for k in pair[0]}),
        element_spec=whole.train.element_spec)
    return dataclasses.replace(whole, train=train_batches)

  return get_datasets


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, monkeypatch):
  data_dir, workdir = tmp_path / 'tfds', tmp_path / 'two'
  config = _default_config(data_dir)
  monkeypatch.setattr(jaxscale.data, 'get_datasets',
                      _two_shard_datasets(jaxscale.data.get_datasets))
  one = loop.run(config, str(tmp_path / 'one'))  # Also prepares the dataset for both processes.
  logs = _launch_two_processes(workdir, data_dir, tmp_path)
  assert 'JAX' in logs[0] and '8 cpu device(s), 2 process(es)' in logs[0]

  rows = {name: writers.read_jsonl(tmp_path / name / 'metrics.jsonl') for name in ('one', 'two')}
  losses = {name: [r['train_loss'] for r in rows[name] if 'grad_norm' in r] for name in rows}
  assert len(losses['two']) == NUM_STEPS  # Only process 0 writes metrics: one row per step.
  assert len(list(workdir.glob('events.out.tfevents.*'))) == 1
  train_diff = np.max(np.abs(np.subtract(losses['one'], losses['two'])))
  eval_losses = {name: [r['eval_loss'] for r in rows[name] if 'eval_loss' in r] for name in rows}
  eval_diff = np.max(np.abs(np.subtract(eval_losses['one'], eval_losses['two'])))

  # Checkpoints are written by both processes together; each saved its own data position.
  final = workdir / 'checkpoints' / str(NUM_STEPS)
  assert {p.name for p in (final / 'data').glob('process_*.json')} == {
      'process_0-of-2.json', 'process_1-of-2.json'}
  checkpointer = ocp.StandardCheckpointer()
  state_one = checkpointer.restore(tmp_path / 'one' / 'checkpoints' / str(NUM_STEPS) / 'state')
  # Device ids differ across the two topologies: restore onto this process's layout.
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state_one)
  states = [state_one, checkpointer.restore(final / 'state', target)]
  param_diff = max(np.max(np.abs(np.asarray(a) - np.asarray(b))) for a, b in zip(
      jax.tree.leaves(states[0]['params']), jax.tree.leaves(states[1]['params']), strict=True))
  print(f'2 processes vs 1: max |train loss diff| {train_diff:.3g}, |eval loss diff| '
        f'{eval_diff:.3g}, |param diff| {param_diff:.3g}; eval loss {one["eval_loss"]:.6f}')
  # The same batches on the same devices; only the cross-process reduction order may differ.
  assert train_diff < 1e-5 and eval_diff < 1e-5 and param_diff < 1e-5


class _FakeJax:
  """Records what main.py asks of jax.distributed."""

  def __init__(self):
    self.calls = []
    self.config = self
    self.jax_cpu_collectives_implementation = None
    self.distributed = self

  def update(self, name, value):
    setattr(self, name, value)

  def initialize(self, **kwargs):
    self.calls.append(kwargs)


@pytest.mark.parametrize('env, expected_calls', [
    ({}, []),
    ({'SLURM_NTASKS': '1'}, []),
    ({'SLURM_NTASKS': '4'}, [{}]),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234', 'JAX_NUM_PROCESSES': '2',
      'JAX_PROCESS_ID': '1'}, [{'num_processes': 2, 'process_id': 1}]),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, [{'num_processes': None, 'process_id': None}]),
], ids=['single', 'slurm_one_task', 'slurm', 'explicit', 'coordinator_only'])
def test_main_initializes_jax_distributed_exactly_when_the_environment_says_so(
    env, expected_calls, monkeypatch):
  from jaxscale import main  # noqa: PLC0415
  for name in ('SLURM_NTASKS', 'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID',
               'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  fake = _FakeJax()
  main._initialize_distributed(fake)
  assert fake.calls == expected_calls
  assert fake.jax_cpu_collectives_implementation == ('gloo' if expected_calls else None)
