"""Generation speed with and without the KV cache, as JSON lines.

  python benchmarks/generation.py [--config configs/default.py] [--prompt_len 64]
      [--new_tokens 512] [--batch 1] [--repeats 3]

The config's model with random weights (speed does not depend on them). For each mode
(`kv_cache` true and false) it times `sampling.generate` (greedy, compiled, median of
`--repeats`) for 1 new token and for `--new_tokens`: the first is the prefill (the prompt's pass
and one pick), the difference is the decode. Prints one row per mode with prefill and decode
tokens/s, then a row with the cached/uncached decode ratio.
"""

import json
import statistics
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from jaxscale.inference import sampling
from jaxscale.models import build

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/default.py', 'Model config file.')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 64, 'Prompt tokens per row.')
_NEW_TOKENS = flags.DEFINE_integer('new_tokens', 512, 'Tokens generated per row.')
_BATCH = flags.DEFINE_integer('batch', 1, 'Prompts generated together.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs after compilation (median reported).')


def _seconds(model, prompts, max_new_tokens: int, kv_cache: bool) -> float:
  run = lambda: sampling.generate(model, prompts, max_new_tokens, kv_cache=kv_cache)
  run()  # Compiles.
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    run()  # Returns numpy: the device work is done.
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  del argv
  config = _CONFIG.value
  if not config.model.get('vocab_size'):
    config.model.vocab_size = 256  # The byte tokenizer's, as the default data resolves it.
  model = build.build_model(config.model, config.seed)
  graphdef_state = nnx.split(model)
  batch, prompt_len, new_tokens = _BATCH.value, _PROMPT_LEN.value, _NEW_TOKENS.value
  prompts = np.random.default_rng(0).integers(0, config.model.vocab_size, (batch, prompt_len),
                                              dtype=np.int32)
  decode_rate = {}
  for kv_cache in (True, False):
    prefill_s = _seconds(graphdef_state, prompts, 1, kv_cache)
    total_s = _seconds(graphdef_state, prompts, new_tokens, kv_cache)
    decode_rate[kv_cache] = batch * (new_tokens - 1) / max(total_s - prefill_s, 1e-9)
    print(json.dumps({
        'kv_cache': kv_cache, 'batch': batch, 'prompt_len': prompt_len,
        'new_tokens': new_tokens, 'prefill_tokens_per_sec': batch * prompt_len / prefill_s,
        'decode_tokens_per_sec': decode_rate[kv_cache], 'total_seconds': total_s,
        'device': jax.devices()[0].device_kind}), flush=True)
  print(json.dumps({'decode_speedup_with_cache': decode_rate[True] / decode_rate[False]}))


if __name__ == '__main__':
  app.run(main)
