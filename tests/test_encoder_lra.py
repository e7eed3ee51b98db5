"""The encoder keys that build the LRA repository's Transformer: qkv_dim, init, attention_bias,
norm_eps, padding_mask, pool_padding and dual_head, each against what it must compute."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lra.errors import LRAError
from models.encoder import TRUNCATED_STD, Classifier, check_model_config
from tests.conftest import compose_config
from tests.test_encoder import MAX_LEN, assert_padding_invariant

VOCAB, CLASSES = 256, 10


def build(*overrides: str, seed: int = 0, towers: int = 1, max_len: int = 64, classes: int = CLASSES) -> Classifier:
    cfg = compose_config("model.num_layers=2", "model.dim=32", "model.num_heads=4", "model.mlp_dim=64", *overrides)
    torch.manual_seed(seed)
    return Classifier(cfg.model, vocab_size=VOCAB, num_classes=classes, max_len=max_len, towers=towers).eval()


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def attention_calls(model: Classifier) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(q, key_padding_mask) of every call of the first block's attention, appended as they happen."""
    calls = []
    model.encoder.blocks[0].attn.register_forward_hook(
        lambda module, args, kwargs, out: calls.append((args[0], kwargs.get("key_padding_mask"))), with_kwargs=True
    )
    return calls


def encoded(model: Classifier, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The final norm's output (batch, length, dim) of the encoder on `tokens`."""
    hidden = {}
    handle = model.encoder.norm.register_forward_hook(lambda module, args, out: hidden.setdefault("x", out))
    with torch.no_grad():
        model.encoder(tokens, mask)
    handle.remove()
    return hidden["x"]


def image_batch(seed: int) -> torch.Tensor:
    """Pixels of 0..255 with about a third black (id 0); row 0 starts with a black pixel, row 1 does not."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCAB, (3, 48), generator=gen)
    tokens[torch.rand(tokens.shape, generator=gen) < 0.35] = 0
    tokens[0, 0], tokens[1, 0] = 0, 7
    return tokens


# --- qkv_dim ----------------------------------------------------------------------------------


def test_qkv_dim_is_the_width_of_queries_keys_values_and_heads():
    model = build("model.qkv_dim=16")
    block = model.encoder.blocks[0]
    assert block.qkv.weight.shape == (3 * 16, 32) and block.qkv.bias.shape == (3 * 16,)
    assert block.proj.weight.shape == (32, 16)
    calls = attention_calls(model)
    tokens = torch.randint(1, VOCAB, (2, 10))
    assert model(tokens, None).shape == (2, CLASSES)
    assert calls[0][0].shape == (2, 4, 11, 16 // 4)  # (batch, heads, CLS + tokens, qkv_dim / heads)
    assert build("model.qkv_dim=16", "model=lsh").encoder.blocks[0].qkv.weight.shape == (2 * 16, 32)
    # the default attends at model.dim
    assert build().encoder.blocks[0].qkv.weight.shape == (3 * 32, 32)
    # the heads split qkv_dim, not dim: a width the heads do not divide is fine when qkv_dim is set
    assert build("model.dim=30", "model.qkv_dim=16")(tokens, None).shape == (2, CLASSES)


@pytest.mark.parametrize("name", ["full", "local", "linformer", "performer"])
def test_every_attention_runs_at_qkv_dim_and_padding_never_matters(name):
    cfg = compose_config("model.num_layers=2", "model.dim=32", "model.num_heads=4", "model.mlp_dim=64",
                         f"model={name}", "model.qkv_dim=48", "model.pooling=mean")
    torch.manual_seed(0)
    model = Classifier(cfg.model, vocab_size=20, num_classes=CLASSES, max_len=MAX_LEN).eval()
    calls = attention_calls(model)
    assert_padding_invariant(model)
    q = calls[0][0]
    assert q.shape[1] == 4 and q.shape[3] == 48 // 4  # heads of qkv_dim / num_heads, not of dim


@pytest.mark.parametrize("qkv_dim", [10, 0, -4])
def test_a_qkv_dim_the_heads_cannot_split_fails_naming_the_key(qkv_dim):
    with pytest.raises(LRAError, match=r"^model\.qkv_dim: "):
        build(f"model.qkv_dim={qkv_dim}")
    cfg = compose_config("model.num_heads=4", f"model.qkv_dim={qkv_dim}")
    with pytest.raises(LRAError, match=r"^model\.qkv_dim: "):
        check_model_config(cfg.model, 64)


# --- padding_mask=nonzero ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_nonzero_masks_every_token_id_0_as_real_padding_would(seed):
    tokens = image_batch(seed)
    nonzero = build("model.padding_mask=nonzero", "model.pooling=mean", seed=seed)
    real = build("model.pooling=mean", seed=seed)
    everything = torch.ones_like(tokens, dtype=torch.bool)
    with torch.no_grad():
        expected = real(tokens, tokens > 0)
        assert torch.allclose(nonzero(tokens, everything), expected, atol=1e-5)
        assert torch.allclose(nonzero(tokens, None), expected, atol=1e-5)
        assert not torch.allclose(real(tokens, everything), expected, atol=1e-3)


def test_nonzero_gives_the_cls_token_the_first_tokens_mask():
    tokens = image_batch(2)
    nonzero = build("model.padding_mask=nonzero")
    calls = attention_calls(nonzero)
    with torch.no_grad():
        logits = nonzero(tokens, None)
    mask = calls[0][1]
    assert torch.equal(mask[:, 1:], tokens > 0)
    assert torch.equal(mask[:, 0], tokens[:, 0] > 0) and not mask[0, 0] and mask[1, 0]
    # with the real mask `tokens > 0`, the CLS token is always seen: the same logits where the
    # first token is not black, different ones where it is
    with torch.no_grad():
        real = build()(tokens, tokens > 0)
    assert torch.allclose(logits[1], real[1], atol=1e-5)
    assert not torch.allclose(logits[0], real[0], atol=1e-3)


def test_nonzero_keeps_real_padding_and_sees_every_token_when_nothing_is_padding():
    nonzero = build("model.padding_mask=nonzero", "model.pooling=mean")
    calls = attention_calls(nonzero)
    tokens = torch.randint(1, VOCAB, (2, 12))
    nonzero(tokens, None)
    assert calls[-1][1].all()  # no id 0, no padding: attention sees every token (the mask is never read back)
    mask = torch.arange(12) < torch.tensor([[12], [7]])
    nonzero(tokens, mask)  # padding with ids > 0 is still padding
    assert torch.equal(calls[-1][1], mask)


# --- pool_padding -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_pool_padding_averages_every_position_padding_included(seed):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCAB, (3, 20), generator=gen)
    mask = torch.arange(20) < torch.tensor([[20], [13], [5]])
    real = build("model.pooling=mean", seed=seed)
    padded = build("model.pooling=mean", "model.pool_padding=true", seed=seed)
    x = encoded(padded, tokens, mask)
    assert torch.allclose(x, encoded(real, tokens, mask))  # the same encoder: only the pooling differs
    weights = mask[..., None].float()
    with torch.no_grad():
        over_all, over_real = padded.encoder(tokens, mask), real.encoder(tokens, mask)
    assert torch.allclose(over_all, x.sum(1) / 20, atol=1e-6)
    assert torch.allclose(over_real, (x * weights).sum(1) / weights.sum(1), atol=1e-6)
    assert torch.allclose(over_all[0], over_real[0], atol=1e-6)  # no padding: the same mean
    assert not torch.allclose(over_all[1:], over_real[1:], atol=1e-3)


# --- dual_head --------------------------------------------------------------------------------


@pytest.mark.parametrize("mlp_dim", [64, 45])
def test_lra_dual_head_classifies_u_and_v_through_two_hidden_layers(mlp_dim):
    d, m, c = 32, mlp_dim, 3
    lra = build(f"model.mlp_dim={m}", "model.dual_head=lra", towers=2, classes=c)
    nli = build(f"model.mlp_dim={m}", towers=2, classes=c)
    assert count(lra.head) == 2 * d * m + m + m * (m // 2) + m // 2 + (m // 2) * c + c
    assert count(nli.head) == 4 * d * m + m + m * c + c
    assert count(lra.encoder) == count(nli.encoder)
    tokens = torch.randint(1, VOCAB, (4, 2, 16))
    mask = torch.arange(16) < torch.randint(1, 17, (4, 2, 1))
    with torch.no_grad():
        logits = lra(tokens, mask)
        u, v = (lra.encoder(tokens[:, i], mask[:, i]) for i in range(2))
        assert logits.shape == (4, c) and nli(tokens, mask).shape == (4, c)
        assert torch.allclose(logits, lra.head(torch.cat([u, v], dim=-1)), atol=1e-5)
    # one tower: the same head whatever dual_head says
    assert count(build("model.dual_head=lra").head) == count(build().head) == d * 64 + 64 + 64 * CLASSES + CLASSES


# --- init, attention_bias, norm_eps -----------------------------------------------------------

WIDE = ("model.num_layers=1", "model.dim=256", "model.qkv_dim=128", "model.mlp_dim=512")


def assert_xavier(weight: torch.Tensor, fan_in: int, fan_out: int) -> None:
    """Xavier-uniform on (fan_in, fan_out): within the bound, and its standard deviation."""
    bound, std = math.sqrt(6 / (fan_in + fan_out)), math.sqrt(2 / (fan_in + fan_out))
    assert weight.abs().max() <= bound
    assert abs(weight.std().item() / std - 1) < 0.05, (weight.std().item(), std)


def assert_lra_bias(bias: torch.Tensor) -> None:
    assert 0 < bias.std().item() < 1e-5 and abs(bias.std().item() / 1e-6 - 1) < 0.3


@pytest.mark.parametrize("seed", [0, 1])
def test_lra_init_is_flax_xavier_per_projection_and_tiny_biases(seed):
    model = build(*WIDE, "model.init=lra", "model.attention_bias=false", seed=seed)
    block = model.encoder.blocks[0]
    assert block.qkv.bias is None and block.proj.bias is None  # flax's bias=False: q, k, v and output
    for part in block.qkv.weight.chunk(3):  # q, k, v: three dense layers of (256 -> 128) in LRA
        assert_xavier(part, 256, 128)
    assert_xavier(block.proj.weight, 128, 256)
    for linear in (block.mlp[0], block.mlp[3]):
        assert_xavier(linear.weight, linear.in_features, linear.out_features)
        assert_lra_bias(linear.bias)
    # the head: flax's default dense, lecun_normal (a normal truncated at 2 std, variance 1 / fan_in), zero bias
    for linear in (model.head[0], model.head[2]):
        std = linear.in_features**-0.5
        assert linear.weight.abs().max() <= 2 * std / TRUNCATED_STD
        assert abs(linear.weight.std().item() / std - 1) < 0.05
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    with_bias = build(*WIDE, "model.init=lra", seed=seed).encoder.blocks[0]
    assert_lra_bias(with_bias.qkv.bias)
    assert_lra_bias(with_bias.proj.bias)


def test_lra_init_differs_from_torchs_and_leaves_the_rest_alone():
    lra, ours = build(*WIDE, "model=linformer", "model.init=lra"), build(*WIDE, "model=linformer")
    third = ours.encoder.blocks[0].qkv.weight.chunk(3)[0]
    # torch's kaiming-uniform(a=sqrt(5)): bound 1 / sqrt(fan_in), std 1 / sqrt(3 fan_in), far from Xavier's
    assert third.abs().max() <= 1 / 16 and abs(third.std().item() - 1 / math.sqrt(3 * 256)) < 0.002
    assert abs(third.std().item() / math.sqrt(2 / 384) - 1) > 0.3
    assert ours.encoder.blocks[0].mlp[0].bias.std() > 1e-2
    # the embedding, positions, CLS token, norms and the attention's own parameters are not touched
    untouched = [key for key in ours.state_dict() if not key.startswith("head.") and not any(
        f".{name}." in key for name in ("qkv", "proj", "mlp"))]
    assert any(".attn." in key for key in untouched) and "encoder.embed.weight" in untouched
    assert all(torch.equal(lra.state_dict()[key], ours.state_dict()[key]) for key in untouched)


def test_norm_eps_sets_every_layer_norm():
    for overrides, eps in [((), 1e-5), (("model.norm_eps=1e-6",), 1e-6)]:
        norms = [m for m in build(*overrides, "model.num_layers=3").modules() if isinstance(m, nn.LayerNorm)]
        assert len(norms) == 2 * 3 + 1 and all(norm.eps == eps for norm in norms)
    # and it acts: a nearly constant token normalises differently under the two epsilons
    x = torch.full((1, 1, 32), 1.0) + torch.linspace(0, 1e-3, 32)
    big, small = (build(o).encoder.norm(x) for o in ("model.norm_eps=1e-2", "model.norm_eps=1e-9"))
    assert not torch.allclose(big, small, atol=1e-2)
