"""Exported models load without jaxscale: a fresh Python whose import path cannot reach jaxscale
deserializes the artifacts with plain jax.export and gets the trainer's eval-forward logits; an
LM's prefill/decode artifacts generate what sampling.generate does; the SavedModel gives the same
logits under TensorFlow; the manifest describes the files."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from flax import nnx

from jaxscale.inference import export, sampling
from jaxscale.objectives.classification import model_inputs
from tests import saved_runs

NEW_TOKENS = 5

# Run in a fresh interpreter: jaxscale is removed from its import path before anything else.
_LOADER = textwrap.dedent('''
    import importlib.util, json, os, pathlib, sys
    sys.meta_path = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]
    sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p or '.', 'jaxscale'))]
    assert importlib.util.find_spec('jaxscale') is None, 'jaxscale is importable'
    import jax, jax.numpy as jnp, numpy as np

    def load(directory, name):
      return jax.export.deserialize((directory / f'{name}.bin').read_bytes())

    for directory in map(pathlib.Path, sys.argv[1:]):
      manifest = json.loads((directory / 'manifest.json').read_text())
      params = dict(np.load(directory / 'params.npz'))
      inputs = np.load(directory / 'inputs.npy')
      np.save(directory / 'logits.npy', load(directory, 'forward').call(params, inputs))
      if manifest['kind'] == 'lm':  # Greedy generation: prefill once, then one token a step.
        prefill, decode = load(directory, 'prefill'), load(directory, 'decode')
        first = np.load(directory / 'first.npy')
        logits, keys, values = prefill.call(params, inputs, first)
        tokens = [jnp.argmax(logits, -1).astype(jnp.int32)]
        for step in range(%d - 1):
          length = jnp.int32(inputs.shape[1] + step)
          logits, keys, values = decode.call(params, tokens[-1], keys, values, first, length)
          tokens.append(jnp.argmax(logits, -1).astype(jnp.int32))
        np.save(directory / 'generated.npy', np.stack(tokens, axis=1))
''' % NEW_TOKENS)


def _run_without_jaxscale(directories, tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  result = subprocess.run([sys.executable, '-c', _LOADER, *map(str, directories)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]


def _example_inputs(config, kind, rng):
  """A batch of 3 for the exported forward, and the eval batch the trainer would see."""
  if kind == 'image_classifier':
    size, channels = config.model.image_size, config.model.channels
    image = rng.normal(size=(3, size, size, channels)).astype(np.float32)
    return image, {'image': image}
  seq_len = config.dataset.seq_len
  if kind == 'text_classifier':
    tokens = np.full((3, seq_len), 256, np.int32)  # PAD after CLS and a few bytes.
    tokens[:, 0] = 257
    for row, length in enumerate((5, 9, 15)):
      tokens[row, 1:length] = rng.integers(0, 256, length - 1)
    return tokens, {'inputs': tokens, 'input_mask': (tokens != 256).astype(np.int32)}
  tokens = rng.integers(0, config.model.vocab_size, (3, seq_len), dtype=np.int32)
  return tokens, {'inputs': tokens}


def _export_family(family, tmp_path, formats=('jax',)):
  """(export dir, eval-forward logits of its inputs, model, config)."""
  workdir = saved_runs.save_run(tmp_path / family, saved_runs.family_config(family))
  out = tmp_path / f'{family}_export'
  manifest = export.export_workdir(workdir, out, formats=formats)
  model, config = sampling.restore_model(workdir)
  inputs, batch = _example_inputs(config, manifest['kind'], np.random.default_rng(0))
  np.save(out / 'inputs.npy', inputs)
  model.eval()
  expected = nnx.jit(lambda m, args: m(*args))(model, model_inputs(batch))
  return out, np.asarray(expected), model, config


def _assert_same_logits(out, expected):
  np.testing.assert_allclose(np.load(out / 'logits.npy'), expected, rtol=1e-4, atol=1e-5)


def test_lm_and_mlp_artifacts_run_without_jaxscale(tmp_path):
  lm_out, lm_logits, lm, lm_config = _export_family('transformer', tmp_path)
  prompts = [np.arange(1, 7, dtype=np.int32), np.arange(10, 26, dtype=np.int32)]
  padded = np.zeros((2, lm_config.dataset.seq_len), np.int32)
  first = np.array([padded.shape[1] - len(p) for p in prompts], np.int32)
  for row, prompt in enumerate(prompts):
    padded[row, first[row]:] = prompt
  np.save(lm_out / 'inputs.npy', padded)  # The forward sees these too; recompute its reference.
  np.save(lm_out / 'first.npy', first)
  lm_logits = np.asarray(nnx.jit(lambda m, t: m(t))(lm, padded))
  mlp_out, mlp_logits, _, _ = _export_family('mlp', tmp_path)

  _run_without_jaxscale([lm_out, mlp_out], tmp_path)
  _assert_same_logits(lm_out, lm_logits)
  _assert_same_logits(mlp_out, mlp_logits)
  np.testing.assert_array_equal(np.load(lm_out / 'generated.npy'),
                                sampling.generate(lm, prompts, max_new_tokens=NEW_TOKENS))

  manifest = json.loads((lm_out / 'manifest.json').read_text())
  assert manifest['kind'] == 'lm' and manifest['vocab']['vocab_size'] == 64
  assert set(manifest['functions']) == {'forward', 'prefill', 'decode'}
  assert manifest['functions']['forward']['inputs'][0]['shape'] == ['b', 'l']
  assert manifest['functions']['forward']['outputs'][0] == {
      'name': 'logits', 'shape': ['b', 'l', 64], 'dtype': 'float32'}
  assert manifest['max_seq_len'] == 16
  assert manifest['jax_version'] and manifest['config']['model']['d_model'] == 32
  assert 'blocks/0/qkv_DxTxHxK' in np.load(lm_out / 'params.npz').files
  mlp_manifest = json.loads((mlp_out / 'manifest.json').read_text())
  assert mlp_manifest['class_names'] == ['0', '1', '2']


@pytest.mark.slow
def test_every_other_family_exports_and_the_savedmodel_matches(tmp_path):
  import tensorflow as tf  # noqa: PLC0415
  exported = {family: _export_family(family, tmp_path, formats=formats) for family, formats in
              [('encoder', ('jax', 'savedmodel')), ('vit', ('jax',)), ('resnet', ('jax',))]}
  _run_without_jaxscale([out for out, *_ in exported.values()], tmp_path)
  for out, expected, _, _ in exported.values():
    _assert_same_logits(out, expected)
  out, expected, _, _ = exported['encoder']
  served = tf.saved_model.load(str(out / 'savedmodel')).signatures['serving_default']
  logits = served(inputs=tf.constant(np.load(out / 'inputs.npy')))['logits'].numpy()
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_bad_requests_say_what_to_do(tmp_path):
  workdir = saved_runs.save_run(tmp_path / 'lm', saved_runs.family_config('transformer'))
  with pytest.raises(ValueError, match='classifiers'):
    export.export_workdir(workdir, tmp_path / 'out', formats=('jax', 'savedmodel'))
  with pytest.raises(ValueError, match='Unknown export format'):
    export.export_workdir(workdir, tmp_path / 'out', formats=('onnx',))
  with pytest.raises(FileNotFoundError, match='config.json'):
    export.export_workdir(tmp_path / 'nothing', tmp_path / 'out')


def test_forward_takes_any_length_up_to_the_configured_maximum(tmp_path):
  """config.export.max_seq_len (24) above the training seq_len (16): forward.bin takes every
  length up to it, logits equal to the model's own on those tokens; a longer input is refused
  naming the bound."""
  import jax  # noqa: PLC0415
  config = saved_runs.family_config('transformer', **{'export.max_seq_len': 24})
  workdir = saved_runs.save_run(tmp_path / 'lm', config)
  manifest = export.export_workdir(workdir, tmp_path / 'out')
  assert manifest['max_seq_len'] == 24
  forward = jax.export.deserialize((tmp_path / 'out' / 'forward.bin').read_bytes())
  params = dict(np.load(tmp_path / 'out' / 'params.npz'))
  model, _ = sampling.restore_model(workdir)
  model.eval()
  rng = np.random.default_rng(0)
  for length in (1, 7, 16, 24):
    tokens = rng.integers(0, 64, (2, length), dtype=np.int32)
    logits = np.asarray(forward.call(params, tokens))
    assert logits.shape == (2, length, 64)
    np.testing.assert_allclose(logits, np.asarray(model(tokens)), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError) as refused:
    forward.call(params, np.zeros((2, 25), np.int32))
  assert 'l <= 24' in str(refused.value.__cause__)
  # Prompts of any length fill the KV cache: prefill's last logits are the forward's.
  prefill = jax.export.deserialize((tmp_path / 'out' / 'prefill.bin').read_bytes())
  prompt = rng.integers(0, 64, (2, 5), dtype=np.int32)
  last_logits, _, _ = prefill.call(params, prompt, np.zeros(2, np.int32))
  np.testing.assert_allclose(np.asarray(last_logits), np.asarray(model(prompt))[:, -1],
                             rtol=1e-4, atol=1e-5)


def test_an_exported_text_classifier_serves_text_as_its_workdir_does(tmp_path):
  """The server's --export backend pads a text to the forward's max_seq_len (its input length
  is symbolic) and classifies it as the workdir's model does."""
  from jaxscale.inference import backends  # noqa: PLC0415
  workdir = saved_runs.save_run(tmp_path / 'encoder', saved_runs.family_config('encoder'))
  export.export_workdir(workdir, tmp_path / 'out')
  limits = dict(max_prompt_tokens=8, max_new_tokens=8)
  exported = backends.from_export(tmp_path / 'out', **limits)
  assert exported.input_shape == (16,)
  in_process = backends.from_workdir(workdir, **limits)
  request = {'inputs': 'def f(x):', 'top_k': 3}
  (got,) = exported.run([exported.check(request)])
  (expected,) = in_process.run([in_process.check(request)])
  assert [c['class'] for c in got['classes']] == [c['class'] for c in expected['classes']]
  np.testing.assert_allclose([c['probability'] for c in got['classes']],
                             [c['probability'] for c in expected['classes']], rtol=1e-4)
