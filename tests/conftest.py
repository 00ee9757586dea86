"""Test-wide setup: 8 simulated CPU devices, set before JAX is imported anywhere."""

import os

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Keep TensorFlow (tf.data only) off the accelerator and from grabbing all host threads.
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
# One persistent XLA compilation cache for the whole run (and the trainer subprocesses tests
# start): the suite compiles the same tiny steps many times.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.pytest_cache', 'jax_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')


# Runs several test modules start from: trained once per session (per worker under xdist). Tests
# only read their workdirs.
import pytest  # noqa: E402  (after the environment above, before JAX is imported)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A TFDS data dir for the session: each dataset is prepared in it once."""
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='session')
def tiny_lm_run(data_dir, tmp_path_factory):
  """(workdir, summary) of a 2-layer LM on the markov source (vocabulary 32), 10 steps with one
  checkpoint at 10."""
  from jaxscale.train import loop  # noqa: PLC0415  (JAX after the environment above)
  from tests.helpers import short_markov_config  # noqa: PLC0415
  workdir = tmp_path_factory.mktemp('tiny_lm')
  return workdir, loop.run(short_markov_config(data_dir), str(workdir))


@pytest.fixture(scope='session')
def digits_mlp_run(data_dir, tmp_path_factory):
  """(workdir, summary) of configs/mlp_digits.py's MLP at hidden width 64, 150 steps, evaluated
  and saved at the end."""
  from jaxscale.train import loop  # noqa: PLC0415
  from tests.helpers import digits_mlp_config  # noqa: PLC0415
  workdir = tmp_path_factory.mktemp('mlp_digits')
  return workdir, loop.run(digits_mlp_config(data_dir), str(workdir))


@pytest.fixture(scope='session')
def stdlib_bpe(data_dir, tmp_path_factory):
  """The tokenizer configs/lm_pretrain.py and configs/lm_finetune.py read, as their docstring
  trains it: a 4,096-id byte-level BPE learned from python_stdlib's train split."""
  from jaxscale.data import train_tokenizer  # noqa: PLC0415
  return train_tokenizer.train_on_dataset('python_stdlib', 4096,
                                          tmp_path_factory.mktemp('stdlib_bpe'), str(data_dir))
