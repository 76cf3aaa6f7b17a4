"""`I`: module-level script names (`@I.ir_module`, `I.Range`, `I.module_attrs`,
`I.module_global_infos`). The parser reads these from the source; the functions
here only make a decorated class body run as plain Python."""
from __future__ import annotations

from typing import Any


def ir_module(cls: type) -> Any:
    """Class decorator: parse the class's source into an IRModule."""
    from .parser import from_source
    return from_source(cls)


def Range(start: int, stop: int | None = None) -> range:  # noqa: N802 - script spelling
    """`I.Range(0, 2)`: device ids 0..1 of a device mesh."""
    return range(start) if stop is None else range(start, stop)


def module_attrs(attrs: dict) -> None:
    """`I.module_attrs({...})` inside an `@I.ir_module` class body (read by the parser)."""


def module_global_infos(infos: dict) -> None:
    """`I.module_global_infos({"mesh": [R.device_mesh(...)]})` (read by the parser)."""
