"""TFDS builder of standard-library source snippets, labelled by the package they come from.

A text-classification task built from the running interpreter (nothing is downloaded): each
example is a `SNIPPET_BYTES`-byte window of a `*.py` file under one of `CLASSES`, 16 packages
present in CPython 3.11 to 3.13, and its label is that package.

Split by file, so no file has snippets in two splits (snippets of one file share names and
style, and would leak across). Within each package the files are ordered by a stable hash of
their relative path; the first ~10% are test, the next ~10% validation and the rest train, at
least one file each: a plain hash threshold would leave the small packages (html and logging have
3 files) with no held-out file at all.

Kept small so it builds in seconds: windows are non-overlapping, those with under
`MIN_NON_SPACE_BYTES` non-whitespace bytes are skipped, and each package keeps about
`SNIPPETS_PER_CLASS` snippets over all its files (ceil(SNIPPETS_PER_CLASS / files) per file,
evenly spaced through the file), so big packages do not swamp small ones. About 3,000 snippets.
Like `python_stdlib`, the builder config is named after the interpreter (e.g. `cpython_3_11_7`).
"""

import math
import pathlib
import sys

import numpy as np
import tensorflow_datasets as tfds

from jaxscale.data import builders
from jaxscale.data.builders import python_stdlib

# Packages (directories of the stdlib) with at least 3 files in CPython 3.11, 3.12 and 3.13.
# Left out: lib2to3 and distutils (removed), tkinter and idlelib (often packaged separately).
CLASSES = (
    'asyncio', 'concurrent', 'ctypes', 'email', 'encodings', 'html', 'http', 'importlib', 'json',
    'logging', 'multiprocessing', 're', 'unittest', 'urllib', 'wsgiref', 'xml')
SNIPPET_BYTES = 256
MIN_NON_SPACE_BYTES = 32
SNIPPETS_PER_CLASS = 192
HELD_OUT_FRACTION = 0.1  # Of each package's files, for test and again for validation.
SPLITS = ('train', 'validation', 'test')


def package_files(root: pathlib.Path) -> dict[str, list[str]]:
  """Each class's relative `*.py` paths that have a snippet, sorted.

  Files without one (e.g. an `__init__.py` that is only a comment) are left out before the
  split, so that every split of every package gets a file that has snippets.
  """
  files = {name: [] for name in CLASSES}
  for path in python_stdlib.source_files(root):
    relative = path.relative_to(root)
    if len(relative.parts) > 1 and relative.parts[0] in files and snippets(path.read_bytes(), 1):
      files[relative.parts[0]].append(relative.as_posix())
  return files


def split_files(relative_paths: list[str]) -> dict[str, list[str]]:
  """One package's files by split, sorted; every split gets at least one (needs 3 files)."""
  if len(relative_paths) < len(SPLITS):
    raise ValueError(f'{len(relative_paths)} files cannot fill the {len(SPLITS)} splits: '
                     f'{relative_paths}')
  by_hash = sorted(relative_paths, key=python_stdlib.path_hash)
  num_held_out = max(1, round(len(by_hash) * HELD_OUT_FRACTION))
  return {'test': sorted(by_hash[:num_held_out]),
          'validation': sorted(by_hash[num_held_out:2 * num_held_out]),
          'train': sorted(by_hash[2 * num_held_out:])}


def snippets(text: bytes, max_snippets: int) -> list[tuple[int, bytes]]:
  """(byte offset, window) of up to max_snippets non-empty windows, evenly spaced in the file."""
  windows = [(offset, text[offset:offset + SNIPPET_BYTES])
             for offset in range(0, len(text), SNIPPET_BYTES)]
  windows = [(offset, window) for offset, window in windows
             if len(window.translate(None, b' \t\r\n\f\v')) >= MIN_NON_SPACE_BYTES]
  if len(windows) <= max_snippets:
    return windows
  keep = np.unique(np.round(np.linspace(0, len(windows) - 1, max_snippets)).astype(int))
  return [windows[index] for index in keep]


class StdlibPackages(builders.CodePathFromSourceFile, tfds.core.GeneratorBasedBuilder):
  """Snippets of standard-library source labelled by their package; split by file."""

  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name=python_stdlib.interpreter_config_name(),
          description=f'Standard library of {sys.implementation.name} {sys.version}.'),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            f'{SNIPPET_BYTES}-byte snippets of the standard-library source of the running '
            f'interpreter, labelled by which of {len(CLASSES)} packages they come from; split '
            'by file.'),
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),  # The snippet's bytes (may cut a UTF-8 character).
            'label': tfds.features.ClassLabel(names=CLASSES),
            'path': tfds.features.Text(),  # The file, relative to the stdlib root.
            'offset': np.int64,            # The snippet's first byte in the file.
        }),
        supervised_keys=('text', 'label'),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Read from the local interpreter, nothing to download.
    root = python_stdlib.stdlib_root()
    split_paths = {split: [] for split in SPLITS}  # (path, label, snippets per file)
    for label, paths in package_files(root).items():
      per_file = math.ceil(SNIPPETS_PER_CLASS / len(paths))
      for split, split_paths_of_class in split_files(paths).items():
        split_paths[split] += [(path, label, per_file) for path in split_paths_of_class]
    self.info.metadata['python_version'] = sys.version
    self.info.metadata['stdlib_root'] = str(root)
    self.info.metadata['num_files'] = {split: len(paths) for split, paths in split_paths.items()}
    return {split: self._generate_examples(root, paths) for split, paths in split_paths.items()}

  def _generate_examples(self, root: pathlib.Path, paths: list[tuple[str, str, int]]):
    for relative_path, label, per_file in paths:
      for offset, window in snippets((root / relative_path).read_bytes(), per_file):
        yield f'{relative_path}@{offset}', {
            'text': window, 'label': label, 'path': relative_path, 'offset': offset}
