"""The criterion of M³D (paper Section V-D, Eq. 19–24), apart from the network as transformers keeps DETR's.

- NER: the negative log-likelihood of the gold BIO tags under the CRF (Eq. 19), averaged over words.
- Coreference and relations: cross-entropy over the labelled mention pairs and chain pairs (Eq. 20, 21).
- Grounding: slots are matched one-to-one to the gold boxes of their frame (Hungarian, scipy's
  `linear_sum_assignment`), then cross-entropy over every slot's type or "none" (Eq. 22) and L1 over the
  matched boxes (Eq. 23).
- Total: Σ_task α_task · loss_task (Eq. 24, α = `config.loss_weights`) plus `config.vae_kl_weight` times the KL
  term of the DFFM's variational bottlenecks (Eq. 8–10).

The losses take the model's outputs and the labels of the processor's batch (see `M3DProcessor`) as tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchcrf import CRF

from .configuration_m3d import M3DConfig
from .crf_m3d import log_likelihood
from .schema import IGNORE_INDEX

_MATCH_BLOCKED = 1e4  # Hungarian cost between a slot and a box of another frame


def crf_negative_log_likelihood(
    crf: CRF, emissions: torch.Tensor, word_mask: torch.Tensor, labels: torch.Tensor, normalization: str = "word"
) -> torch.Tensor:
    """Eq. 19: the CRF's negative log-likelihood of `labels` over the rows with text, averaged over their words
    (`normalization="word"`, the paper's 1/n_x) or summed over each row's words and averaged over rows
    (`"document"`).

    emissions (B, W, tags), word_mask (B, W) bool prefix mask, labels (B, W) tag ids (-100 on padding). Rows
    without words are left out (the CRF needs a first word); a batch without text gives a zero that keeps the
    graph. Equal to `-crf(emissions, tags, mask, reduction="token_mean")` of `pytorch-crf`, whose parameters it
    reads, without its Python loop over the words (`crf_m3d`); computed in float32.
    """
    rows = word_mask[:, 0]
    if not rows.any():
        return emissions.sum() * 0
    mask = word_mask[rows]
    likelihood = log_likelihood(crf, emissions[rows].float(), mask, labels[rows].clamp(min=0))
    return -likelihood.sum() / (mask.sum() if normalization == "word" else len(likelihood))


def pair_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, none_weight: float = 1.0) -> torch.Tensor:
    """Eq. 20–21: mean cross-entropy over the labelled pairs; logits (B, N, N, classes), labels (B, N, N) with
    -100 on padding and the diagonal. With `none_weight` ≠ 1, class 0 ("no relation") counts that much and the
    mean is weighted (`torch.nn.functional.cross_entropy`'s `weight`). 0 (keeping the graph) when a batch has no
    labelled pair."""
    if not (labels != IGNORE_INDEX).any():
        return logits.sum() * 0
    weight = None
    if none_weight != 1:
        weight = logits.new_ones(logits.shape[-1])
        weight[0] = none_weight
    return F.cross_entropy(logits.flatten(0, -2), labels.reshape(-1), weight=weight, ignore_index=IGNORE_INDEX)


@torch.no_grad()
def match_slots(
    logits: torch.Tensor, boxes: torch.Tensor, target_types: torch.Tensor, target_boxes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hungarian matching of the slots of all frames at once, on a block-diagonal cost (−p(type) + L1 box).

    Inputs are flattened over real frames: logits (N, S, G + 1), boxes (N, S, 4), target_types (N, T) with -100
    padding, target_boxes (N, T, 4). A slot is only matched to a box of its own frame. Returns the matched flat
    slot indices (into N·S), their target types and their target boxes.
    """
    frames, slots = logits.shape[:2]
    target_frame, target_index = (target_types != IGNORE_INDEX).nonzero(as_tuple=True)
    types, goal = target_types[target_frame, target_index], target_boxes[target_frame, target_index]
    cost = -logits.flatten(0, 1).softmax(-1)[:, types] + torch.cdist(boxes.flatten(0, 1), goal, p=1)
    slot_frame = torch.arange(frames, device=logits.device).repeat_interleave(slots)
    same_frame = slot_frame[:, None] == target_frame[None]
    cost = torch.where(same_frame, cost, _MATCH_BLOCKED)
    rows, cols = linear_sum_assignment(cost.float().cpu().numpy())
    rows, cols = torch.as_tensor(rows, device=logits.device), torch.as_tensor(cols, device=logits.device)
    keep = same_frame[rows, cols]
    return rows[keep], types[cols[keep]], goal[cols[keep]]


def grounding_losses(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    frame_mask: torch.Tensor,
    target_types: torch.Tensor,
    target_boxes: torch.Tensor,
    none_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 22 (type cross-entropy over all slots of real frames, the "none" class weighted by `none_weight`) and
    Eq. 23 (L1 of the matched boxes, summed over coordinates, averaged over matches).

    logits (B, F, S, G + 1), boxes (B, F, S, 4) in (cx, cy, w, h) ∈ [0, 1], frame_mask (B, F), target_types
    (B, F, T) type ids with -100 padding, target_boxes (B, F, T, 4). Raises `ValueError` on a type id outside
    the head's types.
    """
    if not frame_mask.any():
        zero = logits.sum() * 0 + boxes.sum() * 0
        return zero, zero
    num_types = logits.shape[-1] - 1
    logits, boxes = logits[frame_mask], boxes[frame_mask]
    target_types, target_boxes = target_types[frame_mask], target_boxes[frame_mask]
    valid = (target_types == IGNORE_INDEX) | ((target_types >= 0) & (target_types < num_types))
    if not valid.all():
        raise ValueError(f"grounding_types: type index outside [0, {num_types}) or -100.")
    slots, types, goal = match_slots(logits, boxes, target_types, target_boxes)
    flat_logits = logits.flatten(0, 1)
    targets = torch.full_like(flat_logits[:, 0], num_types, dtype=torch.long).index_put((slots,), types)
    weight = flat_logits.new_ones(num_types + 1)
    weight[-1] = none_weight
    type_loss = F.cross_entropy(flat_logits, targets, weight=weight)
    box_loss = (boxes.flatten(0, 1)[slots] - goal).abs().sum() / max(len(slots), 1)
    return type_loss, box_loss


class M3DLoss:
    """Eq. 24: the weighted task losses of the labels a batch carries, plus the KL term.

    Called with the model's output fields and the batch's labels; returns the total loss and each term
    (`ner`, `coref`, `re`, `grounding_type`, `grounding_box`), unweighted. A task without labels in the batch
    adds nothing.
    """

    def __init__(self, config: M3DConfig):
        self.weights = config.loss_weights
        self.kl_weight = config.vae_kl_weight
        self.none_weight = config.grounding_none_weight
        self.relation_none_weight = config.relation_none_weight
        self.ner_normalization = config.ner_loss_normalization

    def __call__(
        self,
        crf: CRF,
        *,
        word_mask: torch.Tensor,
        frame_mask: torch.Tensor,
        ner_logits: torch.Tensor,
        coref_logits: torch.Tensor | None,
        re_logits: torch.Tensor | None,
        grounding_logits: torch.Tensor,
        grounding_boxes: torch.Tensor,
        kl_loss: torch.Tensor,
        ner_labels: torch.Tensor | None = None,
        coref_labels: torch.Tensor | None = None,
        re_labels: torch.Tensor | None = None,
        grounding_labels: torch.Tensor | None = None,
        grounding_label_boxes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        losses = {}
        if ner_labels is not None:
            losses["ner"] = crf_negative_log_likelihood(crf, ner_logits, word_mask, ner_labels, self.ner_normalization)
        if coref_labels is not None and coref_logits is not None:
            losses["coref"] = pair_cross_entropy(coref_logits, coref_labels)
        if re_labels is not None and re_logits is not None:
            losses["re"] = pair_cross_entropy(re_logits, re_labels, self.relation_none_weight)
        if grounding_labels is not None and grounding_label_boxes is not None:
            losses["grounding_type"], losses["grounding_box"] = grounding_losses(
                grounding_logits,
                grounding_boxes,
                frame_mask,
                grounding_labels,
                grounding_label_boxes,
                self.none_weight,
            )
        if not losses:
            return None, losses
        total = sum(self.weights[name] * value for name, value in losses.items()) + self.kl_weight * kl_loss
        return total, losses
