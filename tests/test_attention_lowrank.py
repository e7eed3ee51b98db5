"""Low-rank attention (Linformer, Nystromformer): reductions to exact attention, approximation
quality, padding that behaves as if absent, and a batch that never couples its samples.

The checks every variant passes (padding invariance, finiteness, determinism, bf16, memory) are in
tests/test_attention.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lra.errors import LRAError
from models.attention import build_attention
from models.attention.lowrank import depthwise_conv
from tests.attention_reference import ragged_mask, random_heads, real_positions, softmax_attention


def max_error_at_real_positions(out, ref, mask):
    real = real_positions(mask, ref)
    return (out.double() - ref)[real].abs().max().item()


@pytest.mark.parametrize("sharing", ["key_value", "headwise", "none"])
def test_linformer_with_identity_projections_is_full_attention(sharing):
    q, k, v, mask = random_heads(dtype=torch.float64)
    length = q.shape[-2]
    attn = build_attention("linformer", num_heads=2, head_dim=16, max_len=length, k=length, sharing=sharing).eval()
    with torch.no_grad():
        attn.projection.copy_(torch.eye(length))
    out = attn(q, k, v, mask)
    assert max_error_at_real_positions(out, softmax_attention(q, k, v, key_padding_mask=mask), mask) < 1e-10


def test_linformer_refuses_a_sequence_longer_than_its_projections():
    attn = build_attention("linformer", num_heads=2, head_dim=16, max_len=36)
    q, k, v, mask = random_heads()
    with pytest.raises(LRAError, match="length 37 exceeds its max_len 36"):
        attn(q, k, v, mask)


@pytest.mark.parametrize(
    "name, overrides",
    [("linformer", {}), ("nystrom", {"num_landmarks": 8, "conv_kernel_size": 5}), ("nystrom", {})],
)
def test_a_padded_sample_gives_what_its_unpadded_version_gives(name, overrides):
    """Stronger than invariance to the padded values: K, V zeroed before projecting (Linformer) and
    landmarks over real tokens only (Nystromformer) make the padding as good as absent."""
    torch.manual_seed(0)
    attn = build_attention(name, num_heads=2, head_dim=16, max_len=37, **overrides).eval()
    q, k, v, mask = random_heads(dtype=torch.float64)
    out = attn(q, k, v, mask)
    for sample, length in enumerate(mask.sum(-1).tolist()):
        alone = attn(*(x[sample : sample + 1, :, :length] for x in (q, k, v)))
        assert torch.allclose(out[sample, :, :length], alone[0], atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("num_landmarks", [37, 50])
def test_nystrom_with_a_landmark_per_token_is_full_attention(dtype, tolerance, num_landmarks):
    """One token per landmark makes the Nystrom factorisation exact once the pseudo-inverse has
    converged (the default 6 iterations do not converge on ill-conditioned landmark kernels). With
    more landmarks than tokens the empty ones must drop out; padded samples have both."""
    q, k, v, mask = random_heads(dtype=dtype)
    attn = build_attention(
        "nystrom", num_heads=2, head_dim=16, max_len=37, num_landmarks=num_landmarks, conv_kernel_size=0,
        pinv_iterations=30,
    ).eval()
    out = attn(q, k, v, mask)
    assert out.dtype == dtype
    assert max_error_at_real_positions(out, softmax_attention(q, k, v, key_padding_mask=mask), mask) < tolerance


def test_nystrom_empty_landmarks_change_nothing():
    """A sample with fewer real tokens than landmarks leaves landmarks empty: at the default
    pseudo-inverse iterations (not converged) it must still give what exactly as many landmarks as
    tokens give, so the empty ones are inert, not merely harmless at convergence."""
    q, k, v, mask = random_heads(dtype=torch.float64)
    q, k, v, mask = (x[2:] for x in (q, k, v, mask))  # 5 real tokens of 37
    outs = [
        build_attention("nystrom", num_heads=2, head_dim=16, max_len=37, num_landmarks=m, conv_kernel_size=0)
        .eval()(q, k, v, mask)
        for m in (5, 16)
    ]
    assert torch.allclose(outs[0][:, :, :5], outs[1][:, :, :5], atol=1e-12, rtol=0)


def test_nystrom_samples_do_not_depend_on_the_rest_of_the_batch():
    """The pseudo-inverse starts per sample: a batch-wide maximum (the original code) fails this."""
    attn = build_attention("nystrom", num_heads=2, head_dim=16, max_len=64, num_landmarks=8).eval()
    q, k, v, mask = random_heads(length=64)
    out = attn(q, k, v, mask)
    for sample in range(len(q)):
        alone = attn(*(x[sample : sample + 1] for x in (q, k, v)), mask[sample : sample + 1])
        assert torch.allclose(out[sample], alone[0], atol=1e-6, rtol=0), sample
    # and the others are not alike: their kernels, so a batch-wide start, differ from sample 0's
    louder = attn(q, torch.cat([k[:1], 3 * k[1:]]), v, mask)
    assert torch.allclose(out[0], louder[0], atol=1e-6, rtol=0)


def clustered_heads(batch=3, heads=2, length=64, dim=16, runs=8, scale=4.0, seed=0):
    """q, k near one of `runs` random centres, each centre for a contiguous run of tokens, with
    logits of std about `scale` between centres: each query attends mostly to its own run, far from
    uniform, and the attention matrix is close to rank `runs` (what Nystrom needs). Padded as
    random_heads pads."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(batch, heads, runs, dim, generator=gen, dtype=torch.float64) * scale**0.5
    tokens = centres[:, :, torch.arange(length) * runs // length]
    q, k = (tokens + 0.3 * torch.randn(tokens.shape, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(batch, heads, length, dim, generator=gen, dtype=torch.float64)
    return q, k, v, ragged_mask(batch, length)


def rms_error_at_real_positions(out, ref, mask):
    real = real_positions(mask, ref)
    return (out - ref)[real].pow(2).mean().sqrt().item()


def test_nystrom_beats_the_mean_of_values_and_improves_with_landmarks():
    q, k, v, mask = clustered_heads()
    ref = softmax_attention(q, k, v, key_padding_mask=mask)
    weights = mask[:, None, :, None].double()
    mean_v = ((v * weights).sum(-2, keepdim=True) / weights.sum(-2, keepdim=True)).expand_as(ref)
    trivial = rms_error_at_real_positions(mean_v, ref, mask)
    assert trivial > 0.3  # attention is far from uniform
    errors = []
    for num_landmarks in (4, 8, 16, 32):  # all fewer than the 64 tokens
        attn = build_attention(
            "nystrom", num_heads=2, head_dim=16, max_len=64, num_landmarks=num_landmarks, conv_kernel_size=0
        ).eval()
        errors.append(rms_error_at_real_positions(attn(q, k, v, mask), ref, mask))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] < trivial and errors[1] < trivial / 4, (trivial, errors)


@pytest.mark.parametrize("length", [1, 31, 32, 100])
@pytest.mark.parametrize("kernel", [1, 3, 35, 129])
def test_depthwise_conv_is_the_zero_padded_convolution(length, kernel):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, length, 4, generator=gen, dtype=torch.float64)
    weight = torch.randn(3, kernel, generator=gen, dtype=torch.float64)
    ref = F.conv2d(x, weight[:, None, :, None], padding=(kernel // 2, 0), groups=3)
    assert torch.allclose(depthwise_conv(x, weight), ref, atol=1e-12, rtol=0)
