"""Loads a task's JSONL shipped beside its YAML (lm-eval calls this through `custom_dataset`), so
the offline tasks read no hub and resolve their data wherever the package lives."""

import json
import pathlib


def load(data_files: str, split: str = 'test', **metadata):
  del metadata  # lm-eval passes the task's metadata (version, model args) too.
  import datasets  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(__file__).parent / data_files
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})
