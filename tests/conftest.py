"""Test-wide setup: 8 simulated CPU devices, set before JAX is imported anywhere."""

import os

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Keep TensorFlow (tf.data only) off the accelerator and from grabbing all host threads.
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
