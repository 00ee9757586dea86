"""Local TFDS builders of the embedded datasets (built from data on the machine or generated)."""

import inspect

from etils import epath
import tensorflow_datasets as tfds


class CodePathFromSourceFile:
  """Mixin for a builder: its code path is simply the file that defines it.

  TFDS 4.9.10 computes `code_path` through the `importlib_resources` backport, which it declares
  only for Python < 3.9 but imports on every version; without that package `download_and_prepare`
  fails. The path of the defining file is what TFDS would compute, and all it needs it for is to
  look for a `checksums.tsv` beside it (there is none: nothing is downloaded).
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))
