"""Tests of M3DConfig and M3DModel on tiny encoders (CPU, seconds)."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from PIL import Image
from tokenizers import processors
from transformers import AutoModel, BertConfig

from modeling_m3d.configuration_m3d import M3DConfig
from modeling_m3d.loss_m3d import crf_negative_log_likelihood, pair_cross_entropy
from modeling_m3d.modeling_m3d import (
    M3DLevelSum,
    M3DModel,
    M3DNoFusion,
    closest_mention_gaps,
    layer_thirds,
    span_mean,
)
from modeling_m3d.processing_m3d import M3DProcessor
from modeling_m3d.testing import build_tokenizer, tiny_config, tiny_image_processor

WORDS = "John Smith was born in Paris and he worked for Google in 1990 before moving to London".split()
ENTITIES = [(0, 2, 0, 0), (5, 6, 1, 1), (7, 8, 0, 0), (10, 11, 2, 2), (12, 13, 3, 3), (16, 17, 1, 4)]
RELATIONS = [(0, 1, "PER-LOC_birth"), (0, 2, "PER-ORG_member"), (0, 4, "PER-LOC_go_to")]


def make_row(index: int, text: bool = True, video: bool = True, words: list[str] | None = None) -> dict:
    """A schema row; `text=False` / `video=False` drop that modality."""
    words = WORDS[: 6 + 3 * index] if words is None else words
    entities = [e for e in ENTITIES if e[1] <= len(words)] if text else []
    chains = sorted({e[3] for e in entities})
    relations = [r for r in RELATIONS if r[0] in chains and r[1] in chains]
    frames = [Image.new("RGB", (40, 30), (60 * index % 255, 90, 40 * f)) for f in range(index % 3 + 1)]
    return {
        "id": f"video_{index}",
        "tokens": words if text else [],
        "entities": [{"start": s, "end": e, "type": t, "chain": chains.index(c)} for s, e, t, c in entities],
        "chains": [{"id": f"L{c}", "type": next(e[2] for e in entities if e[3] == c)} for c in chains],
        "relations": [
            {"subject": chains.index(s), "object": chains.index(o), "type": t} for s, o, t in relations
        ],
        "frames": frames if video else [],
        "groundings": [{"frame": 0, "type": index % 3, "box": [0.5, 0.4, 0.2, 0.3]}] if video else [],
    }


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer([" ".join(WORDS)], "en")


def build(
    tokenizer, seed: int = 0, text_overrides: dict | None = None, **overrides
) -> tuple[M3DModel, M3DProcessor]:
    config = tiny_config(tokenizer, **overrides)
    for key, value in (text_overrides or {}).items():
        setattr(config.text_config, key, value)
    torch.manual_seed(seed)
    processor = M3DProcessor(
        tiny_image_processor(), tokenizer, relation_types=config.relation_types, max_frames=config.max_frames
    )
    return M3DModel(config), processor


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return build(tokenizer)


@pytest.fixture(scope="module")
def mixed_batch(tiny):
    rows = [make_row(0), make_row(1, text=False), make_row(2, video=False), make_row(3)]
    return tiny[1](rows, return_tensors="pt")


def test_output_shapes_and_losses(tiny, mixed_batch):
    model, _ = tiny
    config = model.config
    out = model(**mixed_batch)
    batch, words = mixed_batch["word_mask"].shape
    frames, entities = mixed_batch["frame_mask"].shape[1], mixed_batch["entity_mask"].shape[1]
    chains = mixed_batch["chain_mask"].shape[1]
    assert out.ner_logits.shape == (batch, words, 1 + 2 * len(config.entity_types))
    assert out.coref_logits.shape == (batch, entities, entities, 2)
    assert out.re_logits.shape == (batch, chains, chains, len(config.relation_types) + 1)
    slots, types = config.grounding_slots, len(config.grounding_types)
    assert out.grounding_logits.shape == (batch, frames, slots, types + 1)
    assert out.grounding_boxes.shape == (batch, frames, slots, 4)
    assert ((out.grounding_boxes > 0) & (out.grounding_boxes < 1)).all()
    assert out.text_features.shape == (batch, words, config.text_config.hidden_size)
    assert out.frame_features.shape == (batch, frames, config.text_config.hidden_size)
    parts = [out.ner_loss, out.coref_loss, out.re_loss, out.grounding_type_loss, out.grounding_box_loss]
    assert all(torch.isfinite(p) and p > 0 for p in parts)
    weights = config.loss_weights
    expected = (
        weights["ner"] * out.ner_loss
        + weights["coref"] * out.coref_loss
        + weights["re"] * out.re_loss
        + weights["grounding_type"] * out.grounding_type_loss
        + weights["grounding_box"] * out.grounding_box_loss
        + config.vae_kl_weight * out.kl_loss
    )
    torch.testing.assert_close(out.loss, expected)
    no_labels = {
        k: v
        for k, v in mixed_batch.items()
        if not k.endswith(("_labels", "grounding_label_boxes", "grounding_labels"))
    }
    assert model(**no_labels).loss is None


@pytest.mark.parametrize(
    "fusion,use_mmcm",
    [("dffm", True), ("dffm", False), ("none", False), ("one_stream", False), ("two_stream", False)],
)
def test_rows_are_independent_of_their_batch(tokenizer, fusion, use_mmcm):
    """Each missing-modality path (no text, no video, both present) in a mixed batch gives the same outputs as
    the row alone: padding and the per-row selection of generated keys do not leak across rows."""
    model, processor = build(tokenizer, fusion=fusion, use_mmcm=use_mmcm)
    model.eval()
    rows = [make_row(0), make_row(1, text=False), make_row(2, video=False), make_row(4)]
    batch_out = model(**processor(rows, return_tensors="pt"))
    for index, row in enumerate(rows):
        single = processor([row], return_tensors="pt")
        alone = model(**single)
        words, frames = single["word_mask"].sum(), single["frame_mask"].sum()
        torch.testing.assert_close(
            batch_out.text_features[index, :words], alone.text_features[0, :words], atol=1e-5, rtol=1e-4
        )
        torch.testing.assert_close(
            batch_out.frame_features[index, :frames], alone.frame_features[0, :frames], atol=1e-5, rtol=1e-4
        )
        assert torch.isfinite(alone.loss)


def _grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


def test_mmcm_takes_gradients_only_from_missing_rows(tokenizer):
    model, processor = build(tokenizer)
    _open_level_sums(model)
    model(**processor([make_row(0), make_row(3)], return_tensors="pt")).loss.backward()
    assert all(g is None for g in _grads(model.text_from_frames) + _grads(model.frames_from_text))
    model.zero_grad(set_to_none=True)
    model(**processor([make_row(0), make_row(1, text=False)], return_tensors="pt")).loss.backward()
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(model.text_from_frames))
    assert all(g is None for g in _grads(model.frames_from_text))
    model.zero_grad(set_to_none=True)
    model(**processor([make_row(2, video=False)], return_tensors="pt")).loss.backward()
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(model.frames_from_text))


def _open_level_sums(model: M3DModel) -> M3DModel:
    """W_λ of Eq. 11 start at 0 (`M3DLevelSum`), which holds back the levels' gradients until the first step;
    give them the non-zero values training reaches."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, M3DLevelSum):
            with torch.no_grad():
                module.weight.normal_(std=0.1, generator=generator)
    return model


def test_level_sum_starts_as_the_encoder_features(tokenizer):
    """At initialisation the DFFM passes H through unchanged (W = I, W_λ = 0) and only W_λ gets gradients."""
    model, processor = build(tokenizer)
    levels = torch.randn(2, 5, 4 * model.config.text_config.hidden_size, requires_grad=True)
    mix = model.fusion.frames_into_text.mix
    out = mix(levels)
    torch.testing.assert_close(out, levels[..., -model.config.text_config.hidden_size :])
    out.sum().backward()
    assert mix.weight.grad[:, : 3 * mix.out_features].abs().sum() > 0
    assert levels.grad[..., : 3 * mix.out_features].abs().sum() == 0


def test_gradients_reach_fusion_and_heads(tokenizer, mixed_batch):
    model = _open_level_sums(build(tokenizer)[0])
    model(**mixed_batch).loss.backward()
    for name in (
        "fusion",
        "text_from_frames",
        "frames_from_text",
        "entity_head",
        "coref_head",
        "relation_head",
        "grounding_head",
        "vision_model",
        "text_model",
    ):
        named = [(n, p.grad) for n, p in getattr(model, name).named_parameters()]
        # Longformer's global-attention projections only act on tokens with global attention (none here).
        missing = [n for n, g in named if (g is None or not g.abs().sum() > 0) and "_global" not in n]
        assert not missing, f"{name}: no gradient for {missing}"
    assert model.frame_positions.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_save_and_load_give_identical_outputs(tiny, mixed_batch, tmp_path):
    model, _ = tiny
    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = M3DModel.from_pretrained(tmp_path)
    assert not loaded.training
    for key in ("entity_types", "relation_types", "grounding_types", "fusion", "use_mmcm", "loss_weights"):
        assert getattr(loaded.config, key) == getattr(model.config, key)
    assert loaded.config.text_config.attention_window == model.config.text_config.attention_window
    with torch.no_grad():
        a, b = model(**mixed_batch), loaded(**mixed_batch)
    for key in (
        "loss",
        "ner_logits",
        "coref_logits",
        "re_logits",
        "grounding_logits",
        "grounding_boxes",
    ):
        torch.testing.assert_close(a[key], b[key])
    torch.testing.assert_close(loaded.frame_positions, model.frame_positions)
    torch.testing.assert_close(loaded.text_from_frames.prompts, model.text_from_frames.prompts)
    model.train()


def test_from_encoders_pretrained_keeps_encoder_weights(tiny, tmp_path):
    model, _ = tiny
    model.text_model.save_pretrained(tmp_path / "text")
    model.vision_model.save_pretrained(tmp_path / "vision")
    built = M3DModel.from_encoders_pretrained(str(tmp_path / "text"), str(tmp_path / "vision"), fusion="none")
    assert built.config.fusion == "none" and isinstance(built.fusion, M3DNoFusion)
    for name in ("text_model", "vision_model"):
        theirs = getattr(model, name).state_dict()
        for key, value in getattr(built, name).state_dict().items():
            torch.testing.assert_close(value, theirs[key])


@pytest.mark.parametrize("normalization", ["word", "document"])
def test_ner_loss_normalisation(tiny, normalization):
    """Eq. 19 averaged over words (the paper's) or each document's sequence NLL averaged over documents."""
    crf = tiny[0].entity_head.crf
    torch.manual_seed(0)
    emissions = torch.randn(3, 6, crf.num_tags)
    word_mask = torch.arange(6) < torch.tensor([6, 2, 0])[:, None]
    labels = torch.randint(0, crf.num_tags, (3, 6))
    per_row = [-crf(emissions[i : i + 1], labels[i : i + 1], mask=word_mask[i : i + 1]) for i in (0, 1)]
    expected = (per_row[0] + per_row[1]) / (8 if normalization == "word" else 2)
    loss = crf_negative_log_likelihood(crf, emissions, word_mask, labels, normalization)
    torch.testing.assert_close(loss, expected)


def _text_encoder(tiny_model: M3DModel, family: str):
    """The tiny model's Longformer, or a BERT of the same size and vocabulary, with random weights."""
    if family == "longformer":
        return tiny_model.text_model
    text = tiny_model.config.text_config
    config = BertConfig(vocab_size=text.vocab_size, hidden_size=text.hidden_size, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=2 * text.hidden_size, pad_token_id=text.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    return AutoModel.from_config(config, add_pooling_layer=False)


@pytest.mark.parametrize("family", ["longformer", "bert"])
def test_pretrained_encoders_predict_as_their_reloaded_copy(tiny, mixed_batch, tmp_path, family):
    """Building the M3DConfig from a loaded encoder's config once left its attention implementation unset:
    Longformer then had no attention mask (a crash), BERT attended to padding unlike its reloaded copy."""
    model, _ = tiny
    _text_encoder(model, family).save_pretrained(tmp_path / "text")
    model.vision_model.save_pretrained(tmp_path / "vision")
    built = M3DModel.from_encoders_pretrained(str(tmp_path / "text"), str(tmp_path / "vision")).eval()
    built.save_pretrained(tmp_path / "m3d")
    copy = M3DModel.from_pretrained(tmp_path / "m3d").eval()
    for name in ("text_model", "vision_model"):
        implementation = getattr(built, name).config._attn_implementation
        assert (
            implementation is not None and implementation == getattr(copy, name).config._attn_implementation
        )
    with torch.no_grad():
        torch.testing.assert_close(
            built(**mixed_batch).ner_logits, copy(**mixed_batch).ner_logits, rtol=0, atol=1e-6
        )
    assert built.predict(**mixed_batch, protocol="gold_pairs") == copy.predict(
        **mixed_batch, protocol="gold_pairs"
    )


def test_a_batch_without_pieces_encodes_to_blank_text(tiny):
    """A tokenizer that adds no special tokens gives a text-missing batch no pieces at all (T = 0)."""
    model, _ = tiny
    bare = build_tokenizer([" ".join(WORDS)], "en")
    bare.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    processor = M3DProcessor(tiny_image_processor(), bare, relation_types=model.config.relation_types)
    batch = processor([make_row(0, text=False), make_row(1, text=False)], return_tensors="pt")
    assert batch["input_ids"].shape == (2, 0)
    out = model(**batch)
    assert torch.isfinite(out.loss) and not out.text_features.any()
    assert all(not document["entities"] for document in model.predict(**batch))


def _parameter_names(model: M3DModel) -> set[str]:
    return {name.split(".")[0] for name, _ in model.named_parameters()}


def test_ablation_flags_remove_their_modules(tokenizer):
    full = _parameter_names(build(tokenizer)[0])
    assert {"fusion", "text_from_frames", "frames_from_text"} <= full
    no_mmcm = _parameter_names(build(tokenizer, use_mmcm=False)[0])
    assert "fusion" in no_mmcm and not {"text_from_frames", "frames_from_text"} & no_mmcm
    no_dffm = _parameter_names(build(tokenizer, fusion="none")[0])
    assert not {"fusion", "text_from_frames", "frames_from_text"} & no_dffm
    for baseline in ("one_stream", "two_stream"):
        model = build(tokenizer, fusion=baseline)[0]
        assert "fusion" in _parameter_names(model) and not {
            "text_from_frames",
            "frames_from_text",
        } & _parameter_names(model)
        assert (
            type(model.fusion).__name__
            == {"one_stream": "M3DOneStreamFusion", "two_stream": "M3DTwoStreamFusion"}[baseline]
        )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"use_mmcm": "True"}, "use_mmcm"),
        ({"use_mmcm": 1}, "use_mmcm"),
        ({"fusion": "co_attention"}, "fusion"),
        ({"latent_dim": 64.0}, "latent_dim"),
        ({"latent_dim": True}, "latent_dim"),
        ({"latent_dim": 30, "fusion_heads": 4}, "must divide `latent_dim`"),
        ({"grounding_slots": 0}, "grounding_slots"),
        ({"relation_types": "PER-LOC_birth"}, "relation_types"),
        ({"loss_weights": {"ner": "1"}}, "loss_weights"),
        ({"vae_kl_weight": -1.0}, "vae_kl_weight"),
        ({"text_config": 3}, "text_config"),
        ({"grounding_pooling": "max"}, "grounding_pooling"),
        ({"relation_none_weight": 0}, "relation_none_weight"),
        ({"pair_gradient_scale": 1.5}, "pair_gradient_scale"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    """Field types are checked by `@strict`, the cross-field rules by `validate_architecture`."""
    with pytest.raises(StrictDataclassError, match=match):
        M3DConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"entity_types": ["PER", "PER"]}, {"loss_weights": {"ner": 1.0, "nre": 2.0}}, {"entity_types": []}],
)
def test_config_rejects_bad_label_sets_and_loss_terms(kwargs):
    with pytest.raises(ValueError, match="M3DConfig"):
        M3DConfig(**kwargs)


def test_pair_cross_entropy_weights_the_no_relation_class():
    logits = torch.randn(1, 3, 3, 4)
    labels = torch.tensor([[[-100, 0, 2], [0, -100, 0], [3, -100, -100]]])
    kept = labels != -100
    each = torch.nn.functional.cross_entropy(logits[kept], labels[kept], reduction="none")
    torch.testing.assert_close(pair_cross_entropy(logits, labels), each.mean())
    weights = torch.where(labels[kept] == 0, 0.25, 1.0)
    weighted = (weights * each).sum() / weights.sum()
    torch.testing.assert_close(pair_cross_entropy(logits, labels, none_weight=0.25), weighted)


def test_the_relation_loss_weights_no_relation_by_the_config(tokenizer, mixed_batch):
    model, _ = build(tokenizer, relation_none_weight=0.25)
    model.eval()
    with torch.no_grad():
        out = model(**mixed_batch)
    expected = pair_cross_entropy(out.re_logits, mixed_batch["re_labels"], none_weight=0.25)
    torch.testing.assert_close(out.re_loss, expected)
    assert not torch.isclose(out.re_loss, pair_cross_entropy(out.re_logits, mixed_batch["re_labels"]))


def test_pair_gradient_scale_scales_what_the_pair_losses_send_to_the_encoder(tokenizer, mixed_batch):
    """The coreference and relation losses reach the text encoder times `pair_gradient_scale` (0: not at all),
    while the pair heads learn from the whole of them and the forward pass is unchanged."""

    def pair_gradients(scale: float) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        model, _ = build(tokenizer, pair_gradient_scale=scale)
        model.eval()  # no dropout: the same computation at every scale
        out = model(**mixed_batch)
        (out.coref_loss + out.re_loss).backward()
        encoder = torch.cat([p.grad.flatten() for p in model.text_model.parameters() if p.grad is not None])
        heads = {name: p.grad for name, p in model.named_parameters() if name.startswith(("coref_head", "relation_head"))}
        return encoder, heads, out.re_logits.detach()

    full, full_heads, logits = pair_gradients(1.0)
    half, half_heads, half_logits = pair_gradients(0.5)
    none, none_heads, _ = pair_gradients(0.0)
    assert full.abs().sum() > 0 and not none.abs().sum()
    torch.testing.assert_close(half, full / 2)
    assert torch.equal(logits, half_logits)
    for name, grad in full_heads.items():
        torch.testing.assert_close(half_heads[name], grad)
        torch.testing.assert_close(none_heads[name], grad)


def test_config_reads_the_legacy_relation_loss_weight():
    assert M3DConfig(loss_weights={"relation": 2.0}).loss_weights["re"] == 2.0


def test_config_defaults_and_round_trip(tmp_path):
    config = M3DConfig(relation_types=["A-B_x"], loss_weights={"coref": 2.0})
    assert config.text_config.model_type == "longformer" and config.vision_config.model_type == "vit"
    assert config.latent_dim == 64 and config.prompt_length == 64 and config.dropout == 0.1
    assert (
        config.initializer_range == 0.02
    )  # the usual std at the paper's width; scaled up for narrow encoders
    assert M3DConfig(
        text_config={"model_type": "bert", "hidden_size": 192}
    ).initializer_range == pytest.approx(0.04)
    assert config.loss_weights["coref"] == 2.0 and config.loss_weights["ner"] == 1.0
    config.save_pretrained(tmp_path)
    loaded = M3DConfig.from_pretrained(tmp_path)
    assert loaded.relation_types == ["A-B_x"] and loaded.text_config.hidden_size == 768
    assert type(loaded.text_config) is type(config.text_config)


def test_mention_is_the_mean_of_exactly_its_words():
    """Regression: the authors' release shifted mention spans by one word."""
    torch.manual_seed(0)
    features = torch.randn(2, 9, 5)
    spans = torch.tensor([[[0, 1], [2, 5], [8, 9]], [[3, 4], [0, 9], [0, 0]]])
    means = span_mean(features, spans)
    for b in range(2):
        for e, (start, end) in enumerate(spans[b].tolist()):
            expected = features[b, start:end].mean(0) if end > start else torch.zeros(5)
            torch.testing.assert_close(means[b, e], expected)


def test_closest_mention_gaps_are_the_words_between_the_nearest_mentions():
    # mentions [0, 1) and [10, 12) of chain 0, [5, 6) of chain 1, [13, 14) of chain 2, one padding mention
    spans = torch.tensor([[[0, 1], [5, 6], [10, 12], [13, 14], [0, 0]]])
    chain = torch.tensor([[0, 1, 0, 2, -1]])
    gaps = closest_mention_gaps(spans, chain, num_chains=4)
    assert gaps.shape == (1, 4, 4, 2)
    assert gaps[0, 0, 1].tolist() == gaps[0, 1, 0].tolist() == [1, 5]  # a tie with [6, 10): the first pair
    assert gaps[0, 0, 2].tolist() == gaps[0, 2, 0].tolist() == [12, 13]  # [10, 12) is nearer [13, 14)
    assert gaps[0, 1, 2].tolist() == [6, 13]
    assert gaps[0, 3].tolist() == gaps[0, :, 3].tolist() == [[0, 0]] * 4  # chain 3 has no mention
    overlapping = closest_mention_gaps(torch.tensor([[[2, 5], [3, 4]]]), torch.tensor([[0, 1]]), 2)
    assert overlapping[0, 0, 1, 0] == overlapping[0, 0, 1, 1]  # empty
    assert closest_mention_gaps(torch.zeros(2, 0, 2, dtype=torch.long), torch.zeros(2, 0).long(), 3).shape == (
        2, 3, 3, 2
    )  # fmt: skip


def test_layer_thirds_cover_all_layers():
    assert layer_thirds(12) == [(1, 5), (5, 9), (9, 13)]
    assert layer_thirds(3) == [(1, 2), (2, 3), (3, 4)]
    for layers in (1, 2, 4, 5):
        ranges = layer_thirds(layers)
        assert all(1 <= lo < hi <= layers + 1 for lo, hi in ranges)
        assert set().union(*(range(lo, hi) for lo, hi in ranges)) == set(range(1, layers + 1))


def test_long_document_is_encoded_in_windows(tokenizer):
    """A document longer than the encoder's positions works, and equals a manual window-by-window
    reference."""
    model, processor = build(tokenizer, text_overrides={"max_position_embeddings": 34})
    model.eval()
    assert model.text_window == (32, 16)
    rows = [make_row(0, words=WORDS * 5), make_row(1, words=WORDS[:5])]
    batch = processor(rows, return_tensors="pt")
    assert batch["input_ids"].shape[1] > 32
    with torch.no_grad():
        merged = model.encode_text(batch["input_ids"], batch["attention_mask"])
        assert torch.isfinite(model(**batch).loss)
    length = batch["input_ids"].shape[1]
    for row in range(2):
        total, count = torch.zeros_like(merged[:, row]), torch.zeros(length)
        for offset in range(0, length, 16):
            ids = batch["input_ids"][row : row + 1, offset : offset + 32]
            mask = batch["attention_mask"][row : row + 1, offset : offset + 32]
            if not mask.any():
                continue
            with torch.no_grad():
                out = model.text_model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            levels = model.text_levels(out.last_hidden_state, out.hidden_states)[:, 0]
            total[:, offset : offset + ids.shape[1]] += levels * mask[0, :, None]
            count[offset : offset + ids.shape[1]] += mask[0]
            if offset + 32 >= length:
                break
        real = batch["attention_mask"][row].bool()
        reference = total / count.clamp(min=1)[:, None]
        torch.testing.assert_close(merged[:, row, real], reference[:, real], atol=1e-5, rtol=1e-4)


def test_kl_sampling_in_training_only(tokenizer):
    silent = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    model, processor = build(tokenizer, dropout=0.0, vae_kl_weight=0.5, text_overrides=silent)
    _open_level_sums(model)  # the sampled levels reach the output through W_λ
    batch = processor([make_row(0), make_row(2)], return_tensors="pt")
    model.train()
    first, second = model(**batch), model(**batch)
    assert not torch.allclose(first.text_features, second.text_features)
    assert first.kl_loss > 0
    model.eval()
    torch.testing.assert_close(model(**batch).text_features, model(**batch).text_features)
    deterministic, processor = build(tokenizer, dropout=0.0, vae_kl_weight=0.0, text_overrides=silent)
    deterministic.train()
    torch.testing.assert_close(deterministic(**batch).text_features, deterministic(**batch).text_features)


def _aten_ops(fn) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fn()
    return sum(1 for event in profile.events() if event.name.startswith("aten::"))


def test_pair_scoring_cost_does_not_grow_with_entity_count(tiny):
    """Structural check that pairs are scored as batched tensors: the number of tensor operations of the pair
    heads and losses is the same for 5 and for 50 entities (no Python loop over entities or pairs)."""
    model, _ = tiny
    text = torch.randn(1, 60, model.config.text_config.hidden_size)

    def run(entities: int) -> None:
        starts = torch.randint(0, 59, (1, entities))
        spans = torch.stack([starts, starts + 1], -1)
        chains = torch.arange(entities)[None] // 2
        mentions = model.mention_features(text, spans)
        coref = model.coref_head(mentions)
        relation = model.relation_head(
            model.chain_features(text, None, spans, mentions, chains, (entities + 1) // 2)
        )
        labels = torch.randint(0, 2, coref.shape[:-1])
        (
            pair_cross_entropy(coref, labels)
            + pair_cross_entropy(relation, torch.zeros(relation.shape[:-1]).long())
        ).backward()

    run(5)  # warm-up: first calls dispatch one-off operations
    assert _aten_ops(lambda: run(5)) == _aten_ops(lambda: run(50))
    model.zero_grad(set_to_none=True)


def test_slot_grounding_and_relation_context_shapes_and_save_load(tokenizer, tmp_path):
    """The knobs beyond the paper: slot queries over the patch grid (with reference-point centres, a non-persistent
    buffer that `from_pretrained` must rebuild) and the context words in the chain representations."""
    model, processor = build(tokenizer, grounding_pooling="slots", relation_context=2, relation_between=True)
    config = model.config
    assert model.relation_head.subject[0].in_features == 3 * config.text_config.hidden_size
    assert model.relation_head.pair[0].in_features == config.text_config.hidden_size
    batch = processor([make_row(0), make_row(1, text=False), make_row(2, video=False)], return_tensors="pt")
    out = model(**batch)
    frames = batch["frame_mask"].shape[1]
    assert out.grounding_logits.shape == (3, frames, config.grounding_slots, len(config.grounding_types) + 1)
    assert out.grounding_boxes.shape == (3, frames, config.grounding_slots, 4)
    out.loss.backward()
    assert model.grounding_head.queries.grad.abs().sum() > 0
    assert model.relation_head.pair[0].weight.grad.abs().sum() > 0
    without_frames = processor([make_row(2, video=False)], return_tensors="pt")
    assert model(**without_frames).grounding_boxes.shape[2] == config.grounding_slots

    model.eval()
    model.save_pretrained(tmp_path)
    loaded = M3DModel.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.grounding_head.centres, model.grounding_head.centres)
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    for key in ("re_logits", "grounding_logits", "grounding_boxes"):
        torch.testing.assert_close(a[key], b[key])


def test_slot_grounding_needs_a_square_patch_grid(tokenizer):
    config = tiny_config(tokenizer, grounding_pooling="slots")
    config.vision_config.image_size = [32, 48]
    with pytest.raises(ValueError, match="square patch grid"):
        M3DModel(config)
