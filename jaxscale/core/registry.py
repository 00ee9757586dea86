"""Name -> factory registries, so configs pick components by name.

An unknown name fails with the list of registered choices, e.g.
`Registry('model').get('vit')` -> "Unknown model 'vit'; choose one of: mlp, transformer".
An entry may carry its own config check beside its factory (`register(name, check=fn)`).
"""

from collections.abc import Callable
from typing import Any


class Registry:
  """A dict of factories keyed by name, filled by the `register` decorator."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, Callable[..., Any]] = {}
    self._checks: dict[str, Callable[..., None]] = {}

  def register(self, name: str, *, check: Callable[..., None] | None = None):
    def decorator(factory):
      if name in self._entries:
        raise ValueError(f'{self.kind} {name!r} is registered twice.')
      self._entries[name] = factory
      if check is not None:
        self._checks[name] = check
      return factory
    return decorator

  def get(self, name: str) -> Callable[..., Any]:
    if name not in self._entries:
      raise KeyError(
          f'Unknown {self.kind} {name!r}; choose one of: {", ".join(self.names())}')
    return self._entries[name]

  def check(self, name: str) -> Callable[..., None] | None:
    """The entry's own config check, if it registered one."""
    return self._checks.get(name)

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries
