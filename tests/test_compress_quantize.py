"""Quantization with Qwix: post-training quantization of a trained digits MLP (accuracy, honest
bytes, the command and its result file) and quantization-aware training (trains, resumes
exactly, checkpoints stay float), and every weight of a transformer quantizes."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from jaxscale import objectives
from jaxscale.compress import __main__ as cli, quantize
from jaxscale.core import param_paths
from jaxscale.inference import ptq, sampling
from jaxscale.metrics import writers
from jaxscale.models import build
from tests.helpers import digits_mlp_config, random_batch, straight_and_resumed, tiny_config

ROOT = pathlib.Path(__file__).parent.parent


@pytest.fixture(scope='module')
def trained_run(digits_mlp_run):
  """A float MLP trained on digits to well above chance."""
  workdir, summary = digits_mlp_run
  assert summary['eval_accuracy'] > 0.9, summary
  return workdir, summary


@pytest.fixture(scope='module')
def int8_result(trained_run):
  return ptq.quantize_run(trained_run[0], 'int8', 'int8')


def test_int8_ptq_keeps_accuracy_within_two_points_at_under_a_third_of_the_bytes(
    trained_run, int8_result):
  workdir, summary = trained_run
  result = int8_result
  # The float model evaluated here is the one training evaluated (same eval set and step).
  assert result['float_eval_accuracy'] == pytest.approx(summary['eval_accuracy'], abs=0.01)
  assert abs(result['eval_accuracy'] - result['float_eval_accuracy']) <= 0.02, result
  assert result['eval_loss'] != result['float_eval_loss']  # The quantized model did run.
  assert result['bytes'] <= 0.3 * result['float_bytes'], result
  assert result['quantized_weights'] == ['head.kernel', 'hidden.0.kernel'] and not result[
      'float_weights']
  float_params = sum(x.size for x in jax.tree.leaves(nnx.state(sampling.restore_model(
      workdir)[0])))
  assert result['float_bytes'] == 4 * float_params
  written = json.loads((workdir / 'quantized' / 'int8_aint8' / 'result.json').read_text())
  assert written == json.loads(json.dumps(result))


def test_bytes_count_int4_at_half_a_byte_per_element():
  assert quantize.tree_bytes([jax.ShapeDtypeStruct((10, 3), jnp.int4)]) == 15
  assert quantize.tree_bytes([jax.ShapeDtypeStruct((10, 3), jnp.int8),
                              jax.ShapeDtypeStruct((3,), jnp.float32)]) == 42
  assert jnp.zeros((10, 3), jnp.int4).nbytes == 30  # What an honest count must not use.


def test_cli_prints_the_result_and_writes_it_beside_the_run(trained_run, int8_result, tmp_path):
  workdir, _ = trained_run
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  done = subprocess.run(
      [sys.executable, '-m', 'jaxscale.compress', 'quantize', f'--workdir={workdir}',
       '--weights=int4'], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  printed = json.loads(done.stdout)
  for field in ('eval_loss', 'eval_accuracy', 'bytes', 'float_bytes'):
    assert isinstance(printed[field], (int, float)), field
  assert printed['weights'] == 'int4' and printed['activations'] == 'float'
  assert printed == json.loads((workdir / 'quantized' / 'int4' / 'result.json').read_text())
  # int4 weights take half the bytes of int8 ones (the scales are the same).
  assert printed['bytes'] < int8_result['bytes']
  assert printed['float_bytes'] == int8_result['float_bytes']


def test_a_bad_workdir_is_a_clear_error(tmp_path, capsys):
  assert cli.main(['quantize', f'--workdir={tmp_path / "missing"}', '--weights=int8']) == 2
  assert 'no config.json' in capsys.readouterr().err
  (tmp_path / 'config.json').write_text('{}')
  assert cli.main(['quantize', f'--workdir={tmp_path}', '--weights=int8']) == 2
  assert 'has no checkpoint' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(['quantize', f'--workdir={tmp_path}', '--weights=int3'])


def test_qat_fake_quantizes_the_forward_and_passes_gradients_straight_through():
  config = digits_mlp_config('', **{'quantization.mode': 'qat', 'model.num_classes': 10,
                                    'model.image_size': 8})
  model = build.build_model(config.model, seed=0)
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.normal(size=(16, 8, 8, 3)), jnp.float32),
           'labels': jax.nn.one_hot(jnp.arange(16) % 10, 10), 'weights': jnp.ones((16,))}
  plain = objectives.make('classification', config)
  fake_quantized = quantize.qat_objective(plain, config.quantization)

  def loss(objective, params):
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    sums = objective(nnx.merge(graphdef, params, rest), batch, train=True, rng=None)
    return sums['loss_sum']

  params = nnx.state(model, nnx.Param)
  float_loss, float_grads = jax.jit(jax.value_and_grad(lambda p: loss(plain, p)))(params)
  qat_loss, qat_grads = jax.jit(jax.value_and_grad(lambda p: loss(fake_quantized, p)))(params)
  qat_loss, float_loss = float(qat_loss), float(float_loss)
  assert qat_loss != float_loss and qat_loss == pytest.approx(float_loss, rel=0.05)
  for name, grad in param_paths.named_leaves(qat_grads).items():
    expected = param_paths.named_leaves(float_grads)[name]
    assert np.all(np.isfinite(grad[...])) and np.any(grad[...] != 0), name
    # Rounding has no gradient: a nonzero one that tracks the float one passed straight through.
    assert np.linalg.norm(grad[...] - expected[...]) < 0.2 * np.linalg.norm(expected[...]), name


def test_qat_trains_and_resumes_exactly_with_float_checkpoints(data_dir, tmp_path, monkeypatch):
  config = digits_mlp_config(data_dir, **{
      'quantization.mode': 'qat', 'num_train_steps': 30, 'eval_every_steps': 15,
      'checkpoint_every_steps': 15, 'optimizer.warmup_steps': 5})
  straight, resumed = straight_and_resumed(config, tmp_path, monkeypatch, interrupt_after=15)
  losses = [r['train_loss'] for r in writers.read_jsonl(tmp_path / 'straight' / 'metrics.jsonl')
            if 'train_loss' in r and 'eval_loss' not in r]
  assert losses[-1] < 0.5 * losses[0], losses
  assert straight['eval_accuracy'] > 0.5, straight
  assert resumed['eval_loss'] == straight['eval_loss']

  checkpointer = ocp.StandardCheckpointer()
  final = {name: checkpointer.restore(tmp_path / name / 'checkpoints' / '30' / 'state')
           for name in ('straight', 'resumed')}
  for part in ('params', 'opt_state'):
    expected, actual = (jax.tree.leaves(final[n][part]) for n in ('straight', 'resumed'))
    assert len(expected) == len(actual) and all(
        np.array_equal(a, b) for a, b in zip(expected, actual)), part
  # The checkpoint holds the plain float parameters: a float model restores from it.
  names = param_paths.named_leaves(final['straight']['params'])
  assert names and all(np.asarray(x).dtype == np.float32 for x in names.values())
  assert not [name for name in names if 'qvalue' in name or 'scale' in name]


def test_every_transformer_weight_quantizes_and_the_lm_loss_barely_moves():
  config = tiny_config()
  model = build.build_model(config.model, seed=0)
  batch = {k: jnp.asarray(v) for k, v in random_batch(4, 16, 64).items()}
  sizes = quantize.size_report(model, 'int8', '', batch['inputs'])
  weights = {name for name in param_paths.named_leaves(nnx.state(model, nnx.Param))
             if 'norm' not in name}  # RMSNorm scales are read elementwise, not by a matmul.
  assert set(sizes['quantized_weights']) == weights and not sizes['float_weights']
  assert sizes['bytes'] <= 0.3 * sizes['float_bytes']

  lm = objectives.make('lm')
  graphdef, state = nnx.split(model)
  losses = {name: float(jax.jit(lambda s, objective=objective: objective(
      nnx.merge(graphdef, s), batch, train=False, rng=None)['loss_sum'])(state))
            for name, objective in (('float', lm), ('int8', quantize.ptq_objective(lm, 'int8')))}
  assert losses['int8'] != losses['float']
  assert losses['int8'] == pytest.approx(losses['float'], rel=0.01)
