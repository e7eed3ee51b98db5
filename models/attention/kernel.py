"""Kernel attention: exp(q.k / sqrt(d)) replaced by a feature-map product phi(q).phi(k), computed
right to left, phi(Q) (phi(K)^T V), in time and memory linear in the length n.

Two variants share the contraction (`kernel_attention`), the fp32 precision and the key padding:
- `performer` (Choromanski et al., 2021, FAVOR+): random features of an orthogonal Gaussian
  projection, either positive features whose products estimate the softmax kernel without bias, or
  the generalised relu kernel; the projection is redrawn every `redraw_every` training steps. The
  relu kernel can also skip the projection (deterministic features, the configuration LRA timed).
- `linear` (Katharopoulos et al., 2020): the deterministic feature map elu(x) + 1.

Neither forms attention probabilities, so `config.dropout` has nothing to act on and is ignored
(LRA's JAX code discarded its attention dropout rate for both as well).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from lra.config import AttentionConfig, Choice, at_least
from models.attention import Attention, check_config, register_attention
from models.attention.masking import mask_scores

NORMALISER_EPS = 1e-6  # added to phi(q).sum_j phi(k_j): a query with no real key gets 0, not NaN
SOFTMAX_FEATURE_EPS = 1e-6  # added to each positive feature (FAVOR+'s numerical stabiliser)
RELU_FEATURE_EPS = 1e-3  # added to each relu feature (the generalised kernel's kernel_epsilon)


def kernel_attention(
    phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor]
) -> torch.Tensor:
    """phi(Q) (phi(K)^T V) / (phi(Q) phi(K)^T 1 + eps), the normalised kernel attention, in O(n).

    phi_q, phi_k: (batch, heads, n, m) finite features; v: (batch, heads, n, d). The normaliser
    rides along as a column of ones appended to V, so that one pair of matmuls gives both.

    Padded keys are removed after the feature map, by zeroing their rows of phi(K): phi(0) is not
    0, so zeroing them before the map (or zeroing only V) would leave them in the numerator or the
    normaliser. phi(K) enters only through phi(K)^T [V, 1], a sum over keys of phi(k_j) [v_j, 1]^T,
    so its rows are zeroed as the rows of [V, 1]: the same terms vanish, with d + 1 columns to mask
    instead of m.
    """
    if key_padding_mask is None:
        real = v.new_ones(v.shape[:-1] + (1,))
    else:
        real = key_padding_mask[:, None, :, None].to(v.dtype).expand(v.shape[:-1] + (1,))
    # (..., d + 1, m): this way round, the gradient of phi(K) comes out of the matmul contiguous
    context = torch.cat([v * real, real], dim=-1).transpose(-2, -1) @ phi_k
    numerator, normaliser = (phi_q @ context.transpose(-2, -1)).split([v.shape[-1], 1], dim=-1)
    return numerator / (normaliser + NORMALISER_EPS)


class KernelAttention(Attention):
    """The call contract around `kernel_attention`; subclasses give the feature maps.

    The kernel math runs in at least fp32 with autocast off: exponentials and sums over n keys
    overflow or lose most of their digits in fp16/bf16. The output comes back in q's dtype.
    """

    linear_memory = True

    def feature_maps(
        self, q: torch.Tensor, k: torch.Tensor, key_padding_mask: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """phi(Q), phi(K), each (batch, heads, n, m)."""
        raise NotImplementedError

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        dtype = torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(q.device.type, enabled=False):
            q32, k32, v32 = (t.to(dtype) for t in (q, k, v))
            phi_q, phi_k = self.feature_maps(q32, k32, key_padding_mask)
            return kernel_attention(phi_q, phi_k, v32, key_padding_mask).to(q.dtype)


# --- performer ---------------------------------------------------------------------------------


class PerformerKernel(Choice):
    softmax = "softmax"  # positive random features: an unbiased estimate of softmax attention (FAVOR+)
    relu = "relu"  # generalised attention with the kernel relu(w.q) relu(w.k)


class PerformerFeatures(Choice):
    random = "random"  # an orthogonal random projection to num_features, redrawn during training
    deterministic = "deterministic"  # no projection: the kernel of q and k themselves (relu only; LRA's default)


class FeatureNorms(Choice):
    chi = "chi"  # each row rescaled to the norm of an independent Gaussian vector (chi(d)-distributed)
    sqrt_d = "sqrt_d"  # every row rescaled to sqrt(d)


@dataclass
class PerformerConfig(AttentionConfig):
    name: str = "performer"
    kernel: PerformerKernel = PerformerKernel.softmax
    features: PerformerFeatures = PerformerFeatures.random
    num_features: int = field(default=256, metadata=at_least(1))
    feature_norms: FeatureNorms = FeatureNorms.chi
    redraw_every: int = field(default=1000, metadata=at_least(0))  # 0: never


def orthogonal_gaussian_projection(
    num_features: int, dim: int, norms: FeatureNorms, generator: torch.Generator
) -> torch.Tensor:
    """(num_features, dim) projection: blocks of `dim` orthonormal rows (Q of the QR of a square
    Gaussian matrix; the last block truncated), each row then rescaled as `norms` says, so that rows
    are marginally Gaussian-like but exactly orthogonal within a block (lower estimator variance)."""
    blocks = math.ceil(num_features / dim)
    orthonormal, _ = torch.linalg.qr(torch.randn(blocks, dim, dim, generator=generator))
    rows = orthonormal.transpose(-2, -1).reshape(blocks * dim, dim)[:num_features]
    if norms is FeatureNorms.chi:
        scale = torch.randn(num_features, dim, generator=generator).norm(dim=-1)
    else:
        scale = torch.full((num_features,), math.sqrt(dim))
    return rows * scale[:, None]


def positive_random_features(
    x: torch.Tensor, projection: torch.Tensor, *, keys: bool = False, key_padding_mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """FAVOR+ features exp(w.x' - |x'|^2/2) + eps of x' = x / d^(1/4), for which E[phi(q).phi(k)] =
    exp(q.k / sqrt(d)), each times a positive factor that cancels in the normalisation (eps aside).

    The factor is exp(-max) of the exponents: per query over its features (a query's |x'|^2/2 is
    constant along that max and cancels with it, so it is left out), or per sequence over the
    features of its real keys, so that exp never overflows and padded keys cannot set the shift.
    The shift is a constant, so no gradient flows through it. Padded keys get exp(-inf) = 0
    whatever they hold: their features are zeroed after the map anyway, and their gradients stay
    finite.
    """
    dim = x.shape[-1]
    w = projection * dim**-0.25  # x' = x / d^(1/4), folded into the small matrix
    if keys:  # w.x' - |x'|^2/2 out of one matmul: [x, |x|^2] against [w', -1/(2 sqrt(d))]
        x = torch.cat([x, x.square().sum(-1, keepdim=True)], dim=-1)
        w = torch.cat([w, w.new_full((len(w), 1), -0.5 / math.sqrt(dim))], dim=-1)
    exponents = x @ w.transpose(0, 1)
    shift = exponents.detach().amax(-1, keepdim=True)  # (batch, heads, n, 1)
    if keys:
        if key_padding_mask is not None:
            real = key_padding_mask[:, None, :, None]
            shift = torch.where(real, mask_scores(shift, real).amax(-2, keepdim=True), math.inf)
        else:
            shift = shift.amax(-2, keepdim=True)
    # in place: the matmul's output is not needed by its backward, nor exp's input by exp's
    return exponents.sub_(shift).exp_() + SOFTMAX_FEATURE_EPS


def relu_features(x: torch.Tensor, projection: Optional[torch.Tensor]) -> torch.Tensor:
    """relu(w.x) + eps, the generalised-attention features of the Performer paper's relu kernel, or
    relu(x) + eps without a projection."""
    if projection is None:
        return F.relu(x) + RELU_FEATURE_EPS
    return (x @ projection.transpose(0, 1)).relu_() + RELU_FEATURE_EPS


@register_attention(PerformerConfig)
class PerformerAttention(KernelAttention):
    """Performer attention: random features of a projection shared by the heads of a layer and
    redrawn during training (FAVOR+), or deterministic relu features.

    State of random features (all in the state_dict, so a resumed run continues identically):
    `projection`, `seed` (drawn from torch's RNG at construction) and `steps` (optimizer steps seen).
    The d-th draw uses a generator seeded with seed + d; draw 0 is made at construction. The
    schedule runs on Python copies of seed and steps, read from the buffers at construction and
    when a state_dict is loaded: counting a step and redrawing never read a tensor back from the
    device. Deterministic features have no state; num_features, feature_norms and redraw_every
    go unused.
    """

    def __init__(self, config: PerformerConfig, *, num_heads: int, head_dim: int, max_len: int) -> None:
        super().__init__()
        self.kernel = PerformerKernel(config.kernel)
        self.register_buffer("projection", None)
        if PerformerFeatures(config.features) is PerformerFeatures.deterministic:
            check_config(self.kernel is PerformerKernel.relu, "features",
                         "deterministic needs kernel relu: the softmax kernel is only estimated by random features")
            return
        self.norms = FeatureNorms(config.feature_norms)
        self.redraw_every = config.redraw_every
        self.register_buffer("seed", torch.randint(2**62, ()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("projection", torch.empty(config.num_features, head_dim))
        self.register_load_state_dict_post_hook(PerformerAttention._read_schedule)
        self._read_schedule()
        self._draw()

    def _read_schedule(self, *_: object) -> None:
        """Copy the `seed` and `steps` buffers into the Python numbers the schedule runs on (also a
        post-hook of load_state_dict, whose arguments it ignores)."""
        self.draw_seed, self.step_count = int(self.seed), int(self.steps)

    def _draw(self) -> None:
        """Set `projection` to the draw that the step count calls for."""
        draw = self.step_count // self.redraw_every if self.redraw_every else 0
        generator = torch.Generator().manual_seed(self.draw_seed + draw)
        num_features, dim = self.projection.shape
        with torch.no_grad():
            self.projection.copy_(orthogonal_gaussian_projection(num_features, dim, self.norms, generator))

    def on_train_step(self) -> None:
        """Count an optimizer step; redraw the projection every `redraw_every` of them (never in eval)."""
        if not self.training or self.projection is None:
            return
        self.step_count += 1
        self.steps.add_(1)  # the checkpoint's count, kept in step on the device without reading it
        if self.redraw_every and self.step_count % self.redraw_every == 0:
            self._draw()

    def feature_maps(
        self, q: torch.Tensor, k: torch.Tensor, key_padding_mask: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        projection = None if self.projection is None else self.projection.to(q.dtype)
        if self.kernel is PerformerKernel.relu:
            return relu_features(q, projection), relu_features(k, projection)
        return (
            positive_random_features(q, projection),
            positive_random_features(k, projection, keys=True, key_padding_mask=key_padding_mask),
        )


# --- linear ------------------------------------------------------------------------------------


@dataclass
class LinearAttentionConfig(AttentionConfig):
    name: str = "linear"


def elu_features(x: torch.Tensor) -> torch.Tensor:
    """elu(x) + 1: positive everywhere, so the normaliser never vanishes at real keys."""
    return F.elu(x) + 1.0


@register_attention(LinearAttentionConfig)
class LinearAttention(KernelAttention):
    """Non-causal linear attention with the feature map elu(x) + 1."""

    def __init__(self, config: LinearAttentionConfig, *, num_heads: int, head_dim: int, max_len: int) -> None:
        super().__init__()

    def feature_maps(
        self, q: torch.Tensor, k: torch.Tensor, key_padding_mask: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return elu_features(q), elu_features(k)
