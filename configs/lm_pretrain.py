"""A small decoder LM on the Python standard library, tokenized by a byte-level BPE learned from
its train split: the text task's pretraining in benchmarks/transfer.py, ~14 minutes on 2 CPU
cores. Needs the tokenizers package (`pip install -e '.[hf]'`).

  python -m jaxscale.data.train_tokenizer --dataset=python_stdlib --vocab_size=4096 --out=workdirs/stdlib_bpe
  python -m jaxscale.main --config configs/lm_pretrain.py --workdir workdirs/lm_pretrain

The model of configs/default.py on 128-token sequences. Its vocabulary is the tokenizer's 4,096
ids, then the pad, CLS and mask ids of jaxscale.data.special_tokens, so configs/lm_finetune.py
(same tokenizer) loads every weight but the new classifier head. Next-token prediction
supervises every position (masked-LM only 15%), and BPE tokens (about 3.7 bytes each on this
corpus) make the model learn which identifiers go together, which tells the standard library's
packages apart, at a fraction of the steps bytes need (docs/transfer.md).
"""

import pathlib

from jaxscale.config import config_base
from jaxscale.data import special_tokens

TOKENIZER_DIR = 'workdirs/stdlib_bpe'
TOKENIZER_VOCAB_SIZE = 4096


def get_config():
  c = config_base.load_config_file(pathlib.Path(__file__).with_name('default.py'))
  c.update(num_train_steps=1800, batch_size=32, eval_every_steps=600, checkpoint_every_steps=1800,
           keep_checkpoints=1, num_eval_batches=4)
  c.dataset.seq_len = 128
  c.dataset.tokenizer = f'hf:{TOKENIZER_DIR}'
  c.model.vocab_size = special_tokens.after(TOKENIZER_VOCAB_SIZE).vocab_size
  return c
