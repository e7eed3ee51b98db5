"""The attention registry: every module in this package registers its variants on import.

Contract (../DESIGN.md): `out = attn(q, k, v, key_padding_mask=None)` on already-projected heads,
q, k, v and out of shape (batch, heads, length, head_dim); key_padding_mask (batch, length) bool,
True at real tokens. Padded positions never change the outputs at real positions.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import ClassVar

from torch import nn

from lra.config import check_values
from lra.errors import LRAError
from lra.registry import Registry


class Attention(nn.Module):
    """Base of every variant: the call contract above, and what a variant declares about itself."""

    shared_qk: ClassVar[bool] = False  # keys are the queries (Reformer): the block projects q and v only
    linear_memory: ClassVar[bool] = False  # peak memory grows linearly with length (checked by the tests)

    def on_train_step(self) -> None:
        """Called after every optimizer step, outside any compiled region (e.g. to redraw features)."""


def check_config(ok: bool, key: str, problem: str) -> None:
    """Unless `ok`, fail with the one-line error `model.attention.<key>: <problem>`."""
    if not ok:
        raise LRAError(f"model.attention.{key}: {problem}")


ATTENTION: Registry[type[Attention]] = Registry("attention")
register_attention = ATTENTION.register


def build_attention(name: str, *, num_heads: int, head_dim: int, max_len: int, **overrides) -> Attention:
    """The variant registered as `name`, with its config defaults updated by `overrides`; LRAError
    naming `model.attention.<key>` where a value is outside its range (lra.config) or the variant refuses it."""
    module_cls, config_cls = ATTENTION.get(name)
    config = config_cls(**overrides)
    check_values(config_cls, vars(config), lambda key: f"model.attention.{key}")
    return module_cls(config, num_heads=num_heads, head_dim=head_dim, max_len=max_len)


def list_attention() -> list[str]:
    """Registered variant names, sorted."""
    return ATTENTION.names()


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
