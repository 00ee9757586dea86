"""Paths given on the command line, made independent of the directory they were typed in."""

from etils import epath


def resolve(path) -> str:
  """An absolute local path (`~` expanded); gs:// and other URIs are returned as they are.

  The sweep tools write paths into files (command.sh, emitted configs) and hand them to trainer
  subprocesses, which must find the same files wherever they run.
  """
  path = str(path)
  if '://' in path:
    return path
  return str(epath.Path(path).expanduser().resolve())
