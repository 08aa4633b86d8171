"""A config section (a dict) → a frozen dataclass, with unknown keys refused by name: the one rule the model
sections (`empatheia.speech`, `empatheia.face`, …) share.

    cfg = from_section(SpeechConfig, config.empatheia.speech, "empatheia.speech")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def from_section(cls: type[T], d: Mapping[str, Any] | None, section: str, **convert) -> T:
    """`cls(**d)`; a key `cls` lacks is a ValueError naming `section` and the keys it takes. `convert`: per-field
    functions applied first (e.g. `channels=tuple`)."""
    d = dict(d or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{section}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    for key, fn in convert.items():
        if key in d:
            d[key] = fn(d[key])
    return cls(**d)


__all__ = ["from_section"]
