"""PyTorch M³D model (paper Section V): hierarchical text and frame encoding, the DFFM with the MMCM, and the
four task heads.

The file reads like the paper: level features (Eq. 7) → the VAE bottleneck and one DFFM level (Eq. 8–10) → the
level sum (Eq. 11) → one DFFM direction → the two-direction DFFM (Eq. 8–12) and the Table III baseline fusions →
the MMCM (Eq. 13–14) and blank filling → the entity, pair and grounding heads (Eq. 15–18) →
`M3DPreTrainedModel` → `M3DModel`. The criterion (Eq. 19–24) is `loss_m3d`, the tensor decoding (Viterbi,
connected components, slot selection) is `decoding_m3d`, and turning decoded tensors into documents is the
processor's `post_process_extraction`.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchcrf import CRF
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.utils import ModelOutput

from .configuration_m3d import M3DConfig
from .decoding_m3d import (
    bio_tags_to_spans,
    chain_mask_of,
    connected_components,
    coref_adjacency,
    decode_relations,
    documents_from_decoded,
    pad_spans,
    select_grounding_slots,
    viterbi_decode,
)
from .loss_m3d import M3DLoss
from .schema import check_protocol

NUM_LEVELS = 3  # low, middle, high (Eq. 7)


@dataclass
class M3DModelOutput(ModelOutput):
    """
    Output of [`M3DModel.forward`]. Losses are present when the batch carries the matching labels.

    Args:
        loss (`torch.FloatTensor` of shape `()`): Eq. 24 plus `vae_kl_weight` times `kl_loss`.
        ner_loss, coref_loss, re_loss, grounding_type_loss, grounding_box_loss (`torch.FloatTensor` of shape `()`):
            the unweighted task terms (Eq. 19–23).
        grounding_loss (`torch.FloatTensor` of shape `()`): `grounding_type_loss + grounding_box_loss`.
        kl_loss (`torch.FloatTensor` of shape `()`): mean KL divergence of the DFFM's VAE codes (0 without it).
        ner_logits (`(B, W, 1 + 2·|entity_types|)`): CRF emissions per word (Eq. 15).
        coref_logits (`(B, E, E, 2)`): mention-pair scores (Eq. 16), when `entity_spans` are given.
        re_logits (`(B, C, C, 1 + |relation_types|)`): chain-pair scores [subject, object], class 0 = no relation
            (Eq. 17), when `entity_chain` is given too.
        grounding_logits (`(B, F, S, |grounding_types| + 1)`): per-slot type scores, last class = none (Eq. 18).
        grounding_boxes (`(B, F, S, 4)`): per-slot boxes (cx, cy, w, h), sigmoid-normalised (Eq. 18).
        text_features (`(B, W, d_h)`): H^{g→x} per word (Eq. 11), normalised, as the heads read it.
        frame_features (`(B, F, d_h)`): H^{x→g} per frame (Eq. 12); per patch, `(B, F, P, d_h)`, with
            `config.grounding_pooling="slots"`.
    """

    loss: torch.FloatTensor | None = None
    ner_loss: torch.FloatTensor | None = None
    coref_loss: torch.FloatTensor | None = None
    re_loss: torch.FloatTensor | None = None
    grounding_loss: torch.FloatTensor | None = None
    grounding_type_loss: torch.FloatTensor | None = None
    grounding_box_loss: torch.FloatTensor | None = None
    kl_loss: torch.FloatTensor | None = None
    ner_logits: torch.FloatTensor | None = None
    coref_logits: torch.FloatTensor | None = None
    re_logits: torch.FloatTensor | None = None
    grounding_logits: torch.FloatTensor | None = None
    grounding_boxes: torch.FloatTensor | None = None
    text_features: torch.FloatTensor | None = None
    frame_features: torch.FloatTensor | None = None


@dataclass
class M3DDecoderOutput(ModelOutput):
    """
    Output of [`M3DModel.decode`]: the decoded batch, as tensors; [`M3DProcessor.post_process_extraction`] turns
    it into one document per row. Word spans are `[start, end)` over the batch's words.

    Args:
        entities (`torch.LongTensor` of shape `(N, 4)`): CRF entities (Eq. 15), rows `[row, start, end, type]`
            ordered by row then start; `type` indexes `config.entity_types`.
        mention_spans (`torch.LongTensor` of shape `(B, M, 2)`): the mentions chains and relations are over: the
            gold `entity_spans` (protocol `"gold_pairs"`) or the predicted entities (`"end_to_end"`).
        mention_mask (`torch.BoolTensor` of shape `(B, M)`): real mentions.
        mention_chain (`torch.LongTensor` of shape `(B, M)`): predicted chain of each mention, the connected
            components of the positive coreference pairs (Eq. 16), numbered 0, 1, … per row; -1 on padding.
        relation_chain (`torch.LongTensor` of shape `(B, M)`): the chains relations are between: the gold
            `entity_chain` (`"gold_pairs"`) or `mention_chain` (`"end_to_end"`).
        relations (`torch.LongTensor` of shape `(R, 4)`): `[row, subject, object, type]`, subject and object
            numbered as in `relation_chain`, `type` indexing `config.relation_types` (Eq. 17).
        relation_scores (`torch.FloatTensor` of shape `(R,)`): their probability of a relation, 1 − p(none).
        grounding_rows, grounding_frames, grounding_types (`torch.LongTensor` of shape `(G,)`): the selected
            grounding slots' row, frame (index among the batch's frames of that row) and type.
        grounding_scores (`torch.FloatTensor` of shape `(G,)`): their type probability.
        grounding_boxes (`torch.FloatTensor` of shape `(G, 4)`): their boxes (cx, cy, w, h) in [0, 1] (Eq. 18).
    """

    entities: torch.LongTensor | None = None
    mention_spans: torch.LongTensor | None = None
    mention_mask: torch.BoolTensor | None = None
    mention_chain: torch.LongTensor | None = None
    relation_chain: torch.LongTensor | None = None
    relations: torch.LongTensor | None = None
    relation_scores: torch.FloatTensor | None = None
    grounding_rows: torch.LongTensor | None = None
    grounding_frames: torch.LongTensor | None = None
    grounding_types: torch.LongTensor | None = None
    grounding_scores: torch.FloatTensor | None = None
    grounding_boxes: torch.FloatTensor | None = None


@dataclass
class M3DLevels:
    """An encoder's output H (Eq. 5/6) and its low, middle and high features H_l, H_m, H_h (Eq. 7), each of the
    same shape: `(B, W, d_h)` for words, `(B, F, P, d_h)` for frame patches."""

    output: torch.Tensor
    low: torch.Tensor
    middle: torch.Tensor
    high: torch.Tensor

    @classmethod
    def from_stack(cls, stack: torch.Tensor) -> M3DLevels:
        """From a `(4, ...)` stack in field order (how the encoders' windows and words are pooled at once)."""
        return cls(*stack.unbind(0))

    @property
    def levels(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.low, self.middle, self.high


@dataclass
class M3DKeys:
    """The level features of one modality as the keys of a DFFM direction: `levels` (low, middle, high), each
    `(B, L, d_h)`, and `mask` `(B, L)` (True = a position to attend to). For rows missing the modality, the
    MMCM's generated features (Eq. 13–14) or blank ones."""

    levels: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    mask: torch.Tensor


@dataclass
class M3DModalities:
    """What every fusion reads: the words' and the frame patches' level features with their masks, and both
    modalities as keys (completed for the rows that miss one)."""

    text: M3DLevels  # (B, W, d_h) each
    word_mask: torch.Tensor  # (B, W) bool
    frames: M3DLevels  # (B, F, P, d_h) each
    frame_mask: torch.Tensor  # (B, F) bool
    text_keys: M3DKeys
    frame_keys: M3DKeys

    @property
    def patch_mask(self) -> torch.Tensor:
        """(B, F·P): the frame mask repeated over each frame's patches."""
        return repeat_over_patches(self.frame_mask, self.frames.output.shape[2])


@dataclass
class M3DFusionOutput:
    """A fusion's result: words `(B, W, d_h)`, frame patches `(B, F, P, d_h)`, and the KL term (a scalar)."""

    text: torch.Tensor
    frames: torch.Tensor
    kl: torch.Tensor


def _segment_rows(index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Row of each element of `index` (B, N) (-1 = none) in a flat (B·num_segments + 1) table; the last row
    collects the elements of no segment."""
    batch = index.shape[0]
    offsets = torch.arange(batch, device=index.device)[:, None] * num_segments
    return torch.where(index >= 0, index + offsets, batch * num_segments).reshape(-1)


def segment_mean(values: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Mean of `values` (B, N, D) per segment `index` (B, N) (-1 = none) → (B, num_segments, D), zeros if
    empty."""
    batch, length, dim = values.shape
    flat = _segment_rows(index, num_segments)
    sums = values.new_zeros(batch * num_segments + 1, dim).index_add_(0, flat, values.reshape(-1, dim))
    counts = values.new_zeros(batch * num_segments + 1).index_add_(0, flat, values.new_ones(batch * length))
    means = sums / counts.clamp(min=1)[:, None]
    return means[:-1].view(batch, num_segments, dim)


def segment_max(values: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Element-wise maximum of `values` (B, N, D) per segment `index` (B, N) (-1 = none) → (B, num_segments,
    D), zeros if empty."""
    batch, _, dim = values.shape
    rows = _segment_rows(index, num_segments)[:, None].expand(-1, dim)
    table = values.new_zeros(batch * num_segments + 1, dim)
    maxima = table.scatter_reduce(0, rows, values.reshape(-1, dim), "amax", include_self=False)
    return maxima[:-1].view(batch, num_segments, dim)


def scale_gradient(values: torch.Tensor, scale: float) -> torch.Tensor:
    """`values` unchanged in the forward pass, their gradient multiplied by `scale` in the backward pass (0: detached;
    the gradient reversal layer of Ganin & Lempitsky, 2015, with a positive factor)."""
    if scale == 1:
        return values
    frozen = values.detach()
    return frozen + scale * (values - frozen)


def patch_centres(grid: int) -> torch.Tensor:
    """Normalised (x, y) centres of the patches of a `grid` × `grid` patch grid, row-major → (grid², 2)."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return (torch.stack([cols, rows], -1).reshape(-1, 2).float() + 0.5) / grid


def span_mean(features: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Mean of exactly the words `[start, end)` of each span (B, E, 2) over features (B, W, D) → (B, E, D).

    Uses cumulative sums: (cs[end] − cs[start]) / (end − start); an empty span gives zeros.
    """
    batch, entities, _ = spans.shape
    cumulative = F.pad(features.cumsum(dim=1), (0, 0, 1, 0))
    bounds = spans.clamp(0, features.shape[1])
    index = bounds.reshape(batch, 2 * entities, 1).expand(-1, -1, features.shape[-1])
    start_sum, end_sum = cumulative.gather(1, index).view(batch, entities, 2, -1).unbind(2)
    length = (bounds[..., 1] - bounds[..., 0]).clamp(min=1)[..., None].to(features.dtype)
    return (end_sum - start_sum) / length


def closest_mention_gaps(spans: torch.Tensor, chain: torch.Tensor, num_chains: int) -> torch.Tensor:
    """For each ordered pair of chains, the words between their two closest mentions → (B, C, C, 2) spans
    `[start, end)`; empty when those mentions overlap or touch, (0, 0) when a chain has no mention.

    spans (B, E, 2) mention word spans, chain (B, E) each mention's chain (-1 = padding). The closest pair is the
    one with the fewest words between (the first in mention order on a tie), found for all chain pairs at once
    with one scatter-min over the (B, E, E) mention pairs.
    """
    batch, mentions = chain.shape
    if mentions == 0:
        return spans.new_zeros(batch, num_chains, num_chains, 2)
    start, end = spans[..., 0], spans[..., 1]
    first = start[:, :, None] <= start[:, None, :]  # mention a starts first
    gap_start = torch.where(first, end[:, :, None], end[:, None, :])
    gap_end = torch.maximum(torch.where(first, start[:, None, :], start[:, :, None]), gap_start)
    pairs = mentions * mentions
    key = (gap_end - gap_start) * pairs + torch.arange(pairs, device=chain.device).view(mentions, mentions)
    real = (chain[:, :, None] >= 0) & (chain[:, None, :] >= 0)
    slot = torch.where(real, chain[:, :, None] * num_chains + chain[:, None, :], num_chains * num_chains)
    none = torch.iinfo(key.dtype).max
    best = key.new_full((batch, num_chains * num_chains + 1), none).scatter_reduce(
        1, slot.flatten(1), key.flatten(1), "amin"
    )[:, :-1]
    pair = (best % pairs).clamp(max=pairs - 1)
    gaps = torch.stack([gap_start.flatten(1).gather(1, pair), gap_end.flatten(1).gather(1, pair)], -1)
    return torch.where((best != none)[..., None], gaps, 0).view(batch, num_chains, num_chains, 2)


def repeat_over_patches(frame_mask: torch.Tensor, patches: int) -> torch.Tensor:
    """(B, F) frame mask → (B, F·P), each frame's value repeated over its `patches` patches."""
    return frame_mask.repeat_interleave(patches, dim=1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` holds (0 when nothing does)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def layer_thirds(num_layers: int) -> list[tuple[int, int]]:
    """Layer ranges `[lo, hi)` over hidden states 1..n_l for the low, middle and high features (Eq. 7).

    With fewer than three layers the thirds overlap: every range holds at least one layer.
    """
    return [(1 + (k * num_layers) // 3, 1 + math.ceil((k + 1) * num_layers / 3)) for k in range(NUM_LEVELS)]


def _no_pooler_kwargs(config) -> dict:
    """`add_pooling_layer=False` when the encoder class accepts it (the pooler is unused)."""
    model_class = MODEL_MAPPING[type(config)] if type(config) in MODEL_MAPPING else None
    accepts = (
        model_class is not None and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters
    )
    return {"add_pooling_layer": False} if accepts else {}


def _pretrained_encoder(name_or_path: str) -> PreTrainedModel:
    """`AutoModel.from_pretrained` without the unused pooler where the class allows it."""
    return AutoModel.from_pretrained(
        name_or_path, **_no_pooler_kwargs(AutoConfig.from_pretrained(name_or_path))
    )


def is_video_encoder(vision_config) -> bool:
    """Whether the vision encoder reads a clip as one tensor `(B, T, 3, H, W)` (VideoMAE, ViViT: a `num_frames` and
    a `tubelet_size` in its config) rather than one image at a time (ViT-like)."""
    return hasattr(vision_config, "num_frames") and hasattr(vision_config, "tubelet_size")


def patch_grid(vision_config) -> tuple[int, int] | None:
    """(rows, columns) of the patches of one frame: `image_size // patch_size` (ViT, VideoMAE) or over the spatial
    part of `tubelet_size` (ViViT); None when the config gives no int sizes."""
    size, patch = getattr(vision_config, "image_size", None), getattr(vision_config, "patch_size", None)
    if patch is None and isinstance(getattr(vision_config, "tubelet_size", None), (list, tuple)):
        patch = vision_config.tubelet_size[1:]
    sizes = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    patches = tuple(patch) if isinstance(patch, (list, tuple)) else (patch, patch)
    if not all(isinstance(value, int) and value > 0 for value in (*sizes, *patches)):
        return None
    return sizes[0] // patches[0], sizes[1] // patches[1]


class M3DTubeletFrames(nn.Module):
    """Per-frame patch features from a video encoder that reads a clip as one tensor (VideoMAE, ViViT; Table III).

    Such an encoder embeds a clip of exactly T = `num_frames` frames (its config: VideoMAE-base 16, ViViT-B 32) as
    non-overlapping t × p × p tubelets: ViViT's "tubelet embedding" (Arnab et al., ICCV 2021, §3.2) and VideoMAE's
    "cube embedding" (Tong et al., NeurIPS 2022, §3.3), t = 2 in both. Its tokens are ordered by (temporal index,
    patch row, patch column), after a leading CLS token for ViViT. The rows' frames are mapped to the clip and the
    tokens back to the frames:

    - clip: a row with n ≤ T real frames (a prefix of its frame mask) fills the T positions in temporal order,
      position c showing frame ⌊c·n/T⌋, so every frame is shown (T/n times each when n divides T);
    - back: the token of temporal index k covers the clip positions k·t … k·t+t−1, and a frame's P = (H/p)·(W/p)
      patch features are the means, patch by patch, of the tokens covering the positions that show it.

    A frame thus gets per-patch features as from a frame encoder, and the grounding boxes stay per annotated frame.
    """

    def __init__(self, vision_config):
        super().__init__()
        self.clip_length = vision_config.num_frames
        tubelet = vision_config.tubelet_size
        self.tubelet = tubelet if isinstance(tubelet, int) else tubelet[0]
        grid = patch_grid(vision_config)
        if grid is None or self.clip_length % self.tubelet:
            raise ValueError(
                f"vision_config: a video encoder needs int `image_size` and patch sizes and a `num_frames` "
                f"({self.clip_length}) divisible by the temporal tubelet size ({self.tubelet})."
            )
        self.patches = grid[0] * grid[1]

    def clip(self, pixel_values: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames `(B, F, 3, H, W)` with their mask `(B, F)` → the clips `(B, T, 3, H, W)` and the frame each clip
        position shows `(B, T)`. Raises `ValueError` when a row has more frames than the clip holds."""
        counts = frame_mask.sum(1, keepdim=True)
        if int(counts.max()) > self.clip_length:
            raise ValueError(
                f"frame_mask: a row has {int(counts.max())} frames, more than the video encoder's clip of "
                f"{self.clip_length} (give the processor max_frames={self.clip_length})."
            )
        clip_frames = torch.arange(self.clip_length, device=counts.device) * counts // self.clip_length
        rows = torch.arange(len(pixel_values), device=counts.device)[:, None]
        return pixel_values[rows, clip_frames], clip_frames

    def forward(self, levels: torch.Tensor, clip_frames: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Token levels `(4, B, L, d_v)` (L = [CLS +] T/t·P) → per-frame patch levels `(4, B, num_frames, P, d_v)`;
        frames no clip position shows are zeros."""
        stack, rows, length, dim = levels.shape
        steps = self.clip_length // self.tubelet
        tokens = levels[:, :, length - steps * self.patches :]  # the leading CLS token, if any, is left out
        positions = tokens.reshape(stack, rows, steps, self.patches, dim).repeat_interleave(
            self.tubelet, dim=2
        )
        flat = positions.permute(1, 2, 0, 3, 4).reshape(rows, self.clip_length, -1)
        frames = segment_mean(flat, clip_frames, num_frames)
        return frames.view(rows, num_frames, stack, self.patches, dim).permute(2, 0, 1, 3, 4)


class M3DHierarchicalFeatures(nn.Module):
    """Low, middle and high features as means over thirds of the encoder layers (Eq. 7).

    Returns a `(4, ...)` stack in the field order of [`M3DLevels`]: H (Eq. 5/6), H_l, H_m, H_h.
    """

    def __init__(self, num_layers: int):
        super().__init__()
        self.ranges = layer_thirds(num_layers)

    def forward(
        self, last_hidden_state: torch.Tensor, hidden_states: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        levels = [torch.stack(hidden_states[lo:hi]).mean(0) for lo, hi in self.ranges]
        return torch.stack([last_hidden_state, *levels])


def composed_linear(outer: nn.Linear, inner: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of `outer(inner(x))` as one linear map: `(W_o W_i, W_o b_i + b_o)`.

    Applying the composed map costs `d_in × d_out` per position instead of `d_in × d_mid + d_mid × d_out`; its
    weight costs `d_out × d_mid × d_in` once. It runs the DFFM's per-position work in the latent space.
    """
    return outer.weight @ inner.weight, F.linear(inner.bias, outer.weight, outer.bias)


class M3DVariationalBottleneck(nn.Module):
    """VAE encoder d_h → d_vae (mean, log-variance, reparameterisation) and decoder d_vae → d_h (Eq. 8, 10).

    Samples only in training with a positive KL weight; otherwise the mean is used (a deterministic
    autoencoder). The decoder is linear; [`M3DDirectedFusion`] folds it into the level sum of Eq. 11.
    """

    def __init__(self, config: M3DConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.statistics = nn.Linear(hidden, 2 * config.latent_dim)
        self.decoder = nn.Linear(config.latent_dim, hidden)
        self.sample = config.vae_kl_weight > 0

    def encode(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (..., d_h) → the latent code (..., d_vae) and the KL divergence to N(0, I) per position."""
        return self.reparameterize(self.statistics(features))

    def reparameterize(self, statistics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[mean; log-variance]` (..., 2·d_vae) → the latent code and the KL divergence per position."""
        mean, log_var = statistics.chunk(2, dim=-1)
        log_var = log_var.clamp(-10.0, 10.0)
        latent = mean
        if self.training and self.sample:
            latent = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
        kl = -0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).sum(-1)
        return latent, kl


class M3DFusionLevel(nn.Module):
    """One level λ of the DFFM: W^K, W^V, the shared Encoder_λ for Q, K and V (Eq. 8), multi-head attention
    with a residual (Eq. 9), an FFN with a residual (Eq. 10); Decoder_λ is applied by [`M3DDirectedFusion`].

    Encoder_λ(W^K H) is computed as one linear map of H (`composed_linear`), and K and V in one call, so the
    keys are projected straight to d_vae. Dropout is applied to the attention output rather than to the
    attention weights: dropping weights needs the full (L_q, L_k) weight matrix, which the fused attention
    kernels never build (on a CPU, attention with weight dropout took 5× as long).
    """

    def __init__(self, config: M3DConfig):
        super().__init__()
        hidden, latent = config.text_config.hidden_size, config.latent_dim
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.vae = M3DVariationalBottleneck(config)
        self.attention = nn.MultiheadAttention(latent, config.fusion_heads, batch_first=True)
        self.attention_dropout = nn.Dropout(config.dropout)
        self.ffn = nn.Sequential(
            nn.Linear(latent, 4 * latent),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(4 * latent, latent),
        )

    def forward(
        self, query: torch.Tensor, query_mask: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, Lq, d_h), keys (B, Lk, d_h), masks (True = real) → latent codes (B, Lq, d_vae) before
        Decoder_λ, mean KL of Q, K, V."""
        q, kl_q = self.vae.encode(query)
        (key_weight, key_bias), (value_weight, value_bias) = (
            composed_linear(self.vae.statistics, projection) for projection in (self.key, self.value)
        )
        statistics = F.linear(keys, torch.cat([key_weight, value_weight]), torch.cat([key_bias, value_bias]))
        k, kl_k = self.vae.reparameterize(statistics[..., : key_weight.shape[0]])
        v, kl_v = self.vae.reparameterize(statistics[..., key_weight.shape[0] :])
        attention = self.attention(q, k, v, key_padding_mask=~key_mask, need_weights=False)[0]
        attended = q + self.attention_dropout(attention)
        kl = (masked_mean(kl_q, query_mask) + masked_mean(kl_k, key_mask) + masked_mean(kl_v, key_mask)) / 3
        return attended + self.ffn(attended), kl


class M3DLevelSum(nn.Linear):
    """Σ_λ W_λ H_λ + W H (Eq. 11) as one linear map of the concatenated `[H_l; H_m; H_h; H]`.

    Initialised as H (W = I, W_λ = 0; the paper gives no initialisation): the heads first read the encoder's own
    features and the fused levels come in as they are learned, instead of behind a random projection.
    """

    def __init__(self, hidden: int):
        super().__init__((NUM_LEVELS + 1) * hidden, hidden)


class M3DDirectedFusion(nn.Module):
    """One direction of the DFFM: three levels then the weighted sum Σ_λ W_λ H_λ + W H (Eq. 11)."""

    def __init__(self, config: M3DConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.levels = nn.ModuleList(M3DFusionLevel(config) for _ in range(NUM_LEVELS))
        self.mix = M3DLevelSum(hidden)

    def forward(
        self, query: torch.Tensor, query_mask: torch.Tensor, keys: M3DKeys
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, Lq, d_h) attends to each level of `keys` → (B, Lq, d_h), mean KL."""
        latents, kls = zip(
            *(
                level(query, query_mask, k, keys.mask)
                for level, k in zip(self.levels, keys.levels, strict=True)
            ),
            strict=True,
        )
        weight, bias = self.decoded_level_sum()
        return F.linear(torch.cat([*latents, query], dim=-1), weight, bias), torch.stack(kls).mean()

    def decoded_level_sum(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoders (Eq. 10) and the level sum (Eq. 11) as one linear map of `[z_l; z_m; z_h; H]`, the
        levels' latent codes and the query: Σ_λ W_λ (D_λ z_λ + d_λ) + W H + b = Σ_λ (W_λ D_λ) z_λ + W H +
        (b + Σ_λ W_λ d_λ). Weight (d_h, 3·d_vae + d_h), bias (d_h,)."""
        *level_weights, query_weight = self.mix.weight.split(self.mix.out_features, dim=1)
        decoders = [level.vae.decoder for level in self.levels]
        weight = torch.cat(
            [w @ decoder.weight for w, decoder in zip(level_weights, decoders, strict=True)] + [query_weight],
            dim=1,
        )
        bias = self.mix.bias + sum(
            w @ decoder.bias for w, decoder in zip(level_weights, decoders, strict=True)
        )
        return weight, bias


class M3DDenoisedFusion(nn.Module):
    """DFFM (Eq. 8–12): frames into text (g→x, Eq. 11: the words attend to the frame levels) and text into frames
    (x→g: the patches attend to the text levels); the mean over patches and the frame position embedding of
    Eq. 12 are applied by the model."""

    def __init__(self, config: M3DConfig):
        super().__init__()
        self.frames_into_text = M3DDirectedFusion(config)
        self.text_into_frames = M3DDirectedFusion(config)

    def forward(self, inputs: M3DModalities) -> M3DFusionOutput:
        patches = inputs.frames.output
        batch, frames, patch_count, hidden = patches.shape
        text, kl_text = self.frames_into_text(inputs.text.output, inputs.word_mask, inputs.frame_keys)
        fused, kl_frames = self.text_into_frames(
            patches.reshape(batch, -1, hidden), inputs.patch_mask, inputs.text_keys
        )
        return M3DFusionOutput(
            text, fused.view(batch, frames, patch_count, hidden), (kl_text + kl_frames) / 2
        )


class M3DOneStreamFusion(nn.Module):
    """Table III one-stream baseline: words and frame patches (last encoder layer) concatenated with a modality
    embedding and passed through one Transformer self-attention layer."""

    def __init__(self, config: M3DConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.modality = nn.Embedding(2, hidden)
        self.layer = nn.TransformerEncoderLayer(
            hidden, config.text_config.num_attention_heads, 4 * hidden, config.dropout, batch_first=True
        )

    def forward(self, inputs: M3DModalities) -> M3DFusionOutput:
        words, patches = inputs.text.output, inputs.frames.output
        batch, frames, patch_count, hidden = patches.shape
        sequence = torch.cat(
            [words + self.modality.weight[0], patches.reshape(batch, -1, hidden) + self.modality.weight[1]], 1
        )
        mask = torch.cat([inputs.word_mask, inputs.patch_mask], dim=1)
        mask[:, 0] |= ~mask.any(1)  # a row with neither modality attends to one blank position
        out = self.layer(sequence, src_key_padding_mask=~mask)
        num_words = words.shape[1]
        return M3DFusionOutput(
            out[:, :num_words],
            out[:, num_words:].view(batch, frames, patch_count, hidden),
            words.new_zeros(()),
        )


class M3DTwoStreamFusion(nn.Module):
    """Table III two-stream baseline (co-attention): words attend to the frame patches and patches to the words
    (last encoder layer), each followed by an FFN, with residuals and LayerNorms. A missing modality gives blank
    (zero) keys."""

    def __init__(self, config: M3DConfig):
        super().__init__()
        hidden, heads = config.text_config.hidden_size, config.text_config.num_attention_heads
        self.frames_into_text = nn.TransformerDecoderLayer(
            hidden, heads, 4 * hidden, config.dropout, batch_first=True
        )
        self.text_into_frames = nn.TransformerDecoderLayer(
            hidden, heads, 4 * hidden, config.dropout, batch_first=True
        )

    def forward(self, inputs: M3DModalities) -> M3DFusionOutput:
        words, patches = inputs.text.output, inputs.frames.output
        batch, frames, patch_count, hidden = patches.shape
        flat = patches.reshape(batch, -1, hidden)
        word_mask, patch_mask = _attend_blank(inputs.word_mask), _attend_blank(inputs.patch_mask)
        text = self.frames_into_text(
            words, flat, tgt_key_padding_mask=~word_mask, memory_key_padding_mask=~patch_mask
        )
        fused = self.text_into_frames(
            flat, words, tgt_key_padding_mask=~patch_mask, memory_key_padding_mask=~word_mask
        )
        return M3DFusionOutput(text, fused.view(batch, frames, patch_count, hidden), words.new_zeros(()))


class M3DNoFusion(nn.Module):
    """The w/o-DFFM ablation (Table IV): the heads read the encoders' last layer as it is."""

    def forward(self, inputs: M3DModalities) -> M3DFusionOutput:
        return M3DFusionOutput(inputs.text.output, inputs.frames.output, inputs.text.output.new_zeros(()))


def _attend_blank(mask: torch.Tensor) -> torch.Tensor:
    """A key mask where a row with no real position attends to all its (blank) positions instead of none."""
    return mask | ~mask.any(1, keepdim=True)


class M3DMissingModalityConstruction(nn.Module):
    """MMCM (Eq. 13–14): generates the level features of a missing modality from the present one.

    Ĥ_λ = [P_λ; ReLU(Conv(H))] (Eq. 13), then H_λ = ReLU(Conv_λ(Ĥ_λ)) (Eq. 14), for λ in low, middle, high.
    """

    def __init__(self, config: M3DConfig):
        super().__init__()
        hidden, width = config.text_config.hidden_size, config.mmcm_kernel_size
        self.prompts = nn.Parameter(torch.empty(NUM_LEVELS, config.prompt_length, hidden))
        self.source = nn.Conv1d(hidden, hidden, width, padding=width // 2)
        self.levels = nn.ModuleList(
            nn.Conv1d(hidden, hidden, width, padding=width // 2) for _ in range(NUM_LEVELS)
        )

    def forward(self, source: torch.Tensor, source_mask: torch.Tensor) -> M3DKeys:
        """source (B, L, d_h) = the present modality's H, mask (B, L) → generated levels (B, l_p + L, d_h) each."""
        batch = source.shape[0]
        mask = source_mask[..., None].to(source.dtype)
        convolved = F.relu(self.source((source * mask).transpose(1, 2))).transpose(1, 2) * mask
        levels = tuple(
            F.relu(
                conv(torch.cat([prompt.expand(batch, -1, -1), convolved], dim=1).transpose(1, 2))
            ).transpose(1, 2)
            for prompt, conv in zip(self.prompts, self.levels, strict=True)
        )
        prompt_mask = source_mask.new_ones(batch, self.prompts.shape[1])
        return M3DKeys(levels, torch.cat([prompt_mask, source_mask], dim=1))

    def complete(
        self, keys: M3DKeys, present: torch.Tensor, source: torch.Tensor, source_mask: torch.Tensor
    ) -> M3DKeys:
        """`keys` with the rows where the modality is absent (`present` (B,) False) replaced by generated ones;
        both are padded to the longer length."""
        if present.all():
            return keys
        generated = self(source, source_mask)
        length = max(keys.mask.shape[1], generated.mask.shape[1])
        real, made = (_pad_keys(k, length) for k in (keys, generated))
        levels = tuple(
            torch.where(present[:, None, None], a, b) for a, b in zip(real.levels, made.levels, strict=True)
        )
        return M3DKeys(levels, torch.where(present[:, None], real.mask, made.mask))


class M3DBlankModality(nn.Module):
    """The w/o-MMCM ablation (Table IV): a missing modality's keys are blank (zero) features, all attended to."""

    def complete(
        self, keys: M3DKeys, present: torch.Tensor, source: torch.Tensor, source_mask: torch.Tensor
    ) -> M3DKeys:
        if present.all():
            return keys
        levels = tuple(level * present[:, None, None] for level in keys.levels)
        return M3DKeys(levels, keys.mask | ~present[:, None])


def _pad_keys(keys: M3DKeys, length: int) -> M3DKeys:
    """Keys padded (zero features, masked out) to `length` positions."""
    pad = length - keys.mask.shape[1]
    return M3DKeys(
        tuple(F.pad(x, (0, 0, 0, pad)) for x in keys.levels), F.pad(keys.mask, (0, pad), value=False)
    )


_FUSIONS = {
    "dffm": M3DDenoisedFusion,
    "none": lambda config: M3DNoFusion(),
    "one_stream": M3DOneStreamFusion,
    "two_stream": M3DTwoStreamFusion,
}


class M3DEntityHead(nn.Module):
    """BIO tagging over words: a linear layer and a CRF (Eq. 15); its likelihood (Eq. 19) is in `loss_m3d`."""

    def __init__(self, config: M3DConfig):
        super().__init__()
        self.emissions = nn.Linear(config.text_config.hidden_size, config.num_ner_tags)
        self.crf = CRF(config.num_ner_tags, batch_first=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.emissions(features)


class M3DPairClassifier(nn.Module):
    """Biaffine scorer over all ordered pairs (Eq. 16–17), factored through a low-rank projection.

    s = act(W_s h), o = act(W_o h); logits_k(i, j) = s_iᵀ U_k o_j + a_kᵀ s_i + b_kᵀ o_j + c_k, computed for
    all pairs with one batched einsum. With `pair_size`, features of each pair itself (B, N, N, pair_size) add
    a term through a two-layer perceptron.
    """

    def __init__(
        self, config: M3DConfig, num_classes: int, input_size: int | None = None, pair_size: int | None = None
    ):
        super().__init__()
        hidden, rank = input_size or config.text_config.hidden_size, config.bilinear_dim
        self.subject = nn.Sequential(nn.Linear(hidden, rank), nn.GELU(), nn.Dropout(config.dropout))
        self.object = nn.Sequential(nn.Linear(hidden, rank), nn.GELU(), nn.Dropout(config.dropout))
        self.bilinear = nn.Parameter(torch.empty(num_classes, rank, rank))
        self.subject_linear = nn.Linear(rank, num_classes)
        self.object_linear = nn.Linear(rank, num_classes, bias=False)
        self.pair = (
            nn.Sequential(
                nn.Linear(pair_size, rank),
                nn.GELU(),
                nn.Dropout(config.dropout),
                nn.Linear(rank, num_classes),
            )
            if pair_size
            else None
        )

    def forward(
        self, representations: torch.Tensor, pair_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, N, input_size) [and (B, N, N, pair_size)] → (B, N, N, classes), [subject, object]."""
        subject, obj = self.subject(representations), self.object(representations)
        projected = torch.einsum("bir,krq->bikq", subject, self.bilinear)
        scores = torch.einsum("bikq,bjq->bijk", projected, obj)
        scores = scores + self.subject_linear(subject)[:, :, None] + self.object_linear(obj)[:, None]
        return scores if self.pair is None else scores + self.pair(pair_features)


class M3DGroundingHead(nn.Module):
    """Per frame, `grounding_slots` slots each with type-or-none logits and a sigmoid box (Eq. 18); trained
    after Hungarian matching of slots to boxes (Eq. 22–23, `loss_m3d`).

    With `config.grounding_pooling="mean"` (the paper's), the slots are linear layers on the patch-averaged
    frame feature (Eq. 12, 18). With `"slots"` (beyond the paper), each slot is a learned query that attends
    over the frame's patch grid; the same linear layers of Eq. 18 read each slot's attended feature, and the
    attention-weighted centre of the patches it attends to is added to its box centre logits (a reference
    point), so that localising an object is learnt through the attention.
    """

    def __init__(self, config: M3DConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.slots, self.num_types = config.grounding_slots, len(config.grounding_types)
        self.queries = None
        outputs = self.slots
        if config.grounding_pooling == "slots":
            rows, columns = patch_grid(config.vision_config) or (0, 0)
            if rows < 1 or rows != columns:
                raise ValueError("M3DConfig: `grounding_pooling='slots'` needs a vision_config with an int "
                                 "`image_size` and patch size (a square patch grid).")  # fmt: skip
            grid = rows
            self.register_buffer("centres", patch_centres(grid), persistent=False)
            self.queries = nn.Parameter(torch.empty(self.slots, hidden))
            self.key = nn.Linear(hidden, hidden)
            self.value = nn.Linear(hidden, hidden)
            self.slot_norm = nn.LayerNorm(hidden)
            outputs = 1
        self.hidden = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(config.dropout))
        self.classifier = nn.Linear(hidden, outputs * (self.num_types + 1))
        self.box = nn.Linear(hidden, outputs * 4)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames (B, F, d_h), or patches (B, F, P, d_h) with slot queries → logits (B, F, S, G + 1), boxes
        (B, F, S, 4)."""
        if self.queries is None:
            hidden = self.hidden(frames)
            logits = self.classifier(hidden).unflatten(-1, (self.slots, self.num_types + 1))
            return logits, self.box(hidden).sigmoid().unflatten(-1, (self.slots, 4))
        features, reference = self.attend(frames)
        hidden = self.hidden(features)
        offsets = F.pad(torch.logit(reference), (0, 2))  # centre logits shifted by the reference point
        return self.classifier(hidden), (self.box(hidden) + offsets).sigmoid()

    def attend(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slot queries attend (one head, with a residual and a LayerNorm) over the patch grid, i.e. the last
        grid² positions (a leading CLS token is left out) → slot features (B, F, S, d_h), reference points
        (B, F, S, 2)."""
        if patches.shape[-2] == 1:  # a batch without frames has one blank patch per (padded) frame
            patches = patches.expand(-1, -1, len(self.centres), -1)
        grid = patches[..., -len(self.centres) :, :]
        if grid.shape[-2] != len(self.centres):
            raise ValueError(f"grounding head: {grid.shape[-2]} patches, fewer than the {len(self.centres)} "
                             "of the vision_config's patch grid.")  # fmt: skip
        scores = torch.einsum("sd,bfpd->bfsp", self.queries, self.key(grid)) / math.sqrt(grid.shape[-1])
        weights = scores.softmax(-1)
        features = self.slot_norm(self.queries + weights @ self.value(grid))
        return features, (weights @ self.centres).clamp(1e-4, 1 - 1e-4)


class M3DPreTrainedModel(PreTrainedModel):
    config_class = M3DConfig
    base_model_prefix = "m3d"
    main_input_name = "input_ids"
    input_modalities = ("text", "image")
    supports_gradient_checkpointing = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, M3DModel):
            init.normal_(module.frame_positions, std=std)
        elif isinstance(module, M3DLevelSum):
            hidden = module.out_features
            identity = torch.cat([torch.zeros(hidden, NUM_LEVELS * hidden), torch.eye(hidden)], dim=1)
            init.copy_(module.weight, identity)
            init.zeros_(module.bias)
        elif isinstance(module, M3DMissingModalityConstruction):
            init.normal_(module.prompts, std=std)
        elif isinstance(module, M3DPairClassifier):
            init.zeros_(module.bilinear)
        elif isinstance(module, M3DGroundingHead) and module.queries is not None:
            init.normal_(module.queries, std=std)
            # A non-persistent buffer: `from_pretrained` builds on the meta device and never loads it.
            init.copy_(module.centres, patch_centres(math.isqrt(len(module.centres))))
        elif isinstance(module, CRF):
            for parameter in (module.start_transitions, module.end_transitions, module.transitions):
                init.uniform_(parameter, -0.1, 0.1)


class M3DModel(M3DPreTrainedModel):
    """
    M³D (Section V): a text encoder (Eq. 5) and a frame encoder (Eq. 6), hierarchical features (Eq. 7), the
    DFFM (Eq. 8–12) with the MMCM for missing modalities (Eq. 13–14), and the NER, coreference, relation and
    grounding heads (Eq. 15–18), trained with Eq. 19–24 (`loss_m3d`). `config.fusion` also selects the
    w/o-DFFM ablation (`"none"`) and the Table III baselines (`"one_stream"`, `"two_stream"`); `config.use_mmcm`
    the w/o-MMCM ablation (blank features for a missing modality).

    Beyond the paper, the fused text and frame features get a LayerNorm before the heads, which keeps the
    heads' inputs at unit scale whatever the encoder width (tiny test encoders included).
    """

    def __init__(
        self,
        config: M3DConfig,
        text_model: PreTrainedModel | None = None,
        vision_model: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        text_config, vision_config = config.text_config, config.vision_config
        self.text_model = text_model or AutoModel.from_config(text_config, **_no_pooler_kwargs(text_config))
        self.vision_model = vision_model or AutoModel.from_config(
            vision_config, **_no_pooler_kwargs(vision_config)
        )
        hidden = text_config.hidden_size
        self.text_levels = M3DHierarchicalFeatures(text_config.num_hidden_layers)
        self.vision_levels = M3DHierarchicalFeatures(vision_config.num_hidden_layers)
        self.tubelet_frames = M3DTubeletFrames(vision_config) if is_video_encoder(vision_config) else None
        vision_hidden = vision_config.hidden_size
        self.vision_projection = (
            nn.Linear(vision_hidden, hidden) if vision_hidden != hidden else nn.Identity()
        )
        self.fusion = _FUSIONS[config.fusion](config)
        missing = M3DMissingModalityConstruction if config.uses_mmcm else lambda config: M3DBlankModality()
        self.text_from_frames = missing(config)
        self.frames_from_text = missing(config)
        self.frame_positions = nn.Parameter(torch.empty(config.max_frames, hidden))
        self.text_norm = nn.LayerNorm(hidden)
        self.frame_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.entity_head = M3DEntityHead(config)
        self.coref_head = M3DPairClassifier(config, 2)
        relation_inputs = (1 + 2 * (config.relation_context > 0)) * hidden
        self.relation_head = M3DPairClassifier(
            config,
            len(config.relation_types) + 1,
            relation_inputs,
            pair_size=hidden if config.relation_between else None,
        )
        self.grounding_head = M3DGroundingHead(config)
        self.criterion = M3DLoss(config)
        self.post_init()

    @classmethod
    def from_encoders_pretrained(
        cls, text: str | PreTrainedModel, vision: str | PreTrainedModel, **kwargs
    ) -> M3DModel:
        """Builds a model whose encoders start from pretrained checkpoints (Hub names or local folders).

        `kwargs` go to [`M3DConfig`] (e.g. `relation_types`, `fusion`).
        """
        text_model = text if isinstance(text, PreTrainedModel) else _pretrained_encoder(text)
        vision_model = vision if isinstance(vision, PreTrainedModel) else _pretrained_encoder(vision)
        # Copies: building an M3DConfig resets its sub-configs' attention implementation, which the loaded
        # encoders read from their own configs (a Longformer without one gets no attention mask).
        config = M3DConfig(
            text_config=copy.deepcopy(text_model.config),
            vision_config=copy.deepcopy(vision_model.config),
            **kwargs,
        )
        return cls(config, text_model=text_model, vision_model=vision_model)

    # -- encoding --------------------------------------------------------------------------------------------

    @property
    def text_window(self) -> tuple[int, int] | None:
        """(length, stride) of the windows for long documents, None when the encoder has no position limit."""
        length = self.config.text_window_length
        if length is None:
            positions = getattr(self.config.text_config, "max_position_embeddings", None)
            if positions is None:
                return None
            # RoBERTa-style embeddings (Longformer, XLM-R) number positions from padding_idx + 1.
            padding_idx = getattr(getattr(self.text_model, "embeddings", None), "padding_idx", None)
            length = positions - (padding_idx + 1 if padding_idx is not None else 0)
        return length, self.config.text_window_stride or max(length // 2, 1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pieces → `(4, B, T, d_h)`: output and level features (Eq. 5, 7), stacked as [`M3DLevels`].

        A document longer than the encoder's positions is cut into overlapping windows, all encoded in one
        call; each piece's features are the mean over the windows that hold it. No pieces (T = 0) give none.
        """
        batch, length = input_ids.shape
        if length == 0:  # no row has text and the tokenizer adds no special tokens
            return self.frame_positions.new_zeros(
                NUM_LEVELS + 1, batch, 0, self.config.text_config.hidden_size
            )
        window, stride = self.text_window or (length, length)
        count = 1 if length <= window else 1 + math.ceil((length - window) / stride)
        window = min(window, length)
        padded = window + (count - 1) * stride
        pad_id = getattr(self.config.text_config, "pad_token_id", None) or 0
        ids = (
            F.pad(input_ids, (0, padded - length), value=pad_id).unfold(1, window, stride).reshape(-1, window)
        )
        mask = F.pad(attention_mask, (0, padded - length)).unfold(1, window, stride).reshape(-1, window)
        keep = mask.bool().any(1)
        keep[0] = True  # at least one window goes through the encoder
        out = self.text_model(input_ids=ids[keep], attention_mask=mask[keep], output_hidden_states=True)
        levels = self.text_levels(out.last_hidden_state, out.hidden_states)
        offsets = (
            torch.arange(batch, device=ids.device)[:, None] * padded
            + torch.arange(count, device=ids.device)[None] * stride
        )
        positions = (offsets.reshape(-1, 1) + torch.arange(window, device=ids.device))[keep].reshape(-1)
        weight = mask[keep].reshape(-1).to(levels.dtype)
        hidden = levels.shape[-1]
        summed = levels.new_zeros(NUM_LEVELS + 1, batch * padded, hidden).index_add_(
            1, positions, levels.reshape(NUM_LEVELS + 1, -1, hidden) * weight[:, None]
        )
        counts = weight.new_zeros(batch * padded).index_add_(0, positions, weight).clamp(min=1)
        return (summed / counts[:, None]).view(NUM_LEVELS + 1, batch, padded, hidden)[:, :, :length]

    def encode_words(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_ids: torch.Tensor, num_words: int
    ) -> M3DLevels:
        """Word features, each the mean of its pieces' features, per level → `(B, W, d_h)` each."""
        if word_ids.numel() and int(word_ids.max()) >= num_words:
            raise ValueError(f"word_ids: index {int(word_ids.max())} >= word_mask width {num_words}.")
        pieces = self.encode_text(input_ids, attention_mask)
        levels, batch, tokens, hidden = pieces.shape
        flat = pieces.permute(1, 2, 0, 3).reshape(batch, tokens, levels * hidden)
        words = segment_mean(flat, word_ids, num_words).view(batch, num_words, levels, hidden)
        return M3DLevels.from_stack(words.permute(2, 0, 1, 3))

    def encode_frames(self, pixel_values: torch.Tensor, frame_mask: torch.Tensor) -> M3DLevels:
        """Frames → patch output and levels (Eq. 6, 7), `(B, F, P, d_h)` each.

        A frame encoder (ViT-like) reads all real frames of the batch in one call, one image each; a video encoder
        reads one clip per row that has frames (`encode_clips`).
        """
        batch, frames = frame_mask.shape
        if frame_mask.shape[1] > self.config.max_frames:
            raise ValueError(
                f"frame_mask: {frame_mask.shape[1]} frames > config.max_frames={self.config.max_frames}."
            )
        hidden = self.config.text_config.hidden_size
        if not frame_mask.any():
            return M3DLevels.from_stack(pixel_values.new_zeros(NUM_LEVELS + 1, batch, frames, 1, hidden))
        if self.tubelet_frames is None:
            encoded = frame_mask  # levels (4, N, P, d_v) of the N real frames
            out = self.vision_model(pixel_values=pixel_values[frame_mask], output_hidden_states=True)
            levels = self.vision_levels(out.last_hidden_state, out.hidden_states)
        else:
            encoded = frame_mask.any(1)  # levels (4, B', F, P, d_v) of the B' rows with frames
            levels = self.encode_clips(pixel_values[encoded], frame_mask[encoded])
        levels = self.vision_projection(levels)
        patches = levels.new_zeros(NUM_LEVELS + 1, *encoded.shape, *levels.shape[2:])
        patches[:, encoded] = levels
        return M3DLevels.from_stack(patches)

    def encode_clips(self, pixel_values: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """A video encoder's levels (Eq. 6, 7) per frame: frames `(B', F, 3, H, W)` of rows with frames → one clip
        per row through the encoder → `(4, B', F, P, d_v)`, the tubelet tokens mapped back to the frames."""
        clip, clip_frames = self.tubelet_frames.clip(pixel_values, frame_mask)
        out = self.vision_model(pixel_values=clip, output_hidden_states=True)
        levels = self.vision_levels(out.last_hidden_state, out.hidden_states)
        return self.tubelet_frames(levels, clip_frames, frame_mask.shape[1])

    def modalities(
        self, text: M3DLevels, word_mask: torch.Tensor, frames: M3DLevels, frame_mask: torch.Tensor
    ) -> M3DModalities:
        """Both modalities with their keys; a row missing one gets it from the MMCM (Eq. 13–14) or blank."""
        patch_mask = repeat_over_patches(frame_mask, frames.output.shape[2])
        flat = tuple(level.flatten(1, 2) for level in frames.levels)
        frame_keys = self.frames_from_text.complete(
            M3DKeys(flat, patch_mask), frame_mask.any(1), text.output, word_mask
        )
        text_keys = self.text_from_frames.complete(
            M3DKeys(text.levels, word_mask), word_mask.any(1), frames.output.flatten(1, 2), patch_mask
        )
        return M3DModalities(text, word_mask, frames, frame_mask, text_keys, frame_keys)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        word_ids: torch.Tensor,
        word_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        frame_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoders, level features and fusion → the features the heads read: words `(B, W, d_h)`, frames, and
        the KL term.

        The frame features are H^{x→g} averaged over patches plus the frame position embedding (Eq. 12),
        `(B, F, d_h)`; with `config.grounding_pooling="slots"` the patches are kept, `(B, F, P, d_h)`, for the
        slot queries of the grounding head.
        """
        text = self.encode_words(input_ids, attention_mask, word_ids, word_mask.shape[1])
        frames = self.encode_frames(pixel_values, frame_mask)
        fused = self.fusion(self.modalities(text, word_mask, frames, frame_mask))
        positions = self.frame_positions[: frame_mask.shape[1]]
        if self.config.grounding_pooling == "mean":
            patches = fused.frames.mean(2)
        else:
            patches, positions = fused.frames, positions[:, None]
        features = (
            self.dropout(self.text_norm(fused.text)),
            self.dropout(self.frame_norm(patches + positions)),
        )
        return *features, fused.kl

    # -- heads -----------------------------------------------------------------------------------------------

    def chain_features(
        self,
        text: torch.Tensor,
        word_mask: torch.Tensor | None,
        spans: torch.Tensor,
        mentions: torch.Tensor,
        entity_chain: torch.Tensor,
        num_chains: int,
    ) -> torch.Tensor:
        """Chain representations read by the relation head (Eq. 17): the mean over each chain's mentions
        (B, C, d_h).

        With `config.relation_context = k > 0` (beyond the paper), the mean of the k words before each mention
        and that of the k words after it (within the document's `word_mask`, all words when None) are pooled
        over the chain's mentions by an element-wise maximum and appended → (B, C, 3 d_h): the words linking a
        subject to its object reach both chains, undiluted by the chains' other mentions.
        """
        chains = segment_mean(mentions, entity_chain, num_chains)
        width = self.config.relation_context
        if not width:
            return chains
        length = word_mask.sum(1, keepdim=True) if word_mask is not None else text.shape[1]
        start, end = spans.unbind(-1)
        before = torch.stack([(start - width).clamp(min=0), start], -1)
        after = torch.stack([end, torch.maximum(end, (end + width).clamp(max=length))], -1)
        context = torch.cat([span_mean(text, before), span_mean(text, after)], -1)
        return torch.cat([chains, segment_max(context, entity_chain, num_chains)], -1)

    def relation_logits(
        self,
        text: torch.Tensor,
        word_mask: torch.Tensor | None,
        spans: torch.Tensor,
        mentions: torch.Tensor,
        entity_chain: torch.Tensor,
        num_chains: int,
    ) -> torch.Tensor:
        """The relation head on the chain representations (`chain_features`) → (B, C, C, 1 + R) (Eq. 17); with
        `config.relation_between` (beyond the paper), each chain pair also reads the mean of the words between its
        two closest mentions (`closest_mention_gaps`)."""
        chains = self.chain_features(text, word_mask, spans, mentions, entity_chain, num_chains)
        if not self.config.relation_between:
            return self.relation_head(chains)
        gaps = closest_mention_gaps(spans, entity_chain, num_chains)
        between = span_mean(text, gaps.flatten(1, 2)).view(*gaps.shape[:3], -1)
        return self.relation_head(chains, between)

    def mention_features(self, text: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
        """Each mention as the mean of its own words (B, E, d_h)."""
        if spans.numel() and int(spans.max()) > text.shape[1]:
            raise ValueError(f"entity_spans: end {int(spans.max())} beyond the {text.shape[1]} words.")
        return span_mean(text, spans)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor,
        word_ids: torch.LongTensor,
        word_mask: torch.BoolTensor,
        pixel_values: torch.FloatTensor,
        frame_mask: torch.BoolTensor,
        entity_spans: torch.LongTensor | None = None,
        entity_mask: torch.BoolTensor | None = None,
        entity_chain: torch.LongTensor | None = None,
        chain_mask: torch.BoolTensor | None = None,
        ner_labels: torch.LongTensor | None = None,
        coref_labels: torch.LongTensor | None = None,
        re_labels: torch.LongTensor | None = None,
        grounding_labels: torch.LongTensor | None = None,
        grounding_label_boxes: torch.FloatTensor | None = None,
        **kwargs,
    ) -> M3DModelOutput:
        r"""
        Args (the processor's batch; see [`M3DProcessor`] for every key's padding and meaning):
            input_ids (`(B, T)`), attention_mask (`(B, T)`): the documents' sub-word pieces (Eq. 5).
            word_ids (`(B, T)`): the word each piece belongs to, -1 for special and padding pieces.
            word_mask (`(B, W)`): real words (a prefix per row; all False when the text is missing).
            pixel_values (`(B, F, 3, H, W)`), frame_mask (`(B, F)`): the frames and the real ones (Eq. 6).
            entity_spans (`(B, E, 2)`): mention word spans `[start, end)`; with `entity_mask` (`(B, E)`), enables
                `coref_logits`.
            entity_chain (`(B, E)`): each mention's chain (-1 on padding); with `chain_mask` (`(B, C)`), enables
                `re_logits`.
            ner_labels (`(B, W)`), coref_labels (`(B, E, E)`), re_labels (`(B, C, C)`): BIO tag ids and pair
                classes, -100 where ignored (Eq. 19–21).
            grounding_labels (`(B, F, T)`), grounding_label_boxes (`(B, F, T, 4)`): gold box types (-100 on
                padding) and boxes (cx, cy, w, h) per frame (Eq. 22–23).
            kwargs: other batch keys (`frame_indices`), read by post-processing only.
        """
        word_mask, frame_mask = word_mask.bool(), frame_mask.bool()
        text, frames, kl = self.encode(
            input_ids, attention_mask, word_ids, word_mask, pixel_values, frame_mask
        )
        ner_logits = self.entity_head(text)
        grounding_logits, boxes = self.grounding_head(frames)
        coref_logits = re_logits = None
        if entity_spans is not None:
            pair_text = scale_gradient(text, self.config.pair_gradient_scale)
            mentions = self.mention_features(pair_text, entity_spans)
            coref_logits = self.coref_head(mentions)
            if entity_chain is not None:
                num_chains = (
                    chain_mask.shape[1] if chain_mask is not None else max(int(entity_chain.max()) + 1, 1)
                )
                re_logits = self.relation_logits(
                    pair_text, word_mask, entity_spans, mentions, entity_chain, num_chains
                )
        loss, losses = self.criterion(
            self.entity_head.crf,
            word_mask=word_mask,
            frame_mask=frame_mask,
            ner_logits=ner_logits,
            coref_logits=coref_logits,
            re_logits=re_logits,
            grounding_logits=grounding_logits,
            grounding_boxes=boxes,
            kl_loss=kl,
            ner_labels=ner_labels,
            coref_labels=coref_labels,
            re_labels=re_labels,
            grounding_labels=grounding_labels,
            grounding_label_boxes=grounding_label_boxes,
        )
        grounding_loss = None
        if "grounding_type" in losses:
            grounding_loss = losses["grounding_type"] + losses["grounding_box"]
        return M3DModelOutput(
            loss=loss,
            ner_loss=losses.get("ner"),
            coref_loss=losses.get("coref"),
            re_loss=losses.get("re"),
            grounding_loss=grounding_loss,
            grounding_type_loss=losses.get("grounding_type"),
            grounding_box_loss=losses.get("grounding_box"),
            kl_loss=kl,
            ner_logits=ner_logits,
            coref_logits=coref_logits,
            re_logits=re_logits,
            grounding_logits=grounding_logits,
            grounding_boxes=boxes,
            text_features=text,
            frame_features=frames,
        )

    @torch.no_grad()
    def decode(
        self,
        protocol: str = "end_to_end",
        relation_threshold: float | None = None,
        grounding_threshold: float | None = None,
        **batch: torch.Tensor,
    ) -> M3DDecoderOutput:
        """Decodes a batch into tensors (see [`M3DDecoderOutput`]). Encoders and fusion run once; only the pair
        heads depend on the protocol.

        `batch` is the processor's batch, the inputs of `forward` (its label tensors are ignored).

        - `"gold_pairs"` (the paper's): chains are the components of predicted coreference among the gold
          `entity_spans`, relations are predicted between the gold chains (`entity_chain`).
        - `"end_to_end"`: predicted entities → coreference among them (symmetric mean probability > 0.5) →
          chains as connected components → relations between the predicted chains.

        Entities come from the CRF in both. A chain pair is a relation when its probability of one is ≥
        `relation_threshold`, and a grounding slot is kept when its best class is a type with probability ≥
        `grounding_threshold`; None takes the config's (`config.relation_threshold`, `config.grounding_threshold`,
        chosen on validation data by `examples/train.py`). Raises `ValueError` on an unknown protocol or, for `"gold_pairs"`, a
        batch without gold mentions and chains.
        """
        check_protocol(protocol)
        word_mask, frame_mask = batch["word_mask"].bool(), batch["frame_mask"].bool()
        inputs = (
            batch["input_ids"],
            batch["attention_mask"],
            batch["word_ids"],
            word_mask,
            batch["pixel_values"],
        )
        text, frames, _ = self.encode(*inputs, frame_mask)
        entity_spans, entity_mask = batch.get("entity_spans"), batch.get("entity_mask")
        entity_chain, chain_mask = batch.get("entity_chain"), batch.get("chain_mask")
        entities = bio_tags_to_spans(
            viterbi_decode(self.entity_head.crf, self.entity_head(text), word_mask), word_mask
        )
        if protocol == "gold_pairs":
            if entity_spans is None or entity_mask is None or entity_chain is None or chain_mask is None:
                raise ValueError(
                    "decode: protocol 'gold_pairs' needs entity_spans, entity_mask, entity_chain, chain_mask"
                )
            spans, span_mask = entity_spans, entity_mask.bool()
        else:
            spans, span_mask = pad_spans(entities, word_mask.shape[0])
        mentions = self.mention_features(text, spans)
        components = connected_components(coref_adjacency(self.coref_head(mentions), span_mask), span_mask)
        if protocol == "end_to_end":
            entity_chain, chain_mask = components, chain_mask_of(components)
        chains = self.relation_logits(text, word_mask, spans, mentions, entity_chain, chain_mask.shape[1])
        relations, relation_scores = decode_relations(
            chains,
            chain_mask.bool(),
            self.config.relation_threshold if relation_threshold is None else relation_threshold,
        )
        rows, frame_index, types, scores, boxes = select_grounding_slots(
            *self.grounding_head(frames),
            frame_mask,
            self.config.grounding_threshold if grounding_threshold is None else grounding_threshold,
        )
        return M3DDecoderOutput(
            entities=entities,
            mention_spans=spans,
            mention_mask=span_mask,
            mention_chain=components,
            relation_chain=entity_chain,
            relations=relations,
            relation_scores=relation_scores,
            grounding_rows=rows,
            grounding_frames=frame_index,
            grounding_types=types,
            grounding_scores=scores,
            grounding_boxes=boxes,
        )

    def predict(
        self,
        protocol: str = "end_to_end",
        relation_threshold: float | None = None,
        grounding_threshold: float | None = None,
        **batch,
    ) -> list[dict]:
        """`decode` then the post-processing of [`M3DProcessor.post_process_extraction`], with the config's
        label sets: one document per row in the document format of `modeling_m3d.schema`."""
        decoded = self.decode(
            **batch,
            protocol=protocol,
            relation_threshold=relation_threshold,
            grounding_threshold=grounding_threshold,
        )
        return documents_from_decoded(
            decoded,
            batch.get("frame_indices"),
            self.config.entity_types,
            self.config.relation_types,
            self.config.grounding_types,
        )
