"""The linear-chain CRF of the entity head (Eq. 15, 19) computed without a loop over the words.

The parameters are those of `pytorch-crf`'s `torchcrf.CRF` (`start_transitions`, `end_transitions`,
`transitions`), so saved models load; its own forward algorithm and Viterbi step through the words one at a
time in Python. Here a row's W words are W − 1 step matrices `transitions[i, j] + emissions[t, j]`, reduced
pairwise as a balanced tree of semiring matrix products: ⌈log₂ W⌉ batched steps. In the log semiring
(logsumexp) the reduction is the forward algorithm (log Z); in the max-plus semiring, with a pass back down
the tree, it gives every word's max-marginals and with them the best path (Viterbi).
"""

from __future__ import annotations

import math

import torch
from torchcrf import CRF

_LOG_ZERO = -1e4  # score of an impossible step: exp() is exactly 0 in float32, and gradients stay finite


def path_score(crf: CRF, emissions: torch.Tensor, mask: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """Score of the tag sequences `tags` (B, W) over the words of the prefix `mask` (B, W) → (B,): start,
    emission, transition and end scores."""
    weight = mask.to(emissions.dtype)
    emitted = emissions.gather(-1, tags[..., None]).squeeze(-1) * weight
    moved = crf.transitions[tags[:, :-1], tags[:, 1:]] * weight[:, 1:]
    last = tags.gather(1, mask.sum(1, keepdim=True) - 1).squeeze(1)
    return crf.start_transitions[tags[:, 0]] + emitted.sum(1) + moved.sum(1) + crf.end_transitions[last]


def step_matrices(crf: CRF, emissions: torch.Tensor, mask: torch.Tensor, impossible: float) -> torch.Tensor:
    """(B, W − 1, tags, tags): step t scores `transitions[i, j] + emissions[t + 1, j]`; past a row's last word
    the identity (0 on the diagonal, `impossible` elsewhere)."""
    tags = emissions.shape[-1]
    identity = torch.full((tags, tags), impossible, device=emissions.device).fill_diagonal_(0.0)
    return torch.where(mask[:, 1:, None, None], crf.transitions + emissions[:, 1:, None, :], identity)


def log_partition(crf: CRF, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log Z per row → (B,): the forward algorithm as a balanced tree of log-semiring (logsumexp) products of
    the step matrices, an odd one out paired with the identity at each level.

    emissions (B, W, tags), mask (B, W) a prefix mask with at least one word per row.
    """
    steps = step_matrices(crf, emissions, mask, _LOG_ZERO)
    identity = steps.new_full(steps.shape[-2:], _LOG_ZERO).fill_diagonal_(0.0)
    while steps.shape[1] > 1:
        if steps.shape[1] % 2:
            steps = torch.cat([steps, identity.expand(steps.shape[0], 1, -1, -1)], dim=1)
        steps = torch.logsumexp(steps[:, 0::2, :, :, None] + steps[:, 1::2, None, :, :], dim=-2)
    alpha = crf.start_transitions + emissions[:, 0]
    if steps.shape[1]:
        alpha = torch.logsumexp(alpha[:, :, None] + steps[:, 0], dim=1)
    return torch.logsumexp(alpha + crf.end_transitions, dim=-1)


def log_likelihood(crf: CRF, emissions: torch.Tensor, mask: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """log p(tags | emissions) per row → (B,); what `crf(emissions, tags, mask, reduction="none")` returns."""
    return path_score(crf, emissions, mask, tags) - log_partition(crf, emissions, mask)


def best_paths(crf: CRF, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Viterbi: the best tag sequence of each row → (B, W) long (0 past a row's words).

    The step matrices, padded with identities to a power of two, are multiplied up a binary tree (max-plus);
    going down, each node gets α, the best score vector of the prefixes that end where it starts (the left
    child: its parent's; the right child: α ⊗ the left child), and β, the best continuation from where it
    ends (the right child: its parent's; the left child: the right child ⊗ β). At word t + 1 the best path
    through tag j scores (α_t ⊗ M_t)[j] + β_t[j], and the path takes the argmax (a tie between best paths,
    of probability zero for real-valued scores, may mix them).
    """
    batch, length, _ = emissions.shape
    first, end = crf.start_transitions + emissions[:, 0], crf.end_transitions.expand(batch, 1, -1)
    steps = step_matrices(crf, emissions, mask, -math.inf)
    count = steps.shape[1]
    identity = steps.new_full(steps.shape[-2:], -math.inf).fill_diagonal_(0.0)
    padding = (1 << max(count - 1, 0).bit_length()) - count
    levels = [torch.cat([steps, identity.expand(batch, padding, -1, -1)], dim=1)]
    while levels[-1].shape[1] > 1:
        levels.append(_max_plus(levels[-1][:, 0::2], levels[-1][:, 1::2]))
    alpha, beta = first[:, None], end
    for children in reversed(levels[:-1]):
        left, right = children[:, 0::2], children[:, 1::2]
        alpha = _interleave(alpha, (alpha[..., None] + left).amax(-2))
        beta = _interleave((right + beta[:, :, None]).amax(-1), beta)
    first_word = first + (levels[-1][:, 0] + end).amax(-1) if count else first + end[:, 0]
    later_words = (alpha[..., None] + levels[0]).amax(-2) + beta
    scores = torch.cat([first_word[:, None], later_words[:, :count]], dim=1)
    return torch.where(mask, scores.argmax(-1), 0)


def _max_plus(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Max-plus products of (..., T, T) stacks: out[i, k] = max_j left[i, j] + right[j, k]."""
    return (left[..., :, :, None] + right[..., None, :, :]).amax(-2)


def _interleave(even: torch.Tensor, odd: torch.Tensor) -> torch.Tensor:
    """(B, K, T) and (B, K, T) → (B, 2K, T) alternating, `even` first."""
    return torch.stack([even, odd], dim=2).flatten(1, 2)
