"""What the input pipeline's position costs: bytes of the checkpoint's data item and the
training loop's peak host memory, for the tf.data loader (shuffle buffers) and the Grain loader
(index-based), as JSON.

  python benchmarks/data_state.py --config configs/resnet50_imagenet.py
  # A language-modelling config trains on its own (embedded) data, with a tiny model:
  python benchmarks/data_state.py --config configs/default.py --shuffle_buffer_size 4096
  # Also the code before the Grain loader (tf.data train, eval cached decoded and listed):
  git worktree add /tmp/before <commit> && \
    python benchmarks/data_state.py --before_checkout=/tmp/before

Each loader trains the config in its own subprocess (so `ru_maxrss` is that loop's peak) on
ImageNet-shaped fake data: `tfds.testing.mock_data` with examples made natively by TensorFlow,
so the tf.data pipeline stays serialisable and its checkpoint holds the real shuffle buffer. The
config keeps its shuffle buffer and image size (16,384 and 224 px for ImageNet); the model, batch
and steps are shrunk so the run takes minutes on a few CPU cores. The fake images are random
pixels, JPEG-encoded: noise compresses worse than photographs, so their encoded size (reported)
differs from real ImageNet's (~110 KB on average); the buffer's bytes scale with it.
"""

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import ml_collections

_CONFIG = flags.DEFINE_string('config', 'configs/resnet50_imagenet.py', 'Image config file.')
_LOADERS = flags.DEFINE_list('loaders', ['tfdata', 'grain'], 'Loaders to measure.')
_STEPS = flags.DEFINE_integer('steps', 4, 'Train steps (a checkpoint every 2).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Global batch size.')
# tf.data repeats before it shuffles, so its buffer fills to its size from any number of images.
_TRAIN_EXAMPLES = flags.DEFINE_integer('train_examples', 2_000, 'Fake train images.')
_SOURCE_SIDE = flags.DEFINE_integer('source_side', 256, 'Side of the fake source images.')
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EVAL_EXAMPLES = flags.DEFINE_integer(
    'eval_examples', 1024, 'Fake eval images (the eval set: its cache shows in the peak RSS).')
_BEFORE_CHECKOUT = flags.DEFINE_string(
    'before_checkout', '', 'A checkout of the code before the Grain loader: adds its run.')
_SHUFFLE_BUFFER_SIZE = flags.DEFINE_integer(
    'shuffle_buffer_size', 0, "config.dataset.shuffle_buffer_size (0: the config's).")
_LOADER = flags.DEFINE_string('loader', '', 'Internal: measure this loader in this process.')
_WORKDIR = flags.DEFINE_string('workdir', '', 'Internal: the workdir of that run.')


def _fake_example(index, side: int):
  """ImageNet's features (encoded image, label) for one index, made by TensorFlow alone."""
  import tensorflow as tf  # noqa: PLC0415
  pixels = tf.random.stateless_uniform([side, side, 3], seed=tf.stack([index, 0]), maxval=256,
                                       dtype=tf.int32)
  return {'image': tf.io.encode_jpeg(tf.cast(pixels, tf.uint8)), 'label': index % 1000}


def _num_examples(split) -> int:
  return _TRAIN_EXAMPLES.value if str(split).startswith('train') else _EVAL_EXAMPLES.value


def _mocked():
  """mock_data with native fake examples: as_dataset (tf.data) and as_data_source (Grain)."""
  import tensorflow as tf  # noqa: PLC0415
  import tensorflow_datasets as tfds  # noqa: PLC0415
  side = _SOURCE_SIDE.value

  def as_dataset(self, split, *args, **kwargs):
    del self, args, kwargs
    indices = tf.data.Dataset.range(_num_examples(split))
    return indices.map(lambda i: _fake_example(i, side), num_parallel_calls=tf.data.AUTOTUNE)

  class Source:
    def __init__(self, split):
      self.length = _num_examples(split)

    def __len__(self):
      return self.length

    def __getitem__(self, index):
      return {k: v.numpy() for k, v in _fake_example(tf.constant(index, tf.int64), side).items()}

  def as_data_source(self, split, *args, **kwargs):
    del self, args, kwargs
    return Source(split)

  return tfds.testing.mock_data(as_dataset_fn=as_dataset, as_data_source_fn=as_data_source)


def _measure(loader: str, workdir: str) -> dict:
  """Trains the shrunk config with `loader` here; the data item's bytes and this peak RSS."""
  from jaxscale.config import config_base  # noqa: PLC0415
  from jaxscale.train import loop
  config = config_base.load_config_file(_CONFIG.value)
  steps = _STEPS.value
  config.update_from_flattened_dict({
      'batch_size': _BATCH_SIZE.value, 'num_train_steps': steps, 'checkpoint_every_steps': 2,
      'eval_every_steps': steps, 'log_every_steps': steps, 'optimizer.warmup_steps': 1,
      'num_eval_batches': -(-_EVAL_EXAMPLES.value // _BATCH_SIZE.value),
      'async_checkpointing': False})
  if 'loader' in config.dataset:  # (The code before it had the tf.data loader only.)
    config.dataset.loader = loader
  if _SHUFFLE_BUFFER_SIZE.value:
    config.dataset.shuffle_buffer_size = _SHUFFLE_BUFFER_SIZE.value
  is_text = config.model.name == 'transformer'  # Language modelling on the config's own data.
  if is_text:  # The model's size does not change the data item; keep the step short.
    config.update_from_flattened_dict({'model.num_layers': 1, 'model.d_model': 32,
                                       'model.num_heads': 2, 'model.mlp_dim': 64})
  else:
    config.model = ml_collections.ConfigDict({'name': 'mlp', 'num_classes': 0, 'image_size': 0,
                                              'hidden_dims': (16,), 'activation': 'relu'})
  start = time.perf_counter()
  with contextlib.nullcontext() if is_text else _mocked():
    summary = loop.run(config, workdir)
  seconds = time.perf_counter() - start
  checkpoints = os.path.join(workdir, 'checkpoints')
  step_dirs = sorted(int(s) for s in os.listdir(checkpoints) if s.isdigit())
  data_bytes = {step: _tree_bytes(os.path.join(checkpoints, str(step), 'data'))
                for step in step_dirs}
  return {'loader': loader, 'data_item_bytes_per_checkpoint': data_bytes,
          'peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
          'run_seconds': round(seconds, 1), 'eval_loss': summary['eval_loss'],
          'shuffle_buffer_size': config.dataset.shuffle_buffer_size,
          **({'seq_len': config.dataset.seq_len} if is_text else {
              'image_size': config.dataset.image_size,
              'mean_encoded_image_bytes': _mean_encoded_bytes()})}


def _mean_encoded_bytes(count: int = 32) -> float:
  import tensorflow as tf  # noqa: PLC0415
  return sum(len(_fake_example(tf.constant(i, tf.int64), _SOURCE_SIDE.value)['image'].numpy())
             for i in range(count)) / count


def _tree_bytes(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(directory) for name in names)


def main(argv):
  del argv
  if _LOADER.value:  # A child: measure one loader, print its row last.
    print(json.dumps(_measure(_LOADER.value, _WORKDIR.value)))
    return
  variants = [(loader, _ROOT) for loader in _LOADERS.value]
  if _BEFORE_CHECKOUT.value:
    variants.insert(0, ('tfdata', os.path.abspath(_BEFORE_CHECKOUT.value)))
  rows = []
  for loader, code in variants:
    with tempfile.TemporaryDirectory() as workdir:
      flags_passed = [f'--{name}={flags.FLAGS[name].serialize().split("=", 1)[1]}'
                      for name in ('config', 'steps', 'batch_size', 'train_examples',
                                   'source_side', 'eval_examples', 'shuffle_buffer_size')]
      result = subprocess.run(
          [sys.executable, __file__, *flags_passed, f'--loader={loader}',
           f'--workdir={os.path.join(workdir, "run")}'],
          capture_output=True, text=True, check=False,
          env={**os.environ, 'PYTHONPATH': os.pathsep.join(
              [code, *filter(None, [os.environ.get('PYTHONPATH')])])})
      if result.returncode:
        raise RuntimeError(f'The {loader} run ({code}) failed:\n{result.stderr[-4000:]}')
      rows.append({'code': 'after' if code == _ROOT else 'before',
                   **json.loads(result.stdout.strip().splitlines()[-1])})
  print(json.dumps({'config': _CONFIG.value, 'runs': rows}, indent=1))


if __name__ == '__main__':
  app.run(main)
