"""A small byte-level decoder LM on the Python standard library, the text task's pretraining in
benchmarks/transfer.py: ~5 minutes on 2 CPU cores.

  python -m jaxscale.main --config configs/lm_pretrain.py --workdir workdirs/lm_pretrain

The model of configs/default.py on 128-byte sequences, with the classification datasets' byte
vocabulary (the 256 bytes, then the pad, CLS and mask ids of jaxscale.data.special_tokens), so
configs/lm_finetune.py loads every weight but the new classifier head. Next-byte prediction
supervises every position (masked-LM only 15%), so in the same compute its features tell the
standard library's packages apart better than those of configs/bert_pretrain.py.
"""

import pathlib

from jaxscale.config import config_base
from jaxscale.data import special_tokens


def get_config():
  c = config_base.load_config_file(pathlib.Path(__file__).with_name('default.py'))
  c.update(num_train_steps=600, batch_size=32, eval_every_steps=300, checkpoint_every_steps=600,
           keep_checkpoints=1, num_eval_batches=4)
  c.dataset.seq_len = 128
  c.model.vocab_size = special_tokens.BYTE_VOCAB_WITH_SPECIALS
  return c
