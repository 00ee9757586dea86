"""Tokens per second of a dataset's train iterator, to check the input side keeps up.

  python -m jaxscale.data.throughput --name=python_stdlib --seq_len=256 --batch_size=32
"""

import time

from absl import app
from absl import flags

from jaxscale.config.config_base import get_base_config
from jaxscale.data import get_datasets

_NAME = flags.DEFINE_string('name', 'python_stdlib', 'Dataset registry name.')
_BUILDER_CONFIG = flags.DEFINE_string('builder_config', '', 'TFDS builder config.')
_DATA_DIR = flags.DEFINE_string('data_dir', '', "TFDS data dir ('' = TFDS default).")
_SEQ_LEN = flags.DEFINE_integer('seq_len', 256, 'Tokens per sequence.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Sequences per batch.')
_NUM_BATCHES = flags.DEFINE_integer('num_batches', 2000, 'Batches timed after the first.')
_TOKENIZER = flags.DEFINE_string('tokenizer', 'byte', "'byte' | 'sentencepiece'")
_SPM_MODEL_PATH = flags.DEFINE_string('spm_model_path', '', 'SentencePiece model file.')
_LOADER = flags.DEFINE_enum('loader', 'grain', ['grain', 'tfdata'], 'config.dataset.loader')


def main(argv):
  del argv
  config = get_base_config().dataset
  config.update(name=_NAME.value, builder_config=_BUILDER_CONFIG.value, data_dir=_DATA_DIR.value,
                seq_len=_SEQ_LEN.value, tokenizer=_TOKENIZER.value,
                spm_model_path=_SPM_MODEL_PATH.value, loader=_LOADER.value)
  start = time.perf_counter()
  datasets = get_datasets(config, local_batch_size=_BATCH_SIZE.value, num_eval_batches=1, seed=0)
  iterator = datasets.train.as_numpy_iterator()
  next(iterator)  # Fills the shuffle buffers; not steady-state work.
  ready = time.perf_counter()
  for _ in range(_NUM_BATCHES.value):
    next(iterator)
  seconds = time.perf_counter() - ready
  tokens = _NUM_BATCHES.value * _BATCH_SIZE.value * _SEQ_LEN.value
  print(f'{_NAME.value} ({_LOADER.value}): ready in {ready - start:.2f} s (build on first use, '
        'load, first batch); '
        f'{tokens / seconds:,.0f} tokens/s over {_NUM_BATCHES.value} batches of '
        f'{_BATCH_SIZE.value}x{_SEQ_LEN.value}.')


if __name__ == '__main__':
  app.run(main)
