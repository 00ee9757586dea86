"""TFDS builder of the running interpreter's standard-library source files, as raw bytes.

The corpus depends on the interpreter, so the builder config is named after its implementation
and exact version (e.g. `cpython_3_11_7`); another interpreter builds its own config beside it.
Files are split into train and validation by a stable hash of their relative path (~5%
validation), so the split never changes between builds.
"""

import hashlib
import pathlib
import sys
import sysconfig

import tensorflow_datasets as tfds

from jaxscale.data import builders

VALIDATION_PERCENT = 5
_IMPLEMENTATION = sys.implementation.name
_VERSION = '.'.join(map(str, sys.version_info[:3]))


def interpreter_config_name() -> str:
  return f'{_IMPLEMENTATION}_{_VERSION.replace(".", "_")}'


def stdlib_root() -> pathlib.Path:
  return pathlib.Path(sysconfig.get_paths()['stdlib'])


def source_files(root: pathlib.Path) -> list[pathlib.Path]:
  """Every `*.py` under root, sorted; third-party packages are not the standard library."""
  return sorted(path for path in root.rglob('*.py')
                if not {'site-packages', 'dist-packages'} & set(path.relative_to(root).parts))


def path_hash(relative_path: str) -> int:
  """A stable 64-bit hash of a path (Python's own hash() changes between runs)."""
  digest = hashlib.sha256(relative_path.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'little')


def is_validation(relative_path: str) -> bool:
  return path_hash(relative_path) % 100 < VALIDATION_PERCENT


class PythonStdlib(builders.CodePathFromSourceFile, tfds.core.GeneratorBasedBuilder):
  """Source files (*.py) of the standard library of the running Python interpreter."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'One example per *.py file; path and text.',
      '1.1.0': 'Metadata: num_bytes of each split.',
  }
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name=interpreter_config_name(),
          description=f'Standard library of {_IMPLEMENTATION} {_VERSION} ({sys.version}).'),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            f'The *.py files of the {_IMPLEMENTATION} {_VERSION} standard library '
            '(site-packages excluded), one example per file, text as raw bytes.'),
        features=tfds.features.FeaturesDict({
            'path': tfds.features.Text(),  # Relative to the stdlib root.
            'text': tfds.features.Text(),  # The file's bytes, as stored (a few are not UTF-8).
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Read from the local interpreter, nothing to download.
    root = stdlib_root()
    relative_paths = [path.relative_to(root).as_posix() for path in source_files(root)]
    split_paths = {
        'train': [path for path in relative_paths if not is_validation(path)],
        'validation': [path for path in relative_paths if is_validation(path)],
    }
    self.info.metadata['python_version'] = sys.version
    self.info.metadata['stdlib_root'] = str(root)
    self.info.metadata['num_bytes'] = {
        split: sum((root / path).stat().st_size for path in paths)
        for split, paths in split_paths.items()}
    return {split: self._generate_examples(root, paths) for split, paths in split_paths.items()}

  def _generate_examples(self, root: pathlib.Path, relative_paths: list[str]):
    for relative_path in relative_paths:
      yield relative_path, {'path': relative_path, 'text': (root / relative_path).read_bytes()}
