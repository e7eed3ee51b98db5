"""Name -> implementation registries whose entries also register their config schema with Hydra.

A variant is registered once, together with its config dataclass; the dataclass's default `name`
is its registry name, and the dataclass is stored in Hydra's ConfigStore as `schema/<kind>/<name>`
so that its YAML (`defaults: [/schema/<kind>/<name>@...]`) is type-checked at start-up.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Generic, TypeVar

from hydra.core.config_store import ConfigStore

from lra.errors import LRAError

T = TypeVar("T")


class Registry(Generic[T]):
    """Registered implementations of one kind (attention variants, tasks)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[T, type]] = {}

    def register(self, config_cls: type) -> Callable[[T], T]:
        """Decorator: register the decorated object under `config_cls.name`."""
        name = config_cls.name
        if not dataclasses.is_dataclass(config_cls) or not isinstance(name, str):
            raise TypeError(f"{config_cls!r} must be a dataclass with a default `name`")

        def add(impl: T) -> T:
            if name in self._entries:
                raise TypeError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = (impl, config_cls)
            ConfigStore.instance().store(group=f"schema/{self.kind}", name=name, node=config_cls)
            return impl

        return add

    def get(self, name: str) -> tuple[T, type]:
        """The implementation and config dataclass registered under `name`."""
        if name not in self._entries:
            raise LRAError(f"unknown {self.kind} '{name}'; registered: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)


def config_fields(config: Any) -> dict[str, Any]:
    """A config dataclass instance as keyword arguments, without its registry `name`."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "name"}
