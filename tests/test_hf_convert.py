"""Hugging Face (Llama) conversion, checked against the real transformers library: logits and
greedy generation agree in both directions, round trips are bit-exact, and what Llama cannot
express (or the import does not implement) is refused with one line naming the key or file.

transformers runs in a subprocess (tests/hf_reference.py), twice per module: once to create the
reference checkpoints, once to read everything the tests exported.
"""

import json
import pathlib
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from jaxscale import convert
from jaxscale.checkpoint import hf, hf_convert, restore
from jaxscale.config import config_base
from jaxscale.core import param_paths
from jaxscale.data import hf_tokenizer
from jaxscale.inference import sampling
from jaxscale.models import build
from tests.helpers import markov_config, tiny_config

REFERENCE = pathlib.Path(__file__).with_name('hf_reference.py')
VOCAB = 96
TOKENS = np.random.RandomState(0).randint(0, VOCAB, (2, 12)).tolist()
PROMPTS = np.random.RandomState(1).randint(0, VOCAB, (2, 5)).tolist()
NEW_TOKENS = 8
HF_MODELS = {
    # Grouped-query attention (6 query heads over 2 kv heads), untied, transformers >= 5's
    # rope_parameters; written in shards with an index.
    'gqa_untied': dict(num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=False,
                       hidden_size=48, rope_parameters={'rope_theta': 5000.0,
                                                        'rope_type': 'default'}),
    'mha_tied': dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                     hidden_size=32, rms_norm_eps=1e-5),
}


def run_reference(jobs, tmp_path) -> list:
  jobs_path, results_path = tmp_path / 'jobs.json', tmp_path / 'results.json'
  jobs_path.write_text(json.dumps(jobs))
  subprocess.run([sys.executable, str(REFERENCE), str(jobs_path), str(results_path)], check=True,
                 timeout=600)
  return json.loads(results_path.read_text())


def _llama_config(**kwargs):
  return dict(vocab_size=VOCAB, intermediate_size=80, num_hidden_layers=2,
              max_position_embeddings=64, bos_token_id=None, eos_token_id=None, **kwargs)


@pytest.fixture(scope='module')
def hf_models(tmp_path_factory):
  """{name: (directory, logits, greedy tokens)} of transformers' own random Llama models."""
  root = tmp_path_factory.mktemp('hf_models')
  jobs = []
  for name, kwargs in HF_MODELS.items():
    jobs.append({'op': 'create', 'config': _llama_config(**kwargs), 'out': str(root / name),
                 'max_shard_size': '20KB' if name == 'gqa_untied' else None})
    jobs.append({'op': 'logits', 'model': str(root / name), 'tokens': TOKENS})
    jobs.append({'op': 'generate', 'model': str(root / name), 'prompts': PROMPTS,
                 'new': NEW_TOKENS})
  results = run_reference(jobs, root)
  return {name: (root / name, np.array(results[3 * i + 1], np.float32),
                 np.array(results[3 * i + 2]))
          for i, name in enumerate(HF_MODELS)}


def _train(data_dir, workdir, **overrides):
  from jaxscale.train import loop  # noqa: PLC0415  (the trainer's TensorFlow only where needed)
  config = markov_config(data_dir, **{
      'num_train_steps': 3, 'eval_every_steps': 3, 'checkpoint_every_steps': 3,
      'log_every_steps': 3, 'num_eval_batches': 1, 'model.vocab_size': VOCAB, **overrides})
  loop.run(config, str(workdir))
  return workdir


# Runs exported to transformers: GQA untied unscanned; tied scanned; a LoRA finetune of the
# imported GQA checkpoint (init_from.hf), trained sharded over the 8 test devices.
RUNS = {
    'gqa_untied': {'model.num_kv_heads': 2, 'model.tie_embeddings': False},
    'tied_scanned': {'model.scan_layers': True, 'model.num_kv_heads': 0},
}


@pytest.fixture(scope='module')
def exported(data_dir, hf_models, tmp_path_factory):
  """{name: (workdir, HF directory, transformers' logits, transformers' greedy tokens)}."""
  root = tmp_path_factory.mktemp('exported')
  runs = {name: _train(data_dir, root / name, **overrides) for name, overrides in RUNS.items()}
  runs['lora'] = _train(data_dir, root / 'lora', **{
      'init_from.hf': str(hf_models['gqa_untied'][0]), 'lora.rank': 4,
      'optimizer.learning_rate': 0.05, 'optimizer.warmup_steps': 0, 'mesh.fsdp': 2,
      'mesh.tensor': 2})
  jobs, out = [], {}
  for name, workdir in runs.items():
    hf_dir = root / f'{name}_hf'
    hf_convert.to_hf(workdir, hf_dir)
    out[name] = (workdir, hf_dir)
    jobs.append({'op': 'logits', 'model': str(hf_dir), 'tokens': TOKENS})
    jobs.append({'op': 'generate', 'model': str(hf_dir), 'prompts': PROMPTS, 'new': NEW_TOKENS})
  results = run_reference(jobs, root)
  return {name: (*paths, np.array(results[2 * i], np.float32), np.array(results[2 * i + 1]))
          for i, (name, paths) in enumerate(out.items())}


def _logits(model, tokens=TOKENS):
  return np.asarray(model(jnp.asarray(tokens)))


def _greedy(model):
  return sampling.generate(model, np.array(PROMPTS), NEW_TOKENS)


# ---------------------------------------------------------------------------------------------
# Import: transformers' checkpoints into jaxscale.

@pytest.mark.parametrize('name', list(HF_MODELS))
def test_an_imported_checkpoint_gives_transformers_logits_and_greedy_tokens(
    name, hf_models, tmp_path):
  hf_dir, hf_logits, hf_tokens = hf_models[name]
  convert.main(['from-hf', '--hf', str(hf_dir), '--out', str(tmp_path / 'w')])
  model, config = restore.restore_model(tmp_path / 'w')
  assert config.model.num_kv_heads == HF_MODELS[name]['num_key_value_heads']
  assert config.model.tie_embeddings == HF_MODELS[name]['tie_word_embeddings']
  assert config.dataset.tokenizer == 'none'  # No tokenizer files came with the weights.
  assert config.export.max_seq_len == 64 and config.dataset.seq_len == 64  # Its positions.
  np.testing.assert_allclose(_logits(model), hf_logits, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(_greedy(model), hf_tokens)
  report = json.loads((tmp_path / 'w' / 'init_report.json').read_text())
  assert report['new'] == [] and report['unused'] == []
  assert len(report['loaded']) == len(param_paths.named_leaves(nnx.state(model, nnx.Param)))


def test_rope_theta_and_norm_eps_come_from_the_checkpoint(hf_models):
  gqa = hf.model_config_from_hf(hf.read_hf_config(hf_models['gqa_untied'][0]))
  tied = hf.model_config_from_hf(hf.read_hf_config(hf_models['mha_tied'][0]))
  assert gqa['rope_theta'] == 5000.0  # Only in rope_parameters (transformers >= 5).
  assert tied['norm_eps'] == 1e-5 and tied['rope_theta'] == 10_000.0


def test_a_checkpoint_reads_into_a_scanned_stack_sharded_over_devices(hf_models):
  hf_dir, hf_logits, _ = hf_models['gqa_untied']
  config = config_base.get_base_config()
  config.init_from.hf = str(hf_dir)
  config = hf.derive_config(config)
  config.model.scan_layers = True
  import jax  # noqa: PLC0415
  from jaxscale.core import sharding  # noqa: PLC0415
  config.mesh.fsdp, config.mesh.tensor = 2, 2
  mesh = sharding.make_mesh(config.mesh)
  abstract = nnx.eval_shape(lambda: nnx.state(build.model_for(config), nnx.Param))
  shardings = sharding.state_shardings(abstract, mesh, config.mesh.rules)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, shardings)
  params, report = hf.load_params(hf_dir, abstract)
  assert report.new == [] and 'blocks.kv_DxTxGxK' in report.loaded
  kv = param_paths.named_leaves(params)['blocks.kv_DxTxGxK'].get_value()
  assert len(kv.sharding.device_set) == 8 and kv.shape == (2, 48, 2, 2, 8)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: build.model_for(config)))
  model = nnx.merge(graphdef, jax.device_get(params))
  np.testing.assert_allclose(_logits(model), hf_logits, atol=1e-4, rtol=1e-4)


def test_the_round_trip_hf_jaxscale_hf_is_bit_exact(hf_models, tmp_path):
  for name in HF_MODELS:
    hf_dir = hf_models[name][0]
    hf_convert.from_hf(hf_dir, tmp_path / name)
    hf_convert.to_hf(tmp_path / name, tmp_path / f'{name}_hf')
    original, again = _tensors(hf_dir), _tensors(tmp_path / f'{name}_hf')
    assert sorted(original) == sorted(again)
    for key in original:
      np.testing.assert_array_equal(original[key], again[key], err_msg=key)


def _tensors(hf_dir) -> dict[str, np.ndarray]:
  tensors = {}
  for path in sorted(pathlib.Path(hf_dir).glob('*.safetensors')):
    tensors.update(load_file(path))
  return tensors


# ---------------------------------------------------------------------------------------------
# Export: jaxscale runs into transformers.

@pytest.mark.parametrize('name', ['gqa_untied', 'tied_scanned', 'lora'])
def test_an_exported_run_gives_its_logits_and_greedy_tokens_in_transformers(name, exported):
  workdir, _, hf_logits, hf_tokens = exported[name]
  model, _ = restore.restore_model(workdir)  # LoRA adapters merged.
  np.testing.assert_allclose(hf_logits, _logits(model), atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(hf_tokens, _greedy(model))


def test_a_lora_run_starts_from_the_checkpoint_and_exports_merged(exported, hf_models):
  workdir, hf_dir, hf_logits, _ = exported['lora']
  config = json.loads((workdir / 'config.json').read_text())
  assert config['model']['num_kv_heads'] == 2 and config['dataset']['tokenizer'] == 'none'
  report = json.loads((workdir / 'init_report.json').read_text())
  assert 'blocks.0.q_DxHxK' in report['loaded'] and report['new'] == []
  assert any(n.endswith('_lora.a') for n in report['reinitialised'])
  # The adapters trained: the merged export is not the base checkpoint.
  assert np.abs(hf_logits - hf_models['gqa_untied'][1]).max() > 1e-3
  assert not (hf_dir / 'model.safetensors.index.json').exists()


def test_the_round_trip_jaxscale_hf_jaxscale_is_bit_exact(exported, tmp_path):
  workdir, hf_dir, _, _ = exported['gqa_untied']
  hf_convert.from_hf(hf_dir, tmp_path / 'back')
  before = param_paths.named_leaves(nnx.state(restore.restore_model(workdir)[0], nnx.Param))
  after = param_paths.named_leaves(nnx.state(restore.restore_model(tmp_path / 'back')[0],
                                             nnx.Param))
  assert sorted(before) == sorted(after)
  for name in before:
    np.testing.assert_array_equal(np.asarray(before[name][...]), np.asarray(after[name][...]),
                                  err_msg=name)


def test_a_scanned_run_exports_the_unscanned_names_and_round_trips(exported, tmp_path):
  workdir, hf_dir, _, _ = exported['tied_scanned']
  names = set(_tensors(hf_dir))
  assert 'model.layers.1.self_attn.k_proj.weight' in names and 'lm_head.weight' not in names
  hf_convert.from_hf(hf_dir, tmp_path / 'back')
  hf_convert.to_hf(tmp_path / 'back', tmp_path / 'again')
  again = _tensors(tmp_path / 'again')
  for key, value in _tensors(hf_dir).items():
    np.testing.assert_array_equal(value, again[key], err_msg=key)


def test_shards_with_an_index_past_the_size_limit_and_bfloat16(exported, tmp_path):
  workdir, _, _, _ = exported['gqa_untied']
  convert.main(['to-hf', '--workdir', str(workdir), '--out', str(tmp_path / 'sharded'),
                '--max_shard_size', '20KB', '--dtype', 'bfloat16'])
  index = json.loads((tmp_path / 'sharded' / hf.WEIGHTS_INDEX_FILE).read_text())
  files = sorted(set(index['weight_map'].values()))
  assert len(files) > 1 and all((tmp_path / 'sharded' / f).exists() for f in files)
  assert json.loads((tmp_path / 'sharded' / 'config.json').read_text())['dtype'] == 'bfloat16'
  with safe_open(str(tmp_path / 'sharded' / files[0]), 'numpy') as f:
    assert {f.get_slice(k).get_dtype() for k in f.keys()} == {'BF16'}
  # Read back (fp32 params), every weight is its bfloat16 rounding.
  hf_convert.from_hf(tmp_path / 'sharded', tmp_path / 'back')
  before = param_paths.named_leaves(nnx.state(restore.restore_model(workdir)[0], nnx.Param))
  after = param_paths.named_leaves(nnx.state(restore.restore_model(tmp_path / 'back')[0],
                                             nnx.Param))
  for name in before:
    rounded = np.asarray(before[name][...]).astype(jnp.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(rounded, np.asarray(after[name][...]), err_msg=name)


# ---------------------------------------------------------------------------------------------
# The tokenizer: a text run's goes out with its weights, and comes back in with them.

TEXT = 'def mean(xs):\n    return sum(xs) / len(xs)  # café ∑ 🙂 <mask> </s>\n'
PROMPT = 'import os\n\ndef '
TEXT_NEW_TOKENS = 16  # Prompt and new tokens within the run's 32 positions.


@pytest.fixture(scope='module')
def text_export(data_dir, tmp_path_factory):
  """(workdir, HF directory, AutoTokenizer's ids of TEXT, transformers' greedy text after
  PROMPT) of a byte-level Llama-shaped run on standard-library sources."""
  from jaxscale.train import loop  # noqa: PLC0415
  root = tmp_path_factory.mktemp('text_export')
  config = tiny_config(**{
      'dataset.name': 'python_stdlib', 'dataset.data_dir': str(data_dir), 'model.vocab_size': 259,
      'dataset.seq_len': 32, 'model.mlp_activation': 'swiglu', 'num_train_steps': 20,
      'eval_every_steps': 20, 'checkpoint_every_steps': 20, 'num_eval_batches': 1,
      'optimizer.learning_rate': 0.01})
  loop.run(config, str(root / 'run'))
  hf_convert.to_hf(root / 'run', root / 'hf')
  ids, text = run_reference([
      {'op': 'tokenize', 'tokenizer': str(root / 'hf'), 'texts': [TEXT]},
      {'op': 'generate_text', 'model': str(root / 'hf'), 'prompt': PROMPT,
       'new': TEXT_NEW_TOKENS}], root)
  return root / 'run', root / 'hf', ids[0], text


def test_an_exported_text_run_tokenizes_and_generates_in_transformers_as_in_jaxscale(
    text_export):
  workdir, hf_dir, auto_ids, hf_text = text_export
  import tensorflow as tf  # noqa: PLC0415
  from jaxscale.data import tokenizers  # noqa: PLC0415  (TensorFlow's tokenizers)
  run_ids = tokenizers.make_tokenizer('byte').tokenize_document(tf.constant(TEXT.encode()))
  run_ids = run_ids.numpy().tolist()
  hf_config = json.loads((hf_dir / 'config.json').read_text())
  assert auto_ids == run_ids[:-1]  # The run appends its separator after the document: EOS.
  assert hf_config['eos_token_id'] == run_ids[-1] == 0 and hf_config['pad_token_id'] == 256
  assert 'bos_token_id' not in hf_config
  assert json.loads((hf_dir / 'generation_config.json').read_text())['eos_token_id'] == 0
  assert hf_config['max_position_embeddings'] == 32  # The run's dataset.seq_len.
  model, _ = restore.restore_model(workdir)
  new = sampling.generate(model, sampling.encode_bytes(PROMPT)[None], TEXT_NEW_TOKENS)[0]
  new = new.tolist()[:new.tolist().index(0)] if 0 in new.tolist() else new.tolist()
  assert hf_text == sampling.decode_bytes(new) and hf_text


def test_from_hf_takes_the_tokenizer_and_positions_that_came_with_the_weights(
    text_export, tmp_path):
  _, hf_dir, auto_ids, _ = text_export
  result = hf_convert.from_hf(hf_dir, tmp_path / 'w')
  config = json.loads((tmp_path / 'w' / 'config.json').read_text())
  copy = (tmp_path / 'w' / 'tokenizer').resolve()
  assert config['dataset']['tokenizer'] == result['tokenizer'] == f'hf:{copy}'
  assert (copy / 'tokenizer.json').read_bytes() == (hf_dir / 'tokenizer.json').read_bytes()
  positions = json.loads((hf_dir / 'config.json').read_text())['max_position_embeddings']
  assert config['export']['max_seq_len'] == positions == config['dataset']['seq_len'] == 32
  assert hf_tokenizer.load(copy).encode(TEXT) == auto_ids
  # Out again, the tokenizer goes with it.
  hf_convert.to_hf(tmp_path / 'w', tmp_path / 'again')
  assert ((tmp_path / 'again' / 'tokenizer.json').read_bytes() ==
          (hf_dir / 'tokenizer.json').read_bytes())
  again = json.loads((tmp_path / 'again' / 'config.json').read_text())
  assert again['eos_token_id'] == 0 and again['max_position_embeddings'] == positions


def test_weights_without_a_tokenizer_keep_the_one_the_config_names(text_export, hf_models):
  config = config_base.get_base_config()
  config.init_from.hf = str(hf_models['mha_tied'][0])  # No tokenizer files.
  assert hf.derive_config(config).dataset.tokenizer == 'none'  # Not the default 'byte'.
  config.dataset.tokenizer = f'hf:{text_export[1]}'
  assert hf.derive_config(config).dataset.tokenizer == f'hf:{text_export[1]}'
  config.init_from.hf = str(text_export[1])  # Weights with their own tokenizer: theirs.
  config.dataset.tokenizer = f'hf:{hf_models["mha_tied"][0]}'
  assert hf.derive_config(config).dataset.tokenizer == f'hf:{text_export[1].resolve()}'


# ---------------------------------------------------------------------------------------------
# Refusals: one line naming the key or the file; nothing written.

def _fake_run(tmp_path, **model):
  config = config_base.get_base_config()
  config.model.update(model)
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'config.json').write_text(json.dumps(config.to_dict()))
  return tmp_path / 'run'


@pytest.mark.parametrize('model, key', [
    ({'mlp_activation': 'gelu'}, 'config.model.mlp_activation'),
    ({'name': 'encoder'}, 'config.model.name'),
    ({'num_classes': 3}, 'config.model.num_classes'),
    ({'parametrization': 'mup', 'mup_base_width': 64}, 'config.model.parametrization'),
])
def test_export_refuses_what_llama_cannot_express(model, key, tmp_path, capsys):
  workdir = _fake_run(tmp_path, **model)
  with pytest.raises(SystemExit) as e:
    convert.main(['to-hf', '--workdir', str(workdir), '--out', str(tmp_path / 'out')])
  message = str(e.value)
  assert key in message and '\n' not in message
  assert not (tmp_path / 'out').exists()


def _edited_checkpoint(hf_models, tmp_path, **edits):
  hf_dir = tmp_path / 'edited'
  shutil.copytree(hf_models['mha_tied'][0], hf_dir)
  config = json.loads((hf_dir / 'config.json').read_text())
  config.update(edits)
  (hf_dir / 'config.json').write_text(json.dumps(config))
  return hf_dir


@pytest.mark.parametrize('edits, field', [
    ({'sliding_window': 4096}, 'sliding_window'),
    ({'rope_parameters': {'rope_type': 'llama3', 'rope_theta': 5e5, 'factor': 8.0}},
     'rope_parameters'),
    ({'rope_scaling': {'type': 'linear', 'factor': 2.0}}, 'rope_scaling'),
    ({'attention_bias': True}, 'attention_bias'),
    ({'mlp_bias': True}, 'mlp_bias'),
    ({'num_local_experts': 8}, 'num_local_experts'),
    ({'architectures': ['GPT2LMHeadModel']}, 'architectures'),
    ({'head_dim': 16}, 'head_dim'),
    ({'hidden_size': 64, 'head_dim': 16}, 'has shape'),  # Tensors that disagree with the config.
])
def test_import_refuses_unsupported_or_mismatched_checkpoints(edits, field, hf_models, tmp_path):
  hf_dir = _edited_checkpoint(hf_models, tmp_path, **edits)
  with pytest.raises(SystemExit) as e:
    convert.main(['from-hf', '--hf', str(hf_dir), '--out', str(tmp_path / 'w')])
  assert field in str(e.value) and '\n' not in str(e.value)
  assert not (tmp_path / 'w').exists()


def test_import_names_a_missing_file_or_a_tensor_of_the_wrong_dtype(hf_models, tmp_path):
  hf_dir = _edited_checkpoint(hf_models, tmp_path)
  weights = load_file(hf_dir / 'model.safetensors')
  (hf_dir / 'model.safetensors').unlink()
  with pytest.raises(hf.HFError, match='model.safetensors'):
    hf_convert.from_hf(hf_dir, tmp_path / 'w')
  weights['model.norm.weight'] = weights['model.norm.weight'].astype(np.int32)
  save_file(weights, hf_dir / 'model.safetensors')
  with pytest.raises(hf.HFError, match="'model.norm.weight' has dtype I32"):
    hf_convert.from_hf(hf_dir, tmp_path / 'w')
  (hf_dir / 'config.json').unlink()
  with pytest.raises(hf.HFError, match='config.json not found'):
    hf_convert.from_hf(hf_dir, tmp_path / 'w')
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('overrides, key', [
    ({'model.name': 'encoder'}, 'config.model.name'),
    ({'model.parametrization': 'mup'}, 'config.model.parametrization'),
    ({'init_from.workdir': '/somewhere'}, 'config.init_from.workdir'),
    ({'dataset.seq_len': 128}, r'seq_len=128 .+ max_position_embeddings=64'),
])
def test_a_run_refuses_settings_the_import_cannot_honour(overrides, key, hf_models, tmp_path):
  from jaxscale.train import loop  # noqa: PLC0415
  config = config_base.set_existing_keys(config_base.get_base_config(), {
      'init_from.hf': str(hf_models['mha_tied'][0]), **overrides})
  with pytest.raises(hf.HFError, match=key):
    loop.run(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()
