"""Finetune the masked-LM encoder of configs/bert_pretrain.py to tell which standard-library
package a 256-byte snippet of source comes from (16 classes, embedded, offline).

  python -m jaxscale.main --config configs/bert_pretrain.py --workdir workdirs/bert_pretrain
  python -m jaxscale.main --config configs/bert_finetune.py --workdir workdirs/bert_finetune

Every encoder parameter is loaded from the pretrain run; the classifier head is new (reinit), so
`init_report.json` accounts for all of them. Train from scratch for comparison with
`--config.init_from.workdir=''`; use a fraction of the labels with
`--config.dataset.train_fraction=0.1`. `configs/bert_lora.py` trains low-rank adapters instead.
"""

import pathlib

from jaxscale.config import config_base


def get_config():
  c = config_base.load_config_file(pathlib.Path(__file__).with_name('bert_pretrain.py'))
  base = config_base.get_base_config()
  c.num_train_steps = 300
  c.log_every_steps = 25
  c.eval_every_steps = 100
  c.num_eval_batches = 15             # 480 slots: the whole validation split (461 snippets).

  c.objective = base.objective        # The dataset's: classification.
  c.mlm = base.mlm

  c.dataset.name = 'stdlib_packages'  # seq_len 128: CLS + the snippet's first 127 bytes.

  c.init_from.workdir = 'workdirs/bert_pretrain'
  c.init_from.reinit = ('^head',)     # The classifier is new; everything else must load.

  c.model.num_classes = 0             # 0: from the dataset (16).
  c.model.pooling = 'cls'

  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 30
  c.optimizer.b2 = base.optimizer.b2
  c.optimizer.lr_multipliers = (('^head', 10.0),)  # The fresh head learns faster.
  return c
