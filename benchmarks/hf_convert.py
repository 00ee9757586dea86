"""Hugging Face conversion of a synthetic Llama in both directions: seconds and peak RSS against
the checkpoint's bytes (the goal: peak RSS <= 1.3x the checkpoint).

  python benchmarks/hf_convert.py --size 1B [--dir /tmp/hf_bench]

Writes a random fp32 LlamaForCausalLM checkpoint (`--size`: 1B is TinyLlama-1.1B's shape, with
grouped-query attention), then runs `from-hf` (checkpoint -> jaxscale workdir) and `to-hf`
(workdir -> checkpoint) each in a fresh process, which reports its own peak RSS
(`ru_maxrss`) and the RSS it had before converting (imports: JAX, TensorFlow, Orbax). Prints
one JSON object.
"""

import argparse
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
SIZES = {  # LlamaConfig fields.
    '1B': dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4),
    '0.5B': dict(vocab_size=32000, hidden_size=1536, intermediate_size=4096,
                 num_hidden_layers=16, num_attention_heads=24, num_key_value_heads=4),
    'tiny': dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
}


def _rss_bytes() -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) * 1024
  return 0


def write_checkpoint(hf_dir: pathlib.Path, size: str) -> int:
  """A random checkpoint of `size`; returns its weight bytes."""
  import numpy as np  # noqa: PLC0415
  from jaxscale.checkpoint import hf  # noqa: PLC0415
  fields = SIZES[size]
  d, f, v = fields['hidden_size'], fields['intermediate_size'], fields['vocab_size']
  kv = d // fields['num_attention_heads'] * fields['num_key_value_heads']
  shapes = {'model.embed_tokens.weight': (v, d), 'model.norm.weight': (d,), 'lm_head.weight': (v, d)}
  for i in range(fields['num_hidden_layers']):
    p = f'model.layers.{i}.'
    shapes.update({p + 'input_layernorm.weight': (d,), p + 'post_attention_layernorm.weight': (d,),
                   p + 'self_attn.q_proj.weight': (d, d), p + 'self_attn.k_proj.weight': (kv, d),
                   p + 'self_attn.v_proj.weight': (kv, d), p + 'self_attn.o_proj.weight': (d, d),
                   p + 'mlp.gate_proj.weight': (f, d), p + 'mlp.up_proj.weight': (f, d),
                   p + 'mlp.down_proj.weight': (d, f)})
  rng = np.random.default_rng(0)
  tensors = [(name, shape, lambda shape=shape: rng.standard_normal(shape, np.float32) * 0.02)
             for name, shape in shapes.items()]
  hf_dir.mkdir(parents=True)
  hf.write_safetensors(hf_dir, tensors, dtype='float32', max_shard_size=5 * 2**30)
  config = {'architectures': ['LlamaForCausalLM'], 'model_type': 'llama', 'hidden_act': 'silu',
            'max_position_embeddings': 2048, 'rms_norm_eps': 1e-5, 'rope_theta': 10000.0,
            'tie_word_embeddings': False, 'torch_dtype': 'float32', **fields}
  (hf_dir / 'config.json').write_text(json.dumps(config))
  return sum(p.stat().st_size for p in hf_dir.glob('*.safetensors'))


def convert_in_this_process(direction: str, source: str, out: str):
  """Child: one conversion; prints its seconds and RSS."""
  from jaxscale.checkpoint import hf_convert  # noqa: PLC0415
  before = _rss_bytes()
  start = time.perf_counter()
  if direction == 'from-hf':
    hf_convert.from_hf(source, out)
  else:
    hf_convert.to_hf(source, out)
  seconds = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  print(json.dumps({'seconds': round(seconds, 2), 'peak_rss_bytes': peak,
                    'rss_before_bytes': before}))


def _child(direction: str, source, out) -> dict:
  env = {**os.environ, 'PYTHONPATH': str(ROOT), 'JAX_PLATFORMS': 'cpu',
         'TF_CPP_MIN_LOG_LEVEL': '3'}
  result = subprocess.run(
      [sys.executable, __file__, '--child', direction, str(source), str(out)],
      capture_output=True, text=True, env=env, check=False)
  if result.returncode:
    raise SystemExit(f'{direction} failed:\n{result.stderr[-3000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--size', choices=list(SIZES), default='1B')
  parser.add_argument('--dir', default='', help='Scratch directory (default: a temporary one).')
  parser.add_argument('--child', nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    convert_in_this_process(*args.child)
    return
  scratch = pathlib.Path(args.dir or tempfile.mkdtemp(prefix='hf_convert_'))
  try:
    checkpoint_bytes = write_checkpoint(scratch / 'hf', args.size)
    rows = {'from_hf': _child('from-hf', scratch / 'hf', scratch / 'workdir'),
            'to_hf': _child('to-hf', scratch / 'workdir', scratch / 'hf_again')}
  finally:
    if not args.dir:
      shutil.rmtree(scratch, ignore_errors=True)
  for row in rows.values():
    row['peak_rss_over_checkpoint'] = round(row['peak_rss_bytes'] / checkpoint_bytes, 3)
    # What the conversion itself added, over the process's imports.
    row['added_rss_over_checkpoint'] = round(
        (row['peak_rss_bytes'] - row['rss_before_bytes']) / checkpoint_bytes, 3)
  print(json.dumps({'benchmark': 'hf_convert', 'size': args.size,
                    'checkpoint_bytes': checkpoint_bytes, **rows}))


if __name__ == '__main__':
  sys.path.insert(0, str(ROOT))
  main()
