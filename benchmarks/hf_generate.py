"""Greedy generation tokens/s: jaxscale (jitted, KV cache) against transformers' `generate` on
the same Llama weights and prompts, at batch 1 and 16, in one run (the goal: >= 1x on CPU).

  python benchmarks/hf_generate.py [--size small] [--new_tokens 256] [--batches 1,16]

A random LlamaForCausalLM (`--size`) is saved with `save_pretrained` and imported with
`jaxscale.checkpoint.hf_convert.from_hf`; both generate `--new_tokens` tokens after the same
random prompts, each timed after one warm-up call (jaxscale's compiles). Prints one JSON object:
tokens/s of each, their ratio, and whether the tokens agree.
"""

# transformers' Llama (PyTorch's compiler stack) must be imported before TensorFlow, which
# jaxscale's checkpoints import: the other order crashes the process.
import torch  # noqa: I001
import transformers  # noqa: F401
import transformers.models.llama.modeling_llama  # noqa: F401

import argparse
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from jaxscale.checkpoint import hf_convert, restore  # noqa: E402
from jaxscale.inference import sampling  # noqa: E402

SIZES = {  # LlamaConfig fields.
    'small': dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=2),
    'tiny': dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
}
PROMPT_LEN = 16


def _timed(fn):
  fn()  # Warm-up: compiles (jaxscale) or fills caches (PyTorch).
  start = time.perf_counter()
  out = fn()
  return np.asarray(out), time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--size', choices=list(SIZES), default='small')
  parser.add_argument('--new_tokens', type=int, default=256)
  parser.add_argument('--batches', default='1,16')
  args = parser.parse_args()
  torch.manual_seed(0)
  config = transformers.LlamaConfig(**SIZES[args.size], max_position_embeddings=2048,
                                    bos_token_id=None, eos_token_id=None)
  hf_model = transformers.LlamaForCausalLM(config).eval()
  with tempfile.TemporaryDirectory() as scratch:
    hf_model.save_pretrained(f'{scratch}/hf')
    hf_convert.from_hf(f'{scratch}/hf', f'{scratch}/workdir')
    model, _ = restore.restore_model(f'{scratch}/workdir')
  hf_model.generation_config.eos_token_id = None
  rows = []
  for batch in (int(b) for b in args.batches.split(',')):
    prompts = np.random.RandomState(batch).randint(0, config.vocab_size, (batch, PROMPT_LEN))
    ours, ours_s = _timed(lambda: sampling.generate(model, prompts, args.new_tokens))

    def theirs_fn():
      with torch.no_grad():
        tokens = torch.tensor(prompts)
        out = hf_model.generate(tokens, attention_mask=torch.ones_like(tokens), do_sample=False,
                                max_new_tokens=args.new_tokens, pad_token_id=0)
      return out[:, PROMPT_LEN:].numpy()

    theirs, theirs_s = _timed(theirs_fn)
    new = batch * args.new_tokens
    rows.append({'batch': batch, 'new_tokens': args.new_tokens,
                 'jaxscale_tokens_per_s': round(new / ours_s, 1),
                 'transformers_tokens_per_s': round(new / theirs_s, 1),
                 'speedup': round(theirs_s / ours_s, 3),
                 'tokens_equal_fraction': float(np.mean(ours == theirs))})
  print(json.dumps({'benchmark': 'hf_generate', 'size': args.size,
                    'torch_threads': torch.get_num_threads(), 'rows': rows}))


if __name__ == '__main__':
  main()
