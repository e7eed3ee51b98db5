"""Kernel attention (performer, linear): the linear-time form against its quadratic form, FAVOR+
against softmax attention, padding removed after the feature map, and the Performer's redraws."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.attention import build_attention
from models.attention.kernel import NORMALISER_EPS, RELU_FEATURE_EPS
from tests.attention_reference import random_heads, real_positions, softmax_attention


def quadratic_kernel_attention(phi_q, phi_k, v, mask):
    """(phi(Q) phi(K)^T over real keys, rows normalised) V: the n x n form the modules avoid."""
    scores = (phi_q @ phi_k.transpose(-2, -1)) * mask[:, None, None, :]
    return scores @ v / (scores.sum(-1, keepdim=True) + NORMALISER_EPS)


def leaf_heads(**kwargs):
    q, k, v, mask = random_heads(**kwargs)
    return *(t.requires_grad_() for t in (q, k, v)), mask


def test_linear_equals_its_quadratic_form_in_outputs_and_gradients():
    q, k, v, mask = leaf_heads(dtype=torch.float64)
    attn = build_attention("linear", num_heads=2, head_dim=16, max_len=37)
    weights = torch.randn(q.shape, dtype=torch.float64)  # a generic loss, so every gradient entry is tested
    out = attn(q, k, v, mask)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    expected = quadratic_kernel_attention(F.elu(q) + 1, F.elu(k) + 1, v, mask)
    expected_grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))
    assert torch.allclose(out, expected, atol=1e-12)
    for grad, expected_grad in zip(grads, expected_grads):
        assert torch.allclose(grad, expected_grad, atol=1e-12)


@pytest.mark.parametrize("features", ["random", "deterministic"])
def test_performer_relu_kernel_equals_its_quadratic_form(features):
    q, k, v, mask = random_heads(dtype=torch.float64)
    attn = build_attention("performer", num_heads=2, head_dim=16, max_len=37, kernel="relu", features=features,
                           num_features=24)
    w = torch.eye(16, dtype=torch.float64) if features == "deterministic" else attn.projection.double()
    expected = quadratic_kernel_attention(
        F.relu(q @ w.T) + RELU_FEATURE_EPS, F.relu(k @ w.T) + RELU_FEATURE_EPS, v, mask
    )
    out = attn(q, k, v, mask)
    assert out.isfinite().all()
    assert torch.allclose(out, expected, atol=1e-12)


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_performer_gradients_through_the_in_place_feature_maps(kernel):
    q, k, v, _ = leaf_heads(batch=2, length=6, dim=4, dtype=torch.float64, scale=0.5)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    attn = build_attention("performer", num_heads=2, head_dim=4, max_len=6, kernel=kernel, num_features=6)
    assert torch.autograd.gradcheck(lambda q, k, v: attn(q, k, v, mask), (q, k, v))


def test_performer_error_falls_as_features_grow_and_beats_the_mean_of_v():
    # small logit scale: FAVOR+'s variance is only small there (at std 1 it stays large)
    q, k, v, mask = random_heads(length=64, dtype=torch.float64, scale=0.5)
    exact = softmax_attention(q, k, v, key_padding_mask=mask)
    real = real_positions(mask, exact)
    errors = []
    for num_features in (16, 64, 256, 1024):
        runs = []
        for seed in range(4):
            torch.manual_seed(seed)
            attn = build_attention("performer", num_heads=2, head_dim=16, max_len=64, num_features=num_features)
            runs.append((attn(q, k, v, mask) - exact)[real].abs().mean())
        errors.append(torch.stack(runs).mean().item())
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < errors[0] / 3, errors
    keep = mask[:, None, :, None].double()
    mean_v = (v * keep).sum(-2, keepdim=True) / keep.sum(-2, keepdim=True)
    assert errors[-1] < 0.6 * (mean_v.expand_as(exact) - exact)[real].abs().mean().item(), errors


@pytest.mark.parametrize(
    "name, overrides",
    [("linear", {}), ("performer", {"kernel": "softmax"}), ("performer", {"kernel": "relu"}),
     ("performer", {"kernel": "relu", "features": "deterministic"})],
)
def test_padded_keys_are_removed_after_the_feature_map(name, overrides):
    """Each sample padded equals the same sample cut to its real length. Zeroing padded keys before
    the map (or zeroing only V) would fail this: phi(0) != 0 keeps them in the sums."""
    q, k, v, mask = random_heads()
    attn = build_attention(name, num_heads=2, head_dim=16, max_len=37, **overrides).eval()
    out = attn(q, k, v, mask)
    for b, length in enumerate(mask.sum(-1).tolist()):
        sample = (slice(b, b + 1), slice(None), slice(length))
        cut = attn(q[sample], k[sample], v[sample])
        assert torch.allclose(out[sample], cut, atol=1e-6), (out[sample] - cut).abs().max()


def performer(seed=0, **overrides):
    torch.manual_seed(seed)
    return build_attention("performer", num_heads=2, head_dim=8, max_len=16, num_features=20, **overrides)


def test_projection_blocks_are_orthogonal_rows_with_the_configured_norms():
    for norms in ("chi", "sqrt_d"):
        w = performer(feature_norms=norms).projection.double()
        assert w.shape == (20, 8)
        for block in w.split(8):  # 8, 8, then the 4 rows of a truncated block
            gram = block @ block.T
            assert torch.allclose(gram, torch.diag(gram.diagonal()), atol=1e-5)
        row_norms = w.norm(dim=-1)
        if norms == "sqrt_d":
            assert torch.allclose(row_norms, torch.full_like(row_norms, 8**0.5))
        else:
            assert row_norms.std() > 0.1  # chi-distributed, not constant


def test_features_are_redrawn_every_redraw_every_training_steps_only():
    attn = performer(redraw_every=3)
    seen = [attn.projection.clone()]
    for _ in range(7):
        attn.on_train_step()
        seen.append(attn.projection.clone())
    changed = [not torch.equal(a, b) for a, b in zip(seen, seen[1:])]
    assert changed == [False, False, True, False, False, True, False]
    assert int(attn.steps) == 7


def test_no_redraw_when_redraw_every_is_zero_or_in_eval():
    never = performer(redraw_every=0)
    evaluating = performer(redraw_every=1).eval()
    q, k, v, mask = random_heads(dim=8, length=16)
    for attn in (never, evaluating):
        before = attn.projection.clone()
        out = attn(q, k, v, mask)
        for _ in range(5):
            attn.on_train_step()
        assert torch.equal(attn.projection, before)
        assert torch.equal(attn(q, k, v, mask), out)
    assert int(evaluating.steps) == 0


def test_same_seed_same_sequence_of_features_and_another_seed_differs():
    a, b, c = performer(seed=1, redraw_every=2), performer(seed=1, redraw_every=2), performer(seed=2, redraw_every=2)
    for _ in range(6):
        assert torch.equal(a.projection, b.projection)
        assert not torch.equal(a.projection, c.projection)
        for attn in (a, b, c):
            attn.on_train_step()


def test_state_dict_round_trip_restores_features_and_counter_and_continues_identically():
    trained = performer(seed=1, redraw_every=2)
    for _ in range(3):
        trained.on_train_step()
    resumed = performer(seed=5, redraw_every=2)
    resumed.load_state_dict(trained.state_dict())
    assert torch.equal(resumed.projection, trained.projection) and int(resumed.steps) == 3
    for _ in range(4):
        trained.on_train_step()
        resumed.on_train_step()
        assert torch.equal(resumed.projection, trained.projection)


def test_deterministic_features_carry_no_state_and_ignore_training_steps():
    attn = performer(kernel="relu", features="deterministic")
    assert attn.projection is None and not attn.state_dict()
    q, k, v, mask = random_heads(dim=8, length=16)
    out = attn(q, k, v, mask)
    attn.on_train_step()
    assert torch.equal(attn(q, k, v, mask), out)
