"""The sparse family (local, sparse, bigbird, longformer): exact patterns, exactness under them, and
approximation of full attention where attention is local.

Every check compares with the float64 reference of tests/attention_reference.py on randn inputs;
the patterns are checked on their dense form (`dense_pattern`), which is built from the same layout
the modules compute with, and the modules are checked against dense attention under that pattern.
"""

from __future__ import annotations

import pytest
import torch

from models.attention import ATTENTION, build_attention, list_attention
from models.attention.sparse import BlockSparseAttention
from tests.attention_reference import LargestTensor, random_heads, real_positions, softmax_attention

LENGTH = 37  # random_heads' default: not a multiple of any block size below
MAX_LEN = 128  # the longest input below: BigBird lays its random and last global blocks out over it


def build(name: str, heads: int = 2, max_len: int = MAX_LEN, **overrides):
    return build_attention(name, num_heads=heads, head_dim=16, max_len=max_len, **overrides).eval()


def close_at_real(out, expected, mask, atol):
    real = real_positions(mask, out)
    return torch.allclose(out[real], expected[real].to(out.dtype), atol=atol, rtol=0)


# -- exact reductions ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_local_with_window_covering_the_sequence_is_full_attention(dtype, atol):
    q, k, v, mask = random_heads(dtype=dtype)
    for window in (LENGTH, 100):
        attn = build("local", window=window)
        assert close_at_real(attn(q, k, v, mask), softmax_attention(q, k, v, key_padding_mask=mask), mask, atol)
        assert torch.allclose(attn(q, k, v), softmax_attention(q, k, v).to(dtype), atol=atol, rtol=0)


SMALL = {
    "local": dict(window=4),
    "sparse": dict(block=8, summary=2, global_tokens=1),
    "bigbird": dict(block=4, random_blocks=2, window_blocks=3, global_blocks=2, seed=3),
    "longformer": dict(window=3, global_tokens=2),
    "etc": dict(window=2, global_tokens=4),
}
COVERING = {
    "sparse": [dict(block=64, summary=1), dict(block=8, summary=8)],
    "bigbird": [dict(block=4, window_blocks=21, random_blocks=0), dict(block=4, global_blocks=20)],
    "longformer": [dict(window=LENGTH, global_tokens=0), dict(window=1, global_tokens=LENGTH)],
    "etc": [dict(window=LENGTH, global_tokens=0), dict(window=1, global_tokens=LENGTH)],
}


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_equals_dense_attention_under_its_own_pattern_with_padding(name, dtype, atol):
    q, k, v, mask = random_heads(dtype=dtype)
    attn = build(name, **SMALL[name])
    pattern = attn.dense_pattern(LENGTH)
    assert 0.1 < pattern.double().mean() < 0.8  # neither trivial nor full
    expected = softmax_attention(q, k, v, allowed=pattern, key_padding_mask=mask)
    assert close_at_real(attn(q, k, v, mask), expected, mask, atol)
    assert torch.allclose(attn(q, k, v), softmax_attention(q, k, v, allowed=pattern).to(dtype), atol=atol, rtol=0)
    # the pattern matters: full attention is far from it at this logit scale
    assert not close_at_real(softmax_attention(q, k, v, key_padding_mask=mask), expected, mask, 0.1)


@pytest.mark.parametrize("name, overrides", [(name, o) for name, options in COVERING.items() for o in options])
def test_equals_full_attention_when_every_key_is_kept(name, overrides):
    q, k, v, mask = random_heads(dtype=torch.float64)
    attn = build(name, **overrides)
    assert attn.dense_pattern(LENGTH).all()
    assert close_at_real(attn(q, k, v, mask), softmax_attention(q, k, v, key_padding_mask=mask), mask, 1e-12)


# -- the patterns themselves ----------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 4, 5, 36])
def test_local_band_is_exact(window):
    pattern = build("local", window=window).dense_pattern(LENGTH)[0]
    i, j = torch.meshgrid(torch.arange(LENGTH), torch.arange(LENGTH), indexing="ij")
    assert torch.equal(pattern, (i - j).abs() <= window)  # not up to 3 * window


def test_longformer_is_band_plus_full_global_rows_and_columns():
    pattern = build("longformer", window=3, global_tokens=2).dense_pattern(LENGTH)[0]
    assert pattern[:2].all() and pattern[:, :2].all()
    i, j = torch.meshgrid(torch.arange(LENGTH), torch.arange(LENGTH), indexing="ij")
    rest = (i >= 2) & (j >= 2)
    assert torch.equal(pattern[rest], ((i - j).abs() <= 3)[rest])


def test_etc_is_longformers_function_with_etcs_defaults():
    q, k, v, mask = random_heads(dtype=torch.float64)
    etc = build("etc", window=5, global_tokens=3)
    assert torch.equal(etc(q, k, v, mask), build("longformer", window=5, global_tokens=3)(q, k, v, mask))
    defaults = build("etc", max_len=300)  # the layout is laid out over max_len: 300 tokens need it
    assert (defaults.window, defaults.global_tokens) == (84, 16)
    pattern = defaults.dense_pattern(300)[0]
    assert pattern[:16].all() and pattern[:, :16].all() and pattern[100, 16:].sum() == 2 * 84 + 1


def test_longformer_counts_a_global_key_once_when_also_in_the_window():
    q, k, v, _ = random_heads(dtype=torch.float64)
    attn = build("longformer", window=3, global_tokens=2)
    # query 3 has keys 0..6 in its window, 0 and 1 also global: plain softmax over keys 0..6
    expected = softmax_attention(q[:, :, 3:4], k[:, :, :7], v[:, :, :7])
    assert torch.allclose(attn(q, k, v)[:, :, 3:4], expected, atol=1e-12)


def test_sparse_summary_columns_are_the_last_c_of_every_block():
    block, summary = 8, 3
    pattern = build("sparse", block=block, summary=summary, global_tokens=1).dense_pattern(LENGTH)[0]
    i, j = torch.meshgrid(torch.arange(LENGTH), torch.arange(LENGTH), indexing="ij")
    summary_column = j % block >= block - summary  # columns 5, 6, 7, 13, 14, 15, ...
    same_block = i // block == j // block
    assert torch.equal(pattern, same_block | summary_column | (i == 0) | (j == 0))


BIGBIRD = dict(block=4, random_blocks=2, window_blocks=3, global_blocks=2)
BIGBIRD_MAX_LEN = 16 * BIGBIRD["block"]  # 16 blocks


def bigbird_block_pattern(attn, num_blocks: int) -> torch.Tensor:
    """(heads, query block, key block): True where some query of the block attends some key of it,
    after checking that every query of a block attends whole key blocks, all the same ones."""
    block = attn.block
    pattern = attn.dense_pattern(num_blocks * block)
    heads = pattern.shape[0]
    tiles = pattern.view(heads, num_blocks, block, num_blocks, block)
    assert (tiles.all(dim=(2, 4)) == tiles.any(dim=(2, 4))).all()
    return tiles.any(dim=(2, 4))


def test_bigbird_blocks_per_query_block():
    num_blocks, heads = 16, 4
    attn = build("bigbird", heads=heads, max_len=BIGBIRD_MAX_LEN, **BIGBIRD, seed=0)
    blocks = bigbird_block_pattern(attn, num_blocks)
    assert blocks[:, [0, -1]].all() and blocks[:, :, [0, -1]].all()  # global blocks: first and last
    for query in range(1, num_blocks - 1):
        window = {b for b in (query - 1, query, query + 1)}
        for head in range(heads):
            seen = set(blocks[head, query].nonzero().flatten().tolist())
            assert window | {0, num_blocks - 1} <= seen
            assert len(seen - window - {0, num_blocks - 1}) == 2  # random blocks outside window and globals


def test_bigbird_layout_is_seeded_per_head_and_fixed():
    num_blocks, heads = 16, 4
    first, again, other = (
        bigbird_block_pattern(build("bigbird", heads=heads, max_len=BIGBIRD_MAX_LEN, **BIGBIRD, seed=seed), num_blocks)
        for seed in (0, 0, 1)
    )
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert len({tuple(first[h].flatten().tolist()) for h in range(heads)}) == heads
    # the global torch RNG plays no part
    torch.manual_seed(123)
    again = build("bigbird", heads=heads, max_len=BIGBIRD_MAX_LEN, **BIGBIRD, seed=0)
    assert torch.equal(first, bigbird_block_pattern(again, num_blocks))


BLOCK_SPARSE = [name for name in list_attention() if issubclass(ATTENTION.get(name)[0], BlockSparseAttention)]


@pytest.mark.parametrize("name", BLOCK_SPARSE)
def test_pattern_at_a_length_is_the_corner_of_the_pattern_at_max_len(name):
    """At its default config, the pattern over n tokens is the top-left n x n of the pattern over
    max_len: what a token attends never depends on how far its batch is padded."""
    max_len = 1000
    attn = build(name, max_len=max_len)
    full = attn.dense_pattern(max_len)
    for n in (1, 45, 300, 700, 999):
        assert torch.equal(attn.dense_pattern(n), full[:, :n, :n]), n


def test_bigbird_last_global_blocks_are_those_of_max_len():
    attn = build("bigbird", heads=4, max_len=BIGBIRD_MAX_LEN, **BIGBIRD)
    short = bigbird_block_pattern(attn, 10)
    # block 9 is not global at 10 blocks: it attends and is attended like any other block
    assert not short[:, 9].all() and not short[:, :, 9].all()
    assert torch.equal(short, bigbird_block_pattern(attn, 16)[:, :10, :10])
    with pytest.raises(ValueError, match="exceeds"):
        attn.dense_pattern(17 * BIGBIRD["block"])
    # max_len one past whole blocks (the encoder's CLS token): the last whole block is global
    one_past = bigbird_block_pattern(build("bigbird", heads=4, max_len=BIGBIRD_MAX_LEN + 1, **BIGBIRD), 17)
    assert one_past[:, 15].all() and one_past[:, :, 15].all()
    assert not one_past[:, 16].all() and not one_past[:, :, 16].all()


def test_bigbird_same_in_training_and_eval_and_sparse_at_short_lengths():
    q, k, v, mask = random_heads(dtype=torch.float64)
    attn = build("bigbird", **BIGBIRD)
    evaluated = attn.eval()(q, k, v, mask)
    assert torch.equal(attn.train()(q, k, v, mask), evaluated)
    # no fallback to full attention at a short length: 10 blocks, still sparse
    assert not attn.dense_pattern(LENGTH).all()


# -- approximating full attention where attention is local -------------------------------------


def clustered_heads(length=128, cluster=8, dim=16, scale=6.0, seed=0):
    """q = k: positions in contiguous clusters of `cluster` share a random direction, so each query
    attends almost only its own cluster; attention is then far from uniform and concentrated nearby."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(1, 2, length // cluster, dim, generator=gen), dim=-1)
    q = scale * directions.repeat_interleave(cluster, dim=2) + 0.3 * torch.randn(1, 2, length, dim, generator=gen)
    v = torch.randn(1, 2, length, dim, generator=gen, dtype=torch.float64)
    return q.double(), q.double(), v


APPROXIMATING = {
    "local": dict(window=8),
    "sparse": dict(block=16, summary=1),
    "bigbird": dict(block=8, random_blocks=1),
    "longformer": dict(window=8, global_tokens=1),
    "etc": dict(window=8, global_tokens=4),
}


@pytest.mark.parametrize("name", sorted(APPROXIMATING))
def test_beats_the_mean_of_values_where_attention_is_local(name):
    q, k, v = clustered_heads()
    full = softmax_attention(q, k, v)
    trivial = (v.mean(dim=-2, keepdim=True) - full).norm() / full.norm()
    assert trivial > 0.8  # full attention is far from uniform here
    attn = build(name, **APPROXIMATING[name])
    assert not attn.dense_pattern(q.shape[2]).all()
    error = (attn(q, k, v) - full).norm() / full.norm()
    assert error < 0.25 * trivial, (error, trivial)


# -- efficiency and dropout ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SMALL))
def test_no_tensor_of_n_squared_elements(name):
    n = 4096
    attn = build_attention(name, num_heads=1, head_dim=8, max_len=n)
    q, k, v = (torch.randn(1, 1, n, 8, requires_grad=True) for _ in range(3))
    mask = torch.arange(n)[None] < n - 100
    with LargestTensor() as tracker:
        attn(q, k, v, mask).sum().backward()
    assert tracker.largest < n * n / 4, tracker.largest  # BigBird: n * 512


@pytest.mark.parametrize("name", sorted(SMALL))
def test_no_query_row_is_ever_fully_masked(name, monkeypatch):
    """Backends differ on fully masked rows (zeros, or NaN that 0 * NaN spreads): padded queries
    attend their whole pattern instead, even in a fully padded sample."""
    checks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def checked(q, k, v, attn_mask=None, **kwargs):
        checks.append(attn_mask is None or bool(attn_mask.any(dim=-1).all()))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", checked)
    q, k, v, mask = random_heads()
    mask[2] = False
    build(name, **SMALL[name])(q, k, v, mask)
    assert checks and all(checks)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_dropout_only_in_training(name):
    q, k, v, mask = random_heads()
    attn = build(name, **SMALL[name], dropout=0.5)
    evaluated = attn(q, k, v, mask)
    assert torch.equal(attn(q, k, v, mask), evaluated)
    assert not close_at_real(attn.train()(q, k, v, mask), evaluated, mask, 1e-3)
