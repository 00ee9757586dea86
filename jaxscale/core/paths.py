"""Paths the user gives (`--workdir`, data dirs, other runs' workdirs): resolved once, where they
enter, so a relative path means the same directory wherever it is used later.

Orbax (TensorStore) needs absolute local paths, and a background save thread or a subprocess may
not share the caller's idea of "here". URIs (`gs://…`, `s3://…`) are left as they are.
"""

import os

from etils import epath


def is_uri(path) -> bool:
  return '://' in os.fspath(path)


def resolve(path) -> epath.Path:
  """`path` as an absolute local path (`~` expanded), or the URI unchanged."""
  if is_uri(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def resolve_str(path) -> str:
  """`resolve` as a string: for argparse types and for paths written into files or commands."""
  return os.fspath(resolve(path))


def resolve_optional(path: str) -> str | None:
  """For config strings where '' means "the library's default": None, or the resolved path."""
  return os.fspath(resolve(path)) if path else None
