"""The declared config schema: every key a run may set, with its default.

Experiment files in `configs/` start from `get_base_config()` and override values; they cannot add
keys (the config is locked), so a misspelled key fails at once with the allowed names.
`train.checks.validate` checks values against this schema before anything compiles.
"""

from collections.abc import Mapping
import importlib.util
import os

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                          # Seeds parameter init and data shuffling.
  c.num_train_steps = 1000            # Optimizer updates in the whole run.
  c.batch_size = 32                   # Global batch (sequences per step, all processes).
  c.log_every_steps = 50              # Train metrics to writers and progress line.
  c.eval_every_steps = 250            # Held-out loss on the fixed eval set (also at the end).
  c.num_eval_batches = 8              # Size of the fixed eval set, in global batches.
  c.checkpoint_every_steps = 500      # Orbax save interval (also at the end).
  c.keep_checkpoints = 3              # Orbax keeps the newest N.
  c.async_checkpointing = True        # Save in a background thread while training goes on.
  c.allow_config_change = False       # Resume in a workdir whose config.json differs.
  c.label_smoothing = 0.0             # Classification: train-loss label smoothing (eval loss is plain).
  c.profile_steps = 0                 # >0: write a profiler trace of this many steps after step 10.
  # A non-finite train loss or gradient norm: 'stop' raises naming the step (nothing of that
  # state is saved); 'skip' drops that update inside the step (params and optimizer state are
  # kept, the step counter advances) and trains on.
  c.nonfinite_policy = 'stop'         # 'stop' | 'skip'
  c.max_skipped_steps = 10            # 'skip': stop once more than this many updates were dropped.
  # Estimated bytes per device (params + optimizer state + activations) against device memory,
  # checked before compiling: 'error' refuses a config that cannot fit, 'warn' only logs.
  c.memory_check = 'error'            # 'error' | 'warn' | 'off'
  c.deterministic = False             # GPU: --xla_gpu_deterministic_ops, for bit-exact resumes (slower).

  # What the step optimises (jaxscale.objectives): '' = the dataset's task ('lm' for token
  # streams, 'classification' for labelled examples); 'mlm' = masked-LM on a token stream.
  c.objective = ''

  # Start from another run's parameters (finetuning). Resuming from this run's own checkpoint
  # always wins once it has one. Parameter names are dotted paths ('blocks.0.qkv_DxTxHxK');
  # patterns are regexes matched anywhere in the name.
  c.mlm = ml_collections.ConfigDict()  # objective='mlm' (BERT's 80/10/10 corruption).
  c.mlm.mask_rate = 0.15              # Fraction of real tokens chosen for prediction.
  # Ids below this are ordinary tokens (256: bytes); the pad, CLS and mask ids follow them
  # (jaxscale.data.special_tokens), so model.vocab_size must be at least this + 3.
  c.mlm.base_vocab_size = 256
  # The document separator inside the base vocabulary (byte tokenizer: 0; SentencePiece: its EOS
  # id): like the specials, never chosen and never drawn as a random replacement.
  c.mlm.separator_id = 0

  c.init_from = ml_collections.ConfigDict()
  c.init_from.workdir = ''            # The source run's workdir (local or gs://); '' = fresh init.
  c.init_from.step = -1               # Its checkpoint step; -1 = the newest.
  c.init_from.load = ()               # Parameters to take from it; () = all the new model shares.
  c.init_from.reinit = ()             # Parameters to initialise fresh on purpose (e.g. '^head').
  # A parameter neither loaded nor in reinit (absent from the source, or another shape):
  # 'error' names them all; 'init' initialises them fresh.
  c.init_from.missing = 'error'       # 'error' | 'init'
  # Or a Llama-family Hugging Face checkpoint (a directory with config.json and safetensors,
  # jaxscale.checkpoint.hf): the model config is derived from it, every weight read into its
  # sharding. Not with init_from.workdir. It also sets dataset.tokenizer ('hf:DIR' when
  # tokenizer files came with the weights, else 'none') and export.max_seq_len.
  c.init_from.hf = ''

  # LoRA: train a low-rank update of the chosen weights only (jaxscale.models.lora); the base
  # is frozen and left out of checkpoints. Usually with init_from a pretrained run.
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 0                     # 0 = off.
  c.lora.alpha = 16.0                 # The update is scaled by alpha / rank.
  c.lora.targets = ('q', 'k', 'v', 'o')  # 'q', 'k', 'v', 'o', 'mlp_in', 'mlp_out', or regexes of
                                      # weights (attention by default); one adapter a projection.
  c.lora.dropout = 0.0                # Dropout on the adapters' input features.

  # Quantization-aware training (jaxscale.compress.quantize): Qwix fake-quantizes the weights
  # (per channel) and activations of every matmul and convolution in the forward pass and passes
  # gradients straight through; parameters and checkpoints stay float. Eval runs quantized too.
  c.quantization = ml_collections.ConfigDict()
  c.quantization.mode = 'none'        # 'none' | 'qat'
  c.quantization.weight_dtype = 'int8'  # 'int8' | 'int4'
  c.quantization.act_dtype = 'int8'   # 'int8' | '' (float activations: weight-only)

  # Knowledge distillation (Hinton et al. 2015; jaxscale.compress.distill): a finished run of
  # any registered model teaches this one. Its forward runs inside the same train step on the
  # same batch, never updated nor saved in this run's checkpoints; its FLOPs count in this run's.
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher_workdir = ''      # The teacher run's workdir (finished); '' = off.
  c.distill.temperature = 1.0         # Softmax temperature T of both models in the KD term.
  c.distill.alpha = 0.5               # loss = alpha * KL(teacher_T || student_T) * T^2
                                      #        + (1 - alpha) * hard-label loss.
  c.distill.top_k = 0                 # >0: the KD term on the teacher's top-k classes or tokens
                                      # only, both distributions renormalised over them; 0 = all.

  # Magnitude pruning inside the optimizer (jaxscale.compress.pruning): masks live in the
  # optimizer state (checkpointed), pruned weights are exactly zero in the parameters.
  c.pruning = ml_collections.ConfigDict()
  c.pruning.sparsity = 0.0            # Final fraction of zeros in the prunable weights; 0 = off.
  c.pruning.method = 'magnitude'      # 'magnitude' (unstructured) | 'nm' (n of every m weights
                                      # along the input dimension kept; sparsity must be 1 - n/m).
  c.pruning.n = 2                     # 'nm': weights kept per group...
  c.pruning.m = 4                     # ...of this many consecutive input weights (2:4).
  c.pruning.scope = 'layer'           # 'layer': each weight (each layer of a scanned stack) to the
                                      # target; 'global': one magnitude threshold over all of them.
  # Gradual schedule (Zhu & Gupta 2017): s_t = s_f (1 - (1 - (t - start) / (end - start))^3),
  # masks recomputed every `update_every` steps from start_step to end_step, then kept.
  c.pruning.start_step = 0
  c.pruning.end_step = 0              # Must be set (>= 1, >= start_step) when sparsity > 0.
  c.pruning.update_every = 100
  # Regexes of parameters never pruned (besides every vector and scalar): embeddings, norms,
  # biases, ViT's position embedding and class token.
  c.pruning.exclude = ('embed', 'norm', 'bias', '^pos', '^cls')

  c.model = ml_collections.ConfigDict()
  c.model.name = 'transformer'        # Registry name: 'transformer' (causal LM), 'encoder' (bidirectional).
  c.model.vocab_size = 0              # 0: take it from the dataset.
  c.model.num_layers = 4
  c.model.d_model = 256
  c.model.num_heads = 4
  c.model.mlp_dim = 1024
  c.model.mlp_activation = 'swiglu'   # 'swiglu' | 'gelu'
  c.model.tie_embeddings = True
  c.model.rope_theta = 10_000.0
  c.model.num_kv_heads = 0            # Key/value heads (grouped-query attention; 1 = multi-query);
                                      # must divide num_heads; 0 = num_heads.
  c.model.norm_eps = 1e-6             # Every RMSNorm's epsilon.
  c.model.dtype = 'float32'           # Compute dtype: 'float32' | 'bfloat16'. Params stay fp32.
  c.model.scan_layers = False         # One compiled layer body scanned over depth (fast compiles).
  c.model.remat_policy = 'none'       # 'none' | 'full' | 'dots_saveable' | 'dots_with_no_batch_dims_saveable'
  c.model.attention_impl = 'einsum'   # 'einsum' | 'xla' | 'cudnn' (see jaxscale/models/attention.py)
  # >0: a classifier, logits [B, num_classes] from one pooled position; 0: logits [B, L, vocab]
  # (next-token for 'transformer', per-position for masked-LM with 'encoder').
  c.model.num_classes = 0
  # Which position a classifier reads: 'cls' (position 0) | 'mean' (over real tokens) |
  # 'last' (last real token); '' = 'last' for 'transformer', 'cls' for 'encoder'.
  c.model.pooling = ''
  # 'sp' (standard) | 'mup' (μP, jaxscale.models.mup; transformer, encoder and ViT): init,
  # attention and readout scaled so the learning rate tuned at mup_base_width holds at any width;
  # each hidden matrix's Adam updates are scaled by its base fan-in / fan-in.
  c.model.parametrization = 'sp'
  c.model.mup_base_width = 0          # 'mup': the width the hyperparameters were tuned at.
  c.model.mup_base_mlp_dim = 0        # 'mup': the MLP width there; 0 = it grows with the width.
  # Factor on the initial weights (every parameter with 2+ axes: embeddings and matrices; norm
  # gains and biases keep theirs), on top of the parametrization's init. A multi run varies it.
  c.model.init_scale = 1.0

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'python_stdlib'    # Registry name in jaxscale.data.
  c.dataset.builder_config = ''       # TFDS builder config ('' = the builder's default).
  c.dataset.data_dir = ''             # TFDS data dir ('' = TFDS default, ~/tensorflow_datasets).
  c.dataset.seq_len = 256             # Tokens per training sequence.
  c.dataset.shuffle_buffer_size = 1024  # Examples in the shuffle buffer (packed sequences, images).
  # Train pipeline of language-modelling and image datasets: 'grain' reads examples by index (a
  # new permutation of the documents/images each epoch; the checkpointed data state is a few
  # integers; needs the train split in array_record; images: any shuffle_buffer_size > 1 turns
  # the shuffle on, text: packed windows are mixed in groups of shuffle_buffer_size), 'tfdata'
  # shuffles in buffers (its checkpoints store them). Text classification always uses tf.data.
  c.dataset.loader = 'grain'
  # Text datasets: 'byte' | 'sentencepiece' | 'hf:DIR' (a Hugging Face tokenizer directory, its
  # tokenizer.json, e.g. a checkpoint's) | 'none' (imported weights that came without tokenizer
  # files: token ids only). See jaxscale.data.hf_tokenizer.
  c.dataset.tokenizer = 'byte'
  c.dataset.spm_model_path = ''       # SentencePiece model file when tokenizer='sentencepiece'.
  # Classification: train on this fraction of the train labels (e.g. 0.01, 0.1), a stratified
  # subset (at least one example per class) fixed by the fraction, not by the seed, so runs of
  # different seeds see the same labels. Eval is unaffected; language modelling ignores it.
  c.dataset.train_fraction = 1.0
  # Classification: keep only the examples whose label is one of these (train and eval), relabelled
  # 0..k-1 in the order given, so num_classes is k; e.g. pretrain on digits (0, 1, 2, 3, 4) and
  # finetune on (5, 6, 7, 8, 9). () = every class. train_fraction then applies to what is kept.
  c.dataset.classes = ()
  # The split eval scores (and search objectives are measured on): '' = the dataset's validation
  # split; digits, cifar10 and cifar100 have none and hold out a stratified, fixed tenth of train
  # as 'validation' (never trained on). 'test' scores the test split: only for a final number,
  # never to choose hyperparameters. The run's config.json records the split used.
  c.dataset.eval_split = ''
  # Vision datasets. Eval preprocessing is fixed (resize/center crop to image_size); these shape
  # the training stream only.
  c.dataset.image_size = 32           # Side of the square images the model sees.
  c.dataset.crop = 'none'             # 'none' | 'pad_and_crop' (CIFAR) | 'random_resized_crop' (ImageNet)
  c.dataset.crop_padding = 4          # pad_and_crop: pixels of padding on each side.
  c.dataset.flip = False              # Random horizontal flips.
  c.dataset.randaugment_layers = 0    # RandAugment ops per image; 0 disables it.
  c.dataset.randaugment_magnitude = 10
  c.dataset.mixup_alpha = 0.0         # Beta(a, a) mixing of image pairs and labels; 0 disables it.
  c.dataset.cutmix_alpha = 0.0        # Beta(a, a) box pasting between image pairs; 0 disables it.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adamw'          # 'adamw' | 'sgd' | 'lion' | 'adafactor'
  c.optimizer.learning_rate = 3e-3    # Peak learning rate.
  c.optimizer.schedule = 'cosine'     # 'cosine' | 'wsd' | 'constant'
  c.optimizer.warmup_steps = 100
  c.optimizer.decay_fraction = 0.2    # WSD: last fraction of steps spent decaying.
  c.optimizer.min_lr_ratio = 0.1      # Final LR as a fraction of the peak (cosine and WSD).
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.momentum = 0.9          # SGD only.
  c.optimizer.nesterov = False        # SGD only: Nesterov momentum.
  c.optimizer.weight_decay = 0.1      # Decoupled; never applied to norms, biases or scalars.
  c.optimizer.grad_clip_norm = 1.0    # Global-norm clipping; 0 disables it.
  c.optimizer.grad_accum_steps = 1    # Micro-batches summed per update (batch_size is per update).
  # Parameter groups (regexes on dotted parameter names, see init_from above).
  c.optimizer.frozen = ()             # No update and no optimizer state (e.g. the backbone).
  c.optimizer.trainable = ()          # Exceptions to `frozen` (e.g. a new head under LoRA).
  c.optimizer.lr_multipliers = ()     # ((regex, factor), ...): e.g. (('^head', 10.0),).
  c.optimizer.layer_decay = 1.0       # Layer-wise LR decay: block i of L gets decay**(L - i).

  # Token models: the longest sequence the model takes after training (exported `forward.bin`
  # accepts any length up to it; an imported checkpoint's max_position_embeddings); 0 = the
  # training dataset.seq_len.
  c.export = ml_collections.ConfigDict()
  c.export.max_seq_len = 0

  # Downstream lm-eval tasks during training (byte-tokenizer LMs, installed by `python -m
  # jaxscale.main`): rows 'eval/<task>/<metric>' in metrics.jsonl and TensorBoard.
  c.lm_eval = ml_collections.ConfigDict()
  c.lm_eval.tasks = ()                # lm-eval task names, e.g. ('jaxscale_stdlib_next_line',).
  c.lm_eval.every_steps = 0           # 0: at the end of training only.
  c.lm_eval.limit = 0                 # Examples per task (0: all of them).
  c.lm_eval.batch_size = 16           # Rows per forward pass.
  c.lm_eval.include_path = ''         # A folder of your own task YAMLs.

  # Trackers beside TensorBoard and metrics.jsonl (always written).
  c.metrics = ml_collections.ConfigDict()
  c.metrics.wandb_project = ''        # Weights & Biases project ('' = no W&B).
  c.metrics.wandb_entity = ''         # W&B team or user ('' = your default).
  c.metrics.wandb_mode = 'online'     # 'online' | 'offline' (files under WORKDIR/wandb, no network).

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                    # Data-parallel axis; -1 = all devices left over.
  c.mesh.fsdp = 1                     # Parameter (and optimizer state) sharding axis.
  c.mesh.tensor = 1                   # Tensor (Megatron-style) parallel axis.
  # Logical axis name -> mesh axes. Parameters and activations carry logical names only.
  c.mesh.rules = (
      ('batch', ('data', 'fsdp')),
      ('vocab', 'tensor'),
      ('embed', 'fsdp'),
      ('mlp', 'tensor'),
      ('heads', 'tensor'),
      ('kv_heads', 'tensor'),       # Grouped-query attention's key/value heads (and KV cache).
      ('kv', None),
      ('layers', None),
      ('seq', None),
      ('conv_in', None),            # Convolution kernels' input channels.
      ('conv_out', 'fsdp'),         # Their output channels (and a ResNet head's input).
      ('classes', None),            # Classifier heads' outputs (class counts rarely divide evenly).
      ('act_embed', None),          # Activations' model dimension: whole on each device, so FSDP
                                    # gathers weights, never activations.
  )
  # Pin activations (residual stream, attention, MLP hidden, logits) to their logical axes in the
  # compiled steps, rather than leaving their layout to XLA's propagation from the parameters.
  c.mesh.constrain_activations = True
  return c


def max_seq_len(config) -> int:
  """The longest sequence a run's token model takes: `export.max_seq_len`, else the training
  `dataset.seq_len` (runs recorded before the key existed have only that)."""
  return config.get('export', {}).get('max_seq_len', 0) or config.dataset.seq_len


def flatten(config, prefix: str = 'config') -> dict[str, object]:
  """{'config.model.d_model': 256, ...} for a ConfigDict or a nested dict (e.g. config.json)."""
  flat = {}
  for key, value in config.items():
    path = f'{prefix}.{key}'
    if isinstance(value, (Mapping, ml_collections.ConfigDict)):
      flat.update(flatten(value, path))
    else:
      flat[path] = value
  return flat


class MissingConfigKey(KeyError):
  """A dotted key the config does not have: a KeyError that no bug raising KeyError is taken for."""


def set_existing_keys(config, values: dict, *, name: str = 'config') -> ml_collections.ConfigDict:
  """Sets each dotted key of `values` ('model.d_model': 64) in `config`, as --config.key=value
  does from Python values; returns `config`. A key the config lacks raises MissingConfigKey
  naming it (never added silently)."""
  for key, value in values.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      if parent not in node:
        raise MissingConfigKey(f'{name}: no config key {key!r}')
      node = node[parent]
    if leaf not in node:
      raise MissingConfigKey(f'{name}: no config key {key!r}')
    node[leaf] = value
  return config


def load_config_file(path) -> ml_collections.ConfigDict:
  """`get_config()` of a Python config file (a `file.py:arg` suffix passes `arg`). Config files
  use it to build on a sibling: `load_config_file(pathlib.Path(__file__).with_name('x.py'))`."""
  path, _, argument = str(path).partition(':')
  if not os.path.exists(path):
    raise FileNotFoundError(f'Config file {path} does not exist.')
  spec = importlib.util.spec_from_file_location(f'_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()
