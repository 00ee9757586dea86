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
