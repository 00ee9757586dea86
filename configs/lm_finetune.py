"""Finetune the decoder LM of configs/lm_pretrain.py to tell which standard-library package a
snippet of source comes from (stdlib_packages: 16 classes, embedded, offline).

  python -m jaxscale.data.train_tokenizer --dataset=python_stdlib --vocab_size=4096 --out=workdirs/stdlib_bpe
  python -m jaxscale.main --config configs/lm_pretrain.py --workdir workdirs/lm_pretrain
  python -m jaxscale.main --config configs/lm_finetune.py --workdir workdirs/lm_finetune

The snippets are tokenized by the pretrain's BPE: 128 tokens hold CLS and the whole 256-byte
snippet (about 70 tokens). The classifier reads the mean of the causal model's features over the
snippet's tokens (CLS, which pretraining never saw, counts as one of them). Every other parameter
loads from the pretrain run; the head is new (reinit). From scratch with the same recipe:
`--config.init_from.workdir=''`; few labels: `--config.dataset.train_fraction=0.01`.
benchmarks/transfer.py compares them.
"""

import pathlib

from jaxscale.config import config_base


def get_config():
  c = config_base.load_config_file(pathlib.Path(__file__).with_name('lm_pretrain.py'))
  base = config_base.get_base_config()
  c.update(num_train_steps=150, batch_size=16, log_every_steps=25, eval_every_steps=150,
           checkpoint_every_steps=150, num_eval_batches=29)  # 29 x 16: all 461 validation snippets.

  c.dataset.name = 'stdlib_packages'  # The pretrain's tokenizer (dataset.tokenizer) and seq_len.

  c.init_from.workdir = 'workdirs/lm_pretrain'
  c.init_from.reinit = ('^head',)     # The classifier is new; everything else must load.

  c.model.num_classes = 0             # 0: from the dataset (16).
  c.model.pooling = 'mean'

  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 15
  c.optimizer.b2 = base.optimizer.b2
  c.optimizer.lr_multipliers = (('^head', 10.0),)  # The fresh head learns faster.
  return c
