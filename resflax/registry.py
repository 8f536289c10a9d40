"""Name -> implementation registries that turn config strings into pieces."""

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Maps config strings to implementations; a bad name lists the valid ones.

  Attributes:
    kind: what the registry holds, used in error messages (e.g.
      ``"model.shortcut"``).
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator registering ``obj`` under ``name``."""

    def deco(obj: T) -> T:
      if name in self._entries:
        raise ValueError(f"{self.kind}: {name!r} is registered twice")
      self._entries[name] = obj
      return obj

    return deco

  def get(self, name: str) -> T:
    """Returns the entry for ``name``.

    Raises:
      ValueError: naming the registry key and every valid name.
    """
    try:
      return self._entries[name]
    except (KeyError, TypeError):
      raise ValueError(
          f"{self.kind}={name!r} is not valid; choose one of "
          f"{', '.join(sorted(self._entries))}"
      ) from None

  def unregister(self, name: str) -> T:
    """Removes ``name`` (e.g. a test's temporary entry); returns its entry.

    Raises:
      ValueError: ``name`` is not registered, naming the valid names.
    """
    entry = self.get(name)
    del self._entries[name]
    return entry

  def names(self):
    return sorted(self._entries)

  def __contains__(self, name) -> bool:
    return name in self._entries
