"""Reversible residual layers (Gomez et al., 2017; the Reformer, Kitaev et al., 2020).

The activation is split in two streams; a layer maps (x1, x2) to

    y1 = x1 + F(x2)        F: the block's attention sub-layer
    y2 = x2 + G(y1)        G: the block's feed-forward sub-layer

and can be run backwards, x2 = y2 - G(y1), x1 = y1 - F(x2). So training keeps only the last
layer's outputs: the backward pass rebuilds each layer's inputs from its outputs and recomputes
F and G there to take their gradients, and memory no longer grows with depth. Each sub-layer is
recomputed with the random state (dropout, LSH's rotations) and autocast state of its forward,
so the gradients are those of the same function computed by ordinary autograd.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

SubLayer = Callable[[torch.Tensor], torch.Tensor]


class RandomState:
    """The CPU (and, for CUDA tensors, the device's) random state at a sub-layer's forward call,
    replayed when the backward pass recomputes it, without disturbing the random stream."""

    def __init__(self, x: torch.Tensor) -> None:
        self.device = x.device if x.is_cuda else None
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(self.device) if self.device is not None else None

    @contextmanager
    def replayed(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=[self.device] if self.device is not None else []):
            torch.set_rng_state(self.cpu)
            if self.device is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def couple(
    layer: nn.Module, x1: torch.Tensor, x2: torch.Tensor, mask: torch.Tensor | None,
    states: list[RandomState] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One reversible layer; `layer` has `attend(x, mask)` (F) and `feed_forward(x)` (G). With
    `states`, the random state at each sub-layer's call is appended to it (F's, then G's)."""
    if states is not None:
        states.append(RandomState(x2))
    y1 = x1 + layer.attend(x2, mask)
    if states is not None:
        states.append(RandomState(y1))
    return y1, x2 + layer.feed_forward(y1)


class ReversibleFunction(torch.autograd.Function):
    """The layers' forward without keeping activations; the backward rebuilds them layer by layer.

    The parameters are inputs of the function, so that autograd hands their gradients on as
    gradients of any other input (and distributed training sees them as usual).
    """

    @staticmethod
    def forward(ctx: Any, x1: torch.Tensor, x2: torch.Tensor, layers: Sequence[nn.Module],
                mask: torch.Tensor | None, *params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.layers, ctx.mask, ctx.params = layers, mask, params
        device = x1.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.states = []  # two per layer: F's, G's
        for layer in layers:
            x1, x2 = couple(layer, x1, x2, mask, ctx.states)
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(ctx: Any, dy1: torch.Tensor, dy2: torch.Tensor) -> tuple[Any, ...]:
        y1, y2 = ctx.saved_tensors
        params = ctx.params
        grads = [torch.zeros_like(p) for p in params]
        device, enabled, dtype = ctx.autocast
        states = iter(reversed(ctx.states))  # G's, then F's, from the last layer back
        for layer, feed_forward_state, attention_state in zip(reversed(ctx.layers), states, states):
            with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
                y1, g, dy1_more = recompute(layer.feed_forward, y1, dy2, feed_forward_state, params, grads)
                x2 = y2 - g
                dx1 = dy1 + dy1_more
                attend = partial(layer.attend, key_padding_mask=ctx.mask)
                x2, f, dx2_more = recompute(attend, x2, dx1, attention_state, params, grads)
                x1 = y1 - f
            y1, y2, dy1, dy2 = x1, x2, dx1, dy2 + dx2_more
        return (dy1, dy2, None, None, *grads)


def recompute(sublayer: SubLayer, x: torch.Tensor, grad_out: torch.Tensor, state: RandomState,
              params: tuple[torch.Tensor, ...], grads: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Recompute sublayer(x) in the random state of its forward; add the gradients of
    <grad_out, sublayer(x)> to `grads` (by parameter) and return x, sublayer(x) (detached) and the
    gradient with respect to x."""
    x = x.detach().requires_grad_()
    with state.replayed():
        out = sublayer(x)
    found = torch.autograd.grad(out, (x, *params), grad_out, allow_unused=True)
    for total, grad in zip(grads, found[1:]):
        if grad is not None:
            total += grad
    return x.detach(), out.detach(), found[0]


def reversible(layers: Sequence[nn.Module], x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The layers run reversibly on two copies of `x`; their mean out."""
    params = tuple(dict.fromkeys(p for layer in layers for p in layer.parameters() if p.requires_grad))
    x1, x2 = ReversibleFunction.apply(x, x, layers, mask, *params)
    return (x1 + x2) / 2
