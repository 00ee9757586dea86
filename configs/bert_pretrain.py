"""A small BERT-style encoder pretrained by masked-LM on the Python standard library's bytes
(embedded, offline): ~5 minutes on 2 CPU cores.

  python -m jaxscale.main --config configs/bert_pretrain.py --workdir workdirs/bert_pretrain

Then finetune it on classification with configs/bert_finetune.py. The vocabulary is the 256
bytes plus the pad, CLS and mask ids (jaxscale.data.special_tokens), shared with the
classification datasets, so the embedding table transfers as it is.
"""

import pathlib

from jaxscale.config import config_base
from jaxscale.data import special_tokens


def get_config():
  # The model of configs/default.py as a bidirectional encoder.
  c = config_base.load_config_file(pathlib.Path(__file__).with_name('default.py'))
  c.update(num_train_steps=600, batch_size=32, eval_every_steps=200, checkpoint_every_steps=300,
           num_eval_batches=4)

  c.objective = 'mlm'                 # BERT's 15% of tokens, 80/10/10 mask/random/kept.
  c.mlm.mask_rate = 0.15
  c.mlm.base_vocab_size = special_tokens.NUM_BYTES

  c.dataset.seq_len = 128

  c.model.name = 'encoder'            # Bidirectional attention, the transformer's blocks.
  c.model.vocab_size = special_tokens.BYTE_VOCAB_WITH_SPECIALS

  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 60
  c.optimizer.weight_decay = 0.01
  c.optimizer.b2 = 0.98
  return c
