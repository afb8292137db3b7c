"""The fast computations equal the plain ones they replace: the CRF likelihood and Viterbi without a loop over
the words (against `pytorch-crf`), and the DFFM direction run in the latent space (against Eq. 8–11 step by step)."""

from __future__ import annotations

import pytest
import torch
from torchcrf import CRF

from modeling_m3d.crf_m3d import best_paths
from modeling_m3d.loss_m3d import crf_negative_log_likelihood
from modeling_m3d.modeling_m3d import M3DDirectedFusion, M3DKeys, M3DLevelSum
from modeling_m3d.testing import build_tokenizer, tiny_config


@pytest.mark.parametrize(("batch", "words", "tags"), [(4, 9, 5), (2, 1, 9), (3, 70, 9)])
def test_crf_likelihood_and_gradients_equal_pytorch_crf(batch, words, tags):
    torch.manual_seed(words)
    crf = CRF(tags, batch_first=True)
    for parameter in crf.parameters():
        torch.nn.init.uniform_(parameter, -2.0, 2.0)
    emissions = (3 * torch.randn(batch, words, tags)).requires_grad_()
    lengths = torch.randint(1, words + 1, (batch,))
    lengths[0] = words
    mask = torch.arange(words) < lengths[:, None]
    labels = torch.randint(0, tags, (batch, words)).masked_fill(~mask, -100)
    ours = crf_negative_log_likelihood(crf, emissions, mask, labels)
    theirs = -crf(emissions, labels.clamp(min=0), mask=mask, reduction="token_mean")
    torch.testing.assert_close(ours, theirs)
    inputs = [emissions, *crf.parameters()]
    for a, b in zip(
        torch.autograd.grad(ours, inputs, allow_unused=True),
        torch.autograd.grad(theirs, inputs, allow_unused=True),
        strict=True,
    ):
        if b is not None:  # pytorch-crf leaves the transitions out of one-word sequences
            torch.testing.assert_close(a, b)


def test_crf_likelihood_skips_rows_without_words():
    crf = CRF(5, batch_first=True)
    emissions, labels = torch.randn(2, 4, 5), torch.randint(0, 5, (2, 4))
    mask = torch.tensor([[True, True, False, False], [False] * 4])
    expected = -crf(emissions[:1], labels[:1], mask=mask[:1], reduction="token_mean")
    torch.testing.assert_close(crf_negative_log_likelihood(crf, emissions, mask, labels), expected)


@pytest.mark.parametrize("tags", [3, 9])
def test_best_paths_equal_pytorch_crf_viterbi(tags):
    torch.manual_seed(tags)
    crf = CRF(tags, batch_first=True)
    for parameter in crf.parameters():
        torch.nn.init.uniform_(parameter, -2.0, 2.0)
    for words in (1, 2, 3, 5, 8, 9, 40):  # odd, even and power-of-two step counts
        emissions = 2 * torch.randn(4, words, tags)
        lengths = torch.randint(1, words + 1, (4,))
        lengths[0] = words
        mask = torch.arange(words) < lengths[:, None]
        with torch.inference_mode():
            paths = best_paths(crf, emissions, mask)
        for row, expected in enumerate(crf.decode(emissions, mask=mask)):
            assert paths[row].tolist() == expected + [0] * (words - len(expected)), (words, row)


def _plain_direction(fusion: M3DDirectedFusion, query, query_mask, keys: M3DKeys) -> torch.Tensor:
    """Eq. 8–11 as written: W^K, W^V at d_h, Encoder_λ, attention, FFN, Decoder_λ, then the level sum."""
    decoded = []
    for level, level_keys in zip(fusion.levels, keys.levels, strict=True):
        mean = level.vae.statistics
        q, k, v = (mean(x).chunk(2, -1)[0] for x in (query, level.key(level_keys), level.value(level_keys)))
        attended = q + level.attention(q, k, v, key_padding_mask=~keys.mask, need_weights=False)[0]
        decoded.append(level.vae.decoder(attended + level.ffn(attended)))
    return fusion.mix(torch.cat([*decoded, query], dim=-1))


def test_latent_space_direction_equals_the_equations():
    config = tiny_config(build_tokenizer(lang="en"))
    torch.manual_seed(0)
    fusion = M3DDirectedFusion(config).double().eval()  # float64: only rounding may differ
    for module in fusion.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.3)
            torch.nn.init.normal_(module.bias, std=0.3)
    assert isinstance(fusion.mix, M3DLevelSum)
    hidden = config.text_config.hidden_size
    query, query_mask = (
        torch.randn(2, 5, hidden, dtype=torch.float64),
        torch.tensor([[True] * 5, [True] * 3 + [False] * 2]),
    )
    key_mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    keys = M3DKeys(tuple(torch.randn(2, 7, hidden, dtype=torch.float64) for _ in range(3)), key_mask)
    with torch.no_grad():
        fused, _ = fusion(query, query_mask, keys)
        torch.testing.assert_close(fused, _plain_direction(fusion, query, query_mask, keys))
