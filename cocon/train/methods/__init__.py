"""The training methods, by name (the way solo-learn keeps one method per file over a shared base)."""

from __future__ import annotations

from cocon.train.methods.base import Method
from cocon.train.methods.cocon import CoCon
from cocon.train.methods.cpc import CPC
from cocon.train.methods.finetune import Finetune

METHODS: dict[str, type[Method]] = {m.name: m for m in (CPC, CoCon, Finetune)}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown training method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "CPC", "CoCon", "Finetune", "get_method"]
