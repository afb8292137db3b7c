"""Decoding of M³D outputs into the metric formats (`modeling_m3d.schema`).

Viterbi tags → entity spans, coreference pairs → chains (connected components), relation and grounding-slot
selection: pure tensor functions, vectorised over the batch, then the conversion to per-document dicts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .crf_m3d import best_paths


def viterbi_decode(crf: nn.Module, emissions: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """Best BIO tag sequence per row under the CRF (Eq. 15) → (B, W) long; 0 (= O) outside words.

    `word_mask` must be a prefix mask per row; rows without words are all O. Computed in float32 without a
    loop over the words (`crf_m3d.best_paths`).
    """
    tags = torch.zeros(word_mask.shape, dtype=torch.long, device=emissions.device)
    rows = word_mask[:, 0]
    if rows.any():
        tags[rows] = best_paths(crf, emissions[rows].float(), word_mask[rows])
    return tags


def bio_tags_to_spans(tags: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """Strict IOB2 decoding: tag 0 = O, 1 + 2t = B-t, 2 + 2t = I-t.

    A span starts at a B-t and extends over the following I-t; an I- that follows neither B- nor I- of its
    type starts nothing (and neither do the I- that continue it). Returns (N, 4) long rows `[row, start, end,
    type]` with `end` exclusive, ordered by row then start.
    """
    tags = torch.where(word_mask, tags, 0)
    entity_type = torch.div(tags - 1, 2, rounding_mode="floor")
    is_begin = (tags % 2 == 1) & word_mask
    is_inside = (tags > 0) & (tags % 2 == 0) & word_mask
    previous_type = F.pad(entity_type, (1, 0), value=-1)[:, :-1]
    previous_tagged = F.pad(tags, (1, 0))[:, :-1] > 0
    continues = is_inside & previous_tagged & (previous_type == entity_type)
    width = tags.shape[1]
    positions = torch.arange(width, device=tags.device).expand_as(tags)
    breaks = torch.where(continues, width, positions)
    following = F.pad(breaks[:, 1:], (0, 1), value=width)
    next_break = following.flip(1).cummin(1).values.flip(1)
    rows, starts = is_begin.nonzero(as_tuple=True)
    return torch.stack([rows, starts, next_break[rows, starts], entity_type[rows, starts]], dim=1)


def pad_spans(spans: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, ≥3) `[row, start, end, ...]` ordered by row → padded spans (B, E, 2) and mask (B, E), E ≥ 1."""
    rows = spans[:, 0]
    counts = torch.bincount(rows, minlength=batch_size)
    rank = torch.arange(len(rows), device=spans.device) - (counts.cumsum(0) - counts)[rows]
    width = max(int(counts.max()) if len(rows) else 0, 1)
    padded = spans.new_zeros(batch_size, width, 2)
    mask = torch.zeros(batch_size, width, dtype=torch.bool, device=spans.device)
    padded[rows, rank] = spans[:, 1:3]
    mask[rows, rank] = True
    return padded, mask


def coref_adjacency(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Positive mention pairs (B, E, E): the symmetric mean of p(i, j) and p(j, i) of "same chain" is >
    0.5."""
    probability = logits.softmax(-1)[..., 1]
    symmetric = (probability + probability.transpose(1, 2)) / 2 > 0.5
    eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    return symmetric & mask[:, :, None] & mask[:, None, :] & ~eye


def connected_components(adjacency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Component index of each node (B, N), numbered 0, 1, … per row by first node; -1 where `mask` is False.

    Boolean transitive closure by repeated squaring of the (symmetrised) reachability matrix.
    """
    nodes = mask.shape[1]
    valid = mask[:, :, None] & mask[:, None, :]
    eye = torch.eye(nodes, dtype=torch.bool, device=mask.device)
    reach = ((adjacency | adjacency.transpose(1, 2)) & valid) | (eye & mask[:, :, None])
    for _ in range(math.ceil(math.log2(max(nodes, 2)))):
        reach = torch.bmm(reach.float(), reach.float()) > 0
    root = reach.to(torch.uint8).argmax(-1)
    is_root = (root == torch.arange(nodes, device=mask.device)) & mask
    index = is_root.long().cumsum(1) - 1
    return torch.where(mask, index.gather(1, root), -1)


def decode_relations(
    logits: torch.Tensor, chain_mask: torch.Tensor, threshold: float = 0.5, one_per_pair: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chain pairs whose probability of some relation, 1 − p(no relation = class 0), is ≥ `threshold`, each with its
    likeliest relation type.

    With `one_per_pair`, two chains get at most one relation: the likelier of the two directions (the earlier
    subject on a tie); in the EN dev file of the release, 1,346 of the 1,367 related chain pairs hold exactly one
    relation and none holds one in each direction.

    logits (B, C, C, 1 + R), chain_mask (B, C) → pairs (N, 4) long `[row, subject, object, type]` with `type`
    indexing the relation types, and their scores (N,), the probability of a relation.
    """
    probability = logits.float().softmax(-1)
    score = 1 - probability[..., 0]
    eye = torch.eye(chain_mask.shape[1], dtype=torch.bool, device=chain_mask.device)
    keep = (score >= threshold) & chain_mask[:, :, None] & chain_mask[:, None, :] & ~eye
    if one_per_pair:
        reverse = score.transpose(1, 2)
        keep &= (score > reverse) | ((score == reverse) & torch.ones_like(eye).triu(1))
    rows, subjects, objects = keep.nonzero(as_tuple=True)
    types = probability[..., 1:].argmax(-1)[rows, subjects, objects]
    return torch.stack([rows, subjects, objects, types], dim=1), score[keep]


def select_grounding_slots(
    logits: torch.Tensor, boxes: torch.Tensor, frame_mask: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slots whose best class is a type (not the last, "none", class) with probability ≥ `threshold`.

    logits (B, F, S, G + 1), boxes (B, F, S, 4) → rows, frames, types, scores (N,) and boxes (N, 4).
    """
    probability = logits.softmax(-1)
    score, best = probability.max(-1)
    keep = (best < logits.shape[-1] - 1) & frame_mask[:, :, None] & (score >= threshold)
    rows, frames, slots = keep.nonzero(as_tuple=True)
    return rows, frames, best[keep], score[keep], boxes[rows, frames, slots]


def chain_mask_of(chain_ids: torch.Tensor) -> torch.Tensor:
    """(B, C) mask of the chains that exist, C ≥ 1, from per-mention chain ids (B, M) numbered from 0 (-1 = none)."""
    count = chain_ids.max(1).values + 1 if chain_ids.shape[1] else chain_ids.new_zeros(chain_ids.shape[0])
    width = max(int(count.max()), 1)
    return torch.arange(width, device=chain_ids.device) < count[:, None]


def first_mention_chain(relation_chain: torch.Tensor, mention_chain: torch.Tensor) -> torch.Tensor:
    """(B, C): for each chain of `relation_chain`, the `mention_chain` id of its first mention (-1 if none).

    Maps the chains relations are between (gold chains under the gold-pairs protocol) to predicted chains.
    """
    batch, mentions = relation_chain.shape
    width = int(relation_chain.max()) + 1 if relation_chain.numel() else 0
    positions = torch.arange(mentions, device=relation_chain.device).expand(batch, -1)
    index = torch.where(relation_chain >= 0, relation_chain, width)
    first = torch.full((batch, width + 1), mentions, dtype=torch.long, device=relation_chain.device)
    first = first.scatter_reduce(1, index, positions, "amin")[:, :width]
    found = first < mentions
    chains = mention_chain.gather(1, first.clamp(max=max(mentions - 1, 0))) if mentions else first
    return torch.where(found, chains, -1)


def _by_row(rows: Sequence[int], items: Sequence, batch_size: int) -> list[list]:
    grouped = [[] for _ in range(batch_size)]
    for row, item in zip(rows, items, strict=True):
        grouped[row].append(item)
    return grouped


def _entity_dicts(spans: torch.Tensor, batch_size: int, entity_types: Sequence[str]) -> list[list[dict]]:
    """(N, 4) `[row, start, end, type]` → per row `[{"start", "end", "type"}]`."""
    items = [{"start": s, "end": e, "type": entity_types[t]} for _, s, e, t in spans.tolist()]
    return _by_row(spans[:, 0].tolist(), items, batch_size)


def _chain_mentions(spans: torch.Tensor, chain_ids: torch.Tensor) -> list[dict[int, list[list[int]]]]:
    """Per row, chain id → its mentions `[[start, end], …]` in mention order (ids -1 are left out)."""
    rows, positions = (chain_ids >= 0).nonzero(as_tuple=True)
    chains = [{} for _ in range(chain_ids.shape[0])]
    for row, chain, span in zip(
        rows.tolist(), chain_ids[rows, positions].tolist(), spans[rows, positions].tolist(), strict=True
    ):
        chains[row].setdefault(chain, []).append(span)
    return chains


def _relation_dicts(decoded, relation_types: Sequence[str]) -> list[list[dict]]:
    """`decoded.relations` `[row, subject, object, type]` → per row `[{"subject": mentions, "object": mentions,
    "type", "subject_chain", "object_chain", "score"}]`, the chains indexing the row's predicted chains."""
    mentions = _chain_mentions(decoded.mention_spans, decoded.relation_chain)
    predicted = first_mention_chain(decoded.relation_chain, decoded.mention_chain).tolist()
    items = [
        {
            "subject": mentions[row][s],
            "object": mentions[row][o],
            "type": relation_types[t],
            "subject_chain": predicted[row][s],
            "object_chain": predicted[row][o],
            "score": score,
        }
        for (row, s, o, t), score in zip(
            decoded.relations.tolist(), decoded.relation_scores.tolist(), strict=True
        )
    ]
    return _by_row(decoded.relations[:, 0].tolist(), items, len(mentions))


def _grounding_dicts(
    decoded, frame_indices: torch.Tensor | None, grounding_types: Sequence[str]
) -> list[list[dict]]:
    """The selected grounding slots → per row `[{"frame", "type", "box", "score"}]`, `frame` indexing the row's own
    frames through `frame_indices` (B, F) when given."""
    rows, frames = decoded.grounding_rows, decoded.grounding_frames
    if frame_indices is not None:
        frames = frame_indices.to(frames.device)[rows, frames]
    items = [
        {"frame": f, "type": grounding_types[t], "box": b, "score": s}
        for f, t, s, b in zip(
            frames.tolist(),
            decoded.grounding_types.tolist(),
            decoded.grounding_scores.tolist(),
            decoded.grounding_boxes.tolist(),
            strict=True,
        )
    ]
    return _by_row(rows.tolist(), items, decoded.mention_spans.shape[0])


def documents_from_decoded(
    decoded,
    frame_indices: torch.Tensor | None,
    entity_types: Sequence[str],
    relation_types: Sequence[str],
    grounding_types: Sequence[str],
) -> list[dict]:
    """An `M3DDecoderOutput` → one document per row: `entities`, `chains` (predicted chains, as mention lists,
    numbered as `decoded.mention_chain`), `relations` (with the indices of their predicted chains) and
    `groundings` (frames of the row, through `frame_indices`), in the document format of `modeling_m3d.schema`."""
    batch = decoded.mention_spans.shape[0]
    chains = _chain_mentions(decoded.mention_spans, decoded.mention_chain)
    return [
        {
            "entities": entities,
            "chains": list(clusters.values()),
            "relations": relations,
            "groundings": groundings,
        }
        for entities, clusters, relations, groundings in zip(
            _entity_dicts(decoded.entities, batch, entity_types),
            chains,
            _relation_dicts(decoded, relation_types),
            _grounding_dicts(decoded, frame_indices, grounding_types),
            strict=True,
        )
    ]
