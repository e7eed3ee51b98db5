"""Weight decay (optimizer.decay): on the weight matrices alone or on every parameter, decoupled from
the gradient and scaled by the scheduled learning rate, as flax's Adam in the LRA repository."""

from __future__ import annotations

import pytest
import torch
from omegaconf import DictConfig
from torch import nn

from lra.config import Decay
from lra.optim import build_optimizer, build_scheduler, lr_factor
from tests.conftest import compose_config

LR, WEIGHT_DECAY, WARMUP, MAX_STEPS = 0.1, 0.2, 4, 100
MATRICES = {"embed.weight", "dense.weight"}  # the parameters of ndim >= 2 of `tiny_model`


def tiny_model(dtype: torch.dtype = torch.float32) -> nn.Module:
    """One parameter of each kind: an embedding, a weight matrix and its bias, a norm's scale and
    shift; every value drawn away from zero, so that decay moves it."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"embed": nn.Embedding(5, 4), "norm": nn.LayerNorm(4), "dense": nn.Linear(4, 3)})
    for param in model.parameters():
        nn.init.uniform_(param, 0.5, 1.5)
    return model.to(dtype)


def optimizer_cfg(decay: str) -> DictConfig:
    """The real optimizer group with `decay`, and a warm-up, so the first steps' rates are fractions of lr."""
    return compose_config("experiment=smoke", f"optimizer.decay={decay}", f"optimizer.lr={LR}",
                          f"optimizer.weight_decay={WEIGHT_DECAY}", "optimizer.schedule=constant",
                          f"optimizer.warmup_steps={WARMUP}", "optimizer.beta2=0.98", "optimizer.eps=1e-9").optimizer


def test_matrices_is_the_default():
    assert compose_config().optimizer.decay is Decay.matrices


@pytest.mark.parametrize("decay", ["matrices", "all"])
def test_decay_shrinks_what_it_names_by_the_scheduled_rate_with_zero_gradients(decay: str):
    cfg = optimizer_cfg(decay)
    model = tiny_model()
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, MAX_STEPS)
    for step in range(2):
        factor = lr_factor(step, cfg, MAX_STEPS)
        assert factor == (step + 1) / WARMUP  # in the warm-up: the decay must follow the rate, not lr
        before = {name: param.detach().clone() for name, param in model.named_parameters()}
        for param in model.parameters():
            param.grad = torch.zeros_like(param)  # Adam's step is then exactly zero: what moves is decay
        optimizer.step()
        scheduler.step()
        for name, param in model.named_parameters():
            if decay == "all" or name in MATRICES:
                shrunk = before[name] * (1 - LR * factor * WEIGHT_DECAY)
                torch.testing.assert_close(param.detach(), shrunk, rtol=1e-6, atol=0, msg=name)
            else:
                assert torch.equal(param.detach(), before[name]), name


def flax_adam_step(param: torch.Tensor, grad: torch.Tensor, moments: tuple[torch.Tensor, torch.Tensor], step: int,
                   lr: float, cfg: DictConfig) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """flax.optim.Adam's update of one parameter (flax/optim/adam.py, apply_param_gradient), as the
    LRA repository's train.py files run it: `learning_rate` is the scheduled rate of this step."""
    grad_ema = cfg.beta1 * moments[0] + (1 - cfg.beta1) * grad
    grad_sq_ema = cfg.beta2 * moments[1] + (1 - cfg.beta2) * grad.square()
    t = step + 1
    grad_ema_corr = grad_ema / (1 - cfg.beta1 ** t)
    grad_sq_ema_corr = grad_sq_ema / (1 - cfg.beta2 ** t)
    new_param = param - lr * grad_ema_corr / (grad_sq_ema_corr.sqrt() + cfg.eps)
    new_param = new_param - lr * cfg.weight_decay * param
    return new_param, (grad_ema, grad_sq_ema)


@pytest.mark.parametrize("decay", ["matrices", "all"])
def test_decay_all_updates_as_flax_adam_with_weight_decay(decay: str):
    cfg = optimizer_cfg(decay)
    model = tiny_model(torch.float64)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, MAX_STEPS)
    flax = {name: (param.detach().clone(), (torch.zeros_like(param), torch.zeros_like(param)))
            for name, param in model.named_parameters()}
    gradients = torch.Generator().manual_seed(0)
    for step in range(3):
        lr = LR * lr_factor(step, cfg, MAX_STEPS)
        for name, param in model.named_parameters():
            param.grad = torch.randn(param.shape, generator=gradients, dtype=torch.float64)
            value, moments = flax[name]
            flax[name] = flax_adam_step(value, param.grad, moments, step, lr, cfg)
        optimizer.step()
        scheduler.step()
    same = {name: torch.allclose(param.detach(), flax[name][0], rtol=1e-12, atol=1e-12)
            for name, param in model.named_parameters()}
    # all: every parameter as flax moves it; matrices: the biases and norm parameters are not decayed
    assert same == {name: decay == "all" or name in MATRICES for name in same}
