"""LoRA finetuning of the masked-LM encoder of configs/bert_pretrain.py on stdlib_packages:
rank-8 adapters on every attention and MLP weight plus the new classifier head train; the base
stays frozen and out of the checkpoints (a few hundred KB instead of the whole model).

  python -m jaxscale.main --config configs/bert_pretrain.py --workdir workdirs/bert_pretrain
  python -m jaxscale.main --config configs/bert_lora.py --workdir workdirs/bert_lora

`jaxscale.checkpoint.restore.restore_model('workdirs/bert_lora')` gives the model with the adapters
merged into its weights.
"""

import pathlib

from jaxscale.config import config_base


def get_config():
  c = config_base.load_config_file(pathlib.Path(__file__).with_name('bert_finetune.py'))
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.lora.targets = ('qkv', 'out_HxKxD', 'mlp_in', 'mlp_out')
  c.lora.dropout = 0.0
  c.optimizer.learning_rate = 1e-3    # Adapters start at zero and need a larger step.
  c.optimizer.lr_multipliers = ()
  return c
