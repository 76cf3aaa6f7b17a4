"""Immutable attribute maps for IR nodes (operator attributes, function attributes)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator


def freeze(value: Any) -> Any:
    """Turn lists into tuples and dicts into Attrs, recursively, so attributes hash."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return Attrs(value)
    return value


class Attrs(Mapping):
    """A hashable, immutable mapping from attribute name to value; keeps insertion order."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None, **kwargs: Any):
        merged = dict(items or {})
        merged.update(kwargs)
        object.__setattr__(self, "_items", tuple((k, freeze(v)) for k, v in merged.items()))

    def __getitem__(self, key: str) -> Any:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Attrs):
            return dict(self._items) == dict(other._items)
        if isinstance(other, Mapping):
            return dict(self._items) == dict(other)
        return NotImplemented

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("Attrs is immutable; use .replace(**changes)")

    def replace(self, **changes: Any) -> "Attrs":
        merged = dict(self._items)
        merged.update(changes)
        return Attrs(merged)

    def __repr__(self) -> str:
        return "Attrs(" + ", ".join(f"{k}={v!r}" for k, v in self._items) + ")"
