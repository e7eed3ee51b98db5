"""The attention registry: full attention against the reference, and what every variant must do
(padding never leaks into real positions, determinism, bf16, memory linear in length, docs)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from lra.errors import LRAError
from lra.measure import LiveTensorBytes
from models.attention import ATTENTION, build_attention, list_attention
from tests.attention_reference import longest_unit, random_heads, real_positions, softmax_attention
from tests.conftest import REPO


def test_full_is_registered_and_unknown_names_are_refused():
    assert "full" in list_attention()
    with pytest.raises(LRAError, match="unknown attention 'nope'.*full"):
        build_attention("nope", num_heads=2, head_dim=8, max_len=16)


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_full_matches_reference_softmax(impl):
    q, k, v, mask = random_heads(dtype=torch.float64)
    attn = build_attention("full", num_heads=2, head_dim=16, max_len=37, impl=impl).eval()
    out = attn(q, k, v, key_padding_mask=mask)
    assert torch.allclose(out, softmax_attention(q, k, v, key_padding_mask=mask), atol=1e-10)
    # and attention is not trivially the mean of V at this logit scale
    assert (out - v.mean(-2, keepdim=True)).abs().max() > 0.5


def test_sdpa_and_math_agree_in_fp32_with_padding():
    q, k, v, mask = random_heads()
    sdpa = build_attention("full", num_heads=2, head_dim=16, max_len=37, impl="sdpa").eval()
    math = build_attention("full", num_heads=2, head_dim=16, max_len=37, impl="math").eval()
    for key_padding_mask in (mask, None):
        a, b = sdpa(q, k, v, key_padding_mask), math(q, k, v, key_padding_mask)
        assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_padded_positions_do_not_change_real_outputs(impl):
    q, k, v, mask = random_heads()
    attn = build_attention("full", num_heads=2, head_dim=16, max_len=37, impl=impl).eval()
    noise = torch.randn_like(k) * 100
    pad = ~mask[:, None, :, None]
    out = attn(q, k, v, mask)
    out_noisy = attn(q, torch.where(pad, noise, k), torch.where(pad, noise, v), mask)
    real = real_positions(mask, out)
    assert torch.allclose(out[real], out_noisy[real], atol=1e-6)
    # without the mask the noise would change them: the check above is not vacuous
    assert not torch.allclose(attn(q, torch.where(pad, noise, k), v, None)[real], out[real], atol=1e-3)


def test_dropout_only_in_training():
    q, k, v, mask = random_heads()
    attn = build_attention("full", num_heads=2, head_dim=16, max_len=37, impl="math", dropout=0.5)
    attn.eval()
    assert torch.equal(attn(q, k, v, mask), attn(q, k, v, mask))
    attn.train()
    assert not torch.allclose(attn(q, k, v, mask), attn.eval()(q, k, v, mask))


# Checks every registered variant must pass: tests enumerate the registry, never a list of their own.
# At the default hyper-parameters and a length long enough for every sparse pattern to be sparse.
VARIANTS = list_attention()
LENGTH = 700


def build(name, max_len=768, **overrides):
    return build_attention(name, num_heads=2, head_dim=16, max_len=max_len, **overrides)


def heads_for(attn, *tensors):
    """q, k, v as the encoder block passes them to `attn`: k is q for a shared-QK variant."""
    q, k, v = tensors
    return q, q if attn.shared_qk else k, v


@pytest.mark.parametrize("name", VARIANTS)
def test_padding_never_changes_real_outputs(name):
    torch.manual_seed(0)
    attn = build(name).eval()
    q, k, v, mask = random_heads(length=LENGTH, scale=1.0)
    gen = torch.Generator().manual_seed(1)
    pad = ~mask[:, None, :, None]
    noisy = [torch.where(pad, 3 * torch.randn(x.shape, generator=gen), x) for x in (q, k, v)]
    out, out_noisy = attn(*heads_for(attn, q, k, v), mask), attn(*heads_for(attn, *noisy), mask)
    real = real_positions(mask, out)
    assert torch.allclose(out[real], out_noisy[real], atol=1e-5), (out[real] - out_noisy[real]).abs().max()
    # without the mask the noise reaches real positions: the check above is not vacuous
    assert not torch.allclose(attn(*heads_for(attn, *noisy), None)[real], out[real], atol=1e-3)


# The padded-length test: a sequence of L real tokens, alone and unpadded, then padded to longer
# lengths up to PAD_MAX_LEN beside a sample that fills them. LONG spans at least three of every length
# unit (block, window, bucket, kernel) of every variant's defaults; SHORT is less than one LSH chunk
# or BigBird block, where a layout laid out over the padded length would differ the most.
PAD_MAX_LEN = 1000
LONG, SHORT = 800, 45


def padded_beside_a_longer_sample(x, length, gen):
    """(1, heads, L, dim) -> (2, heads, length, dim): `x` followed by 3 randn padding, then a randn
    sample of `length` real tokens."""
    pad = 3 * torch.randn(1, x.shape[1], length - x.shape[2], x.shape[3], generator=gen)
    return torch.cat([torch.cat([x, pad], dim=2), torch.randn(1, x.shape[1], length, x.shape[3], generator=gen)])


@torch.no_grad()
def outputs_at_every_padding(attn, real_len):
    """The outputs at the real positions of one sequence of `real_len` tokens: alone (no mask), then
    padded to longer lengths up to PAD_MAX_LEN, beside a longer sample. Torch is reseeded before every
    call (variants that redraw random features or rotations in training draw the same ones)."""
    gen = torch.Generator().manual_seed(real_len)
    q, k, v = (torch.randn(1, 2, real_len, 16, generator=gen) for _ in range(3))
    torch.manual_seed(5)
    outputs = [attn(*heads_for(attn, q, k, v))]
    for length in sorted({real_len + 1, min(real_len + 37, PAD_MAX_LEN), PAD_MAX_LEN}):
        padded = [padded_beside_a_longer_sample(x, length, gen) for x in (q, k, v)]
        mask = torch.arange(length)[None, :] < torch.tensor([[real_len], [length]])
        torch.manual_seed(5)
        outputs.append(attn(*heads_for(attn, *padded), mask)[:1, :, :real_len])
    return outputs


@pytest.mark.parametrize("real_len", [LONG, SHORT])
@pytest.mark.parametrize("name", VARIANTS)
def test_padded_length_never_changes_real_outputs(name, real_len):
    """What a sample's real tokens get depends neither on how far its batch is padded nor on the
    other samples: block layouts, buckets and segments come from max_len, never the padded length."""
    defaults = dataclasses.asdict(ATTENTION.get(name)[1]())
    assert LONG >= 3 * longest_unit(defaults), f"{name}: raise LONG to span three of its units"
    for training in (True, False):
        attn = build(name, max_len=PAD_MAX_LEN, dropout=0.0).train(training)
        alone, *padded = outputs_at_every_padding(attn, real_len)
        for out in padded:
            assert torch.allclose(out, alone, atol=1e-5, rtol=0), (training, (out - alone).abs().max())


@pytest.mark.parametrize("name", VARIANTS)
def test_fully_padded_sample_stays_finite(name):
    attn = build(name).train()
    q, k, v, mask = random_heads(length=LENGTH, scale=1.0)
    mask[2] = False
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    out = attn(*heads_for(attn, q, k, v), mask)
    out.sum().backward()
    assert out.isfinite().all()
    assert all(x.grad is None or x.grad.isfinite().all() for x in (q, k, v))


@pytest.mark.parametrize("name", VARIANTS)
def test_deterministic_under_a_seed_and_in_eval(name):
    q, k, v, mask = random_heads(length=LENGTH, scale=1.0)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        attn = build(name, dropout=0.1).train()
        heads = heads_for(attn, q, k, v)
        runs.append((attn(*heads, mask), attn.eval()(*heads, mask), attn(*heads, mask)))
    (train_a, eval_a, eval_again), (train_b, eval_b, _) = runs
    assert torch.equal(train_a, train_b)
    assert torch.equal(eval_a, eval_b)
    assert torch.equal(eval_a, eval_again)


@pytest.mark.parametrize("name", VARIANTS)
def test_runs_under_bf16_autocast(name):
    attn = build(name).eval()
    q, k, v, mask = random_heads(length=LENGTH, scale=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(*heads_for(attn, q, k, v), mask)
    assert out.shape == q.shape and out.isfinite().all()


def peak_bytes(attn, length):
    """Live-tensor peak of one forward and backward pass at `length` (batch 1, 2 heads, dim 64)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, length, 64, generator=gen).requires_grad_() for _ in range(3))
    with LiveTensorBytes() as tracker:
        attn(*heads_for(attn, q, k, v)).sum().backward()
    return tracker.peak


@pytest.mark.parametrize("name", [n for n in VARIANTS if build(n).linear_memory] + ["full"])
def test_peak_memory_grows_linearly_with_length(name):
    """Counted, not timed: 4x the length costs at most 4.6x the bytes (full attention: about 16x)."""
    overrides = {"impl": "math"} if name == "full" else {}
    torch.manual_seed(0)
    attn = build_attention(name, num_heads=2, head_dim=64, max_len=4096, **overrides).train()
    ratio = peak_bytes(attn, 4096) / peak_bytes(attn, 1024)
    if attn.linear_memory:
        assert ratio <= 4.6, ratio
    else:
        assert 12 < ratio < 17, ratio


def test_every_variant_has_a_config_and_a_readme_row():
    yamls = {path.stem for path in (REPO / "conf" / "model").glob("*.yaml")}
    rows = set(re.findall(r"^\| [\w-]+ \| `(\w+)` \|", (REPO / "README.md").read_text(), flags=re.M))
    assert rows == set(VARIANTS) <= yamls  # more files are rows of a registered variant (full_math)
