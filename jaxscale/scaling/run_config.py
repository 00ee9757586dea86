"""Run configs as the trainer will see them: a config file plus `key=value` overrides.

The sweep planner needs a run's batch size, sequence length and model before launching it, so it
loads the same config file and applies the same overrides the trainer's command line will get
(`--config.key=value`, parsed by ml_collections).
"""

import ast
import importlib.util
import os

import ml_collections


def load_config_file(path) -> ml_collections.ConfigDict:
  """`get_config()` of a Python config file (a `file.py:arg` suffix passes `arg`)."""
  path, _, argument = str(path).partition(':')
  if not os.path.exists(path):
    raise FileNotFoundError(f'Config file {path} does not exist.')
  spec = importlib.util.spec_from_file_location(f'_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()


def apply_overrides(config, overrides) -> ml_collections.ConfigDict:
  """A copy of `config` with each 'a.b=value' set, typed like the value it replaces."""
  config = ml_collections.ConfigDict(config.to_dict())
  for override in overrides:
    key, sep, text = override.partition('=')
    if not sep:
      raise ValueError(f'Override {override!r} is not of the form key=value.')
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    if leaf not in node:
      raise KeyError(f'Override {override!r}: the config has no key {key!r}.')
    node[leaf] = _parse_like(text, node[leaf])
  return config


def get(config, dotted_key: str):
  node = config
  for part in dotted_key.split('.'):
    node = node[part]
  return node


def _parse_like(text: str, current):
  if isinstance(current, bool):
    if text not in ('True', 'False', 'true', 'false'):
      raise ValueError(f'Expected True or False, got {text!r}.')
    return text in ('True', 'true')
  if isinstance(current, str):
    return text
  if isinstance(current, int):
    value = float(text)  # Accepts 1e3 as well as 1000, but not 12.5.
    if value != int(value):
      raise ValueError(f'Expected an integer, got {text!r}.')
    return int(value)
  if isinstance(current, float):
    return float(text)
  return ast.literal_eval(text)
