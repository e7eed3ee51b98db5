"""Low-rank attention: Linformer (Wang et al., 2020) and Nystromformer (Xiong et al., 2021).

Both replace the n x n attention matrix by products of thin n x r and r x n factors (r = rank k
of Linformer's length projections, or Nystromformer's number of landmarks), so time and memory
grow linearly with n.

Padding: a projected key slot or landmark that no real token contributes to is masked out, so that
a padded sample gives the output its unpadded, shorter version would (see each class).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lra.config import AttentionConfig, Choice, at_least
from lra.errors import LRAError
from models.attention import Attention, check_config, register_attention
from models.attention.masking import mask_scores


def zero_padding(x: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """`x` (batch, heads, length, dim) with the rows at padded positions set to exactly zero.

    masked_fill rather than a product with the mask, so that inf or NaN at padding cannot leak."""
    if key_padding_mask is None:
        return x
    return x.masked_fill(~key_padding_mask[:, None, :, None], 0.0)


# --------------------------------------------------------------------------------------- Linformer


class LinformerSharing(Choice):
    """Which of the length projections E (keys) and F (values) are shared (Linformer, section 4)."""

    none = "none"  # a separate E and F for every head
    headwise = "headwise"  # one E and one F shared by all heads
    key_value = "key_value"  # E = F, shared by all heads (what the LRA code ran)


@dataclass
class LinformerConfig(AttentionConfig):
    name: str = "linformer"
    k: int = field(default=16, metadata=at_least(1))  # rank: rows of the projected keys and values
    sharing: LinformerSharing = LinformerSharing.key_value


@register_attention(LinformerConfig)
class LinformerAttention(Attention):
    """softmax(q (E^T k)^T / sqrt(d)) (F^T v) with learned E, F in R^{max_len x k}, sliced to n rows.

    K and V are zeroed at padding before projecting (else padded values leak into E^T K), and a
    projected slot that no real token reaches (only possible with structured E, such as the identity)
    is masked out of the softmax, as it would be absent from the unpadded sequence's attention.
    """

    linear_memory = True

    def __init__(self, config: LinformerConfig, *, num_heads: int, head_dim: int, max_len: int) -> None:
        super().__init__()
        sharing = LinformerSharing(config.sharing)
        projections = 1 if sharing is LinformerSharing.key_value else 2
        heads = num_heads if sharing is LinformerSharing.none else 1
        self.max_len = max_len
        self.dropout = config.dropout
        # (E or E/F, heads or 1, max_len, k); Xavier-uniform over (max_len, k), as in the LRA code.
        self.projection = nn.Parameter(torch.empty(projections, heads, max_len, config.k))
        bound = math.sqrt(6.0 / (max_len + config.k))
        nn.init.uniform_(self.projection, -bound, bound)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        length = k.shape[-2]
        if length > self.max_len:
            raise LRAError(
                f"linformer: sequence length {length} exceeds its max_len {self.max_len} "
                f"(the length projections have {self.max_len} rows)"
            )
        projection = self.projection[:, :, :length].to(k.dtype)
        e, f = projection[0], projection[-1]  # (heads or 1, n, k)
        keys = e.transpose(-2, -1) @ zero_padding(k, key_padding_mask)  # (batch, heads, k, d)
        values = f.transpose(-2, -1) @ zero_padding(v, key_padding_mask)
        scores = (q @ keys.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (batch, heads, n, k)
        if key_padding_mask is not None:
            scores = mask_scores(scores, self._reached_slots(e, key_padding_mask))
        probs = F.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)
        return probs @ values

    @staticmethod
    def _reached_slots(e: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        """(batch, heads or 1, 1, k) bool: projected slots with a nonzero weight on some real token."""
        real = key_padding_mask[:, None, None, :].to(e.dtype)
        return (real @ e.detach().abs()) > 0


# ----------------------------------------------------------------------------------- Nystromformer


@dataclass
class NystromConfig(AttentionConfig):
    name: str = "nystrom"
    num_landmarks: int = field(default=64, metadata=at_least(1))
    pinv_iterations: int = field(default=6, metadata=at_least(0))
    conv_kernel_size: int = field(default=35, metadata=at_least(0))  # odd; 0: no depthwise-convolution skip on V


@register_attention(NystromConfig)
class NystromAttention(Attention):
    """Nystrom approximation of softmax attention through segment-mean landmarks:

        softmax(Q Kl^T) pinv(softmax(Ql Kl^T)) softmax(Ql K^T) V   (+ depthwise conv of V)

    scores scaled by 1/sqrt(d). Landmarks are the means of `num_landmarks` contiguous segments of
    nearly equal size over each sample's own real tokens (sizes differ by at most one), so no internal
    padding is needed, padding never enters a mean, and a padded sample gets the landmarks of its
    unpadded version. A sample with fewer real tokens than landmarks gets one landmark per token
    (exact attention, up to the pseudo-inverse) and empty landmarks, which are masked out: they get
    zero weight and an identity block in the landmark kernel, so they cannot influence the rest.

    The pseudo-inverse is the iterative one of the paper, with the initialisation
    Z0 = A^T / (||A||_1 ||A||_inf) computed per sample and head (the original divided by a maximum
    over the whole batch, coupling samples). The kernel math runs in fp32 (fp64 for fp64 inputs),
    outside autocast: the iterative inverse is not accurate in bf16. Dropout, when set, applies to
    the query-to-landmark probabilities (the reference implementation had none).
    """

    linear_memory = True

    def __init__(self, config: NystromConfig, *, num_heads: int, head_dim: int, max_len: int) -> None:
        super().__init__()
        kernel = config.conv_kernel_size
        check_config(kernel == 0 or kernel % 2, "conv_kernel_size", f"must be 0 (off) or odd, got {kernel}")
        self.num_landmarks = config.num_landmarks
        self.pinv_iterations = config.pinv_iterations
        self.dropout = config.dropout
        self.conv: Optional[nn.Parameter] = None
        if config.conv_kernel_size:
            # One filter per head over the length (depthwise), initialised as nn.Conv1d would be.
            self.conv = nn.Parameter(torch.empty(num_heads, config.conv_kernel_size))
            bound = 1.0 / math.sqrt(config.conv_kernel_size)
            nn.init.uniform_(self.conv, -bound, bound)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        dtype = torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(device_type=q.device.type, enabled=False):
            out = self._attend(q.to(dtype), k.to(dtype), v.to(dtype), key_padding_mask)
        return out.to(q.dtype)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        q, k, v = (zero_padding(x, key_padding_mask) for x in (q, k, v))
        real = key_padding_mask if key_padding_mask is not None else q.new_ones(1, q.shape[-2], dtype=torch.bool)
        means = segment_means(real, self.num_landmarks, q.dtype)  # (batch or 1, 1, m, n)
        landmark_ok = (means.sum(-1) > 0)[:, :, None, :]  # (batch or 1, 1, 1, m): non-empty segments
        scale = 1.0 / math.sqrt(q.shape[-1])
        q_landmarks, k_landmarks = means @ q, means @ k  # (batch, heads, m, d)

        to_landmarks = mask_scores((q @ k_landmarks.transpose(-2, -1)) * scale, landmark_ok).softmax(-1)
        to_landmarks = F.dropout(to_landmarks, p=self.dropout, training=self.training)
        among_landmarks = mask_scores((q_landmarks @ k_landmarks.transpose(-2, -1)) * scale, landmark_ok).softmax(-1)
        eye = torch.eye(self.num_landmarks, dtype=q.dtype, device=q.device)
        among_landmarks = torch.where(landmark_ok.transpose(-2, -1), among_landmarks, eye)
        from_landmarks = (q_landmarks @ k.transpose(-2, -1)) * scale
        if key_padding_mask is not None:
            from_landmarks = mask_scores(from_landmarks, key_padding_mask[:, None, None, :])
        out = (to_landmarks @ iterative_pinv(among_landmarks, self.pinv_iterations)) @ (from_landmarks.softmax(-1) @ v)
        if self.conv is not None:
            out = out + depthwise_conv(v, self.conv.to(v.dtype))
        return out


def segment_means(real: torch.Tensor, segments: int, dtype: torch.dtype) -> torch.Tensor:
    """(batch, 1, segments, length) averaging matrix over contiguous segments of each row's real tokens.

    `real`: (batch, length) bool. The r-th real token (in order) of a row with c real tokens goes to
    segment floor(r * segments / c): sizes differ by at most one, every segment is non-empty when
    c >= segments, and padded tokens get weight zero. An empty segment's row is all zeros.
    """
    count = real.sum(-1, keepdim=True).clamp(min=1)
    rank = real.cumsum(-1) - 1
    segment = torch.where(real, rank * segments // count, -1)  # (batch, length)
    member = segment[:, None, :] == torch.arange(segments, device=real.device)[:, None]
    weights = member.to(dtype)
    return (weights / weights.sum(-1, keepdim=True).clamp(min=1))[:, None]


def iterative_pinv(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of each matrix in `a` (..., m, m) by the Nystromformer iteration.

    Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4, whose residual I - A Z falls as R^3 (3 + R) / 4,
    from Z0 = A^T / (||A||_1 ||A||_inf): per matrix, so a sample never depends on the rest of its batch.
    """
    norm_1 = a.abs().sum(-2).amax(-1)  # largest column sum
    norm_inf = a.abs().sum(-1).amax(-1)  # largest row sum
    z = a.transpose(-2, -1) / (norm_1 * norm_inf)[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Zero-padded "same" convolution along the length of `x` (batch, heads, n, d), one odd-sized
    filter per head (`weight`: (heads, kernel)), shared by the d channels.

    As batched matmuls: the length is cut into blocks of b >= kernel // 2 positions, and each output
    block is a (b x 3b) banded Toeplitz matrix times its block and the two neighbouring ones. On the
    CPU this is several times faster, forward and backward, than the depthwise F.conv2d it equals.
    """
    batch, heads, length, dim = x.shape
    kernel = weight.shape[-1]
    radius = kernel // 2
    block = max(32, radius)
    blocks = -(-length // block)
    # One zero block before, the tail of the last block and one zero block after.
    padded = F.pad(x, (0, 0, block, (blocks + 1) * block - length)).reshape(batch, heads, blocks + 2, block, dim)
    windows = torch.cat([padded[:, :, :-2], padded[:, :, 1:-1], padded[:, :, 2:]], dim=-2)
    # Output i of a block reads window position j through tap j - i - block + radius.
    tap = torch.arange(3 * block, device=x.device) - torch.arange(block, device=x.device)[:, None] - block + radius
    inside = (tap >= 0) & (tap < kernel)
    toeplitz = torch.where(inside, weight[:, tap.clamp(0, kernel - 1)], 0.0)  # (heads, block, 3 block)
    out = toeplitz[:, None] @ windows  # (batch, heads, blocks, block, dim)
    return out.view(batch, heads, blocks * block, dim)[:, :, :length]
