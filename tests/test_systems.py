"""The Table III/IV systems (`modeling_m3d.systems`) and the video encoders of the visual stream (VideoMAE, ViViT) on
tiny encoders: tubelet tokens back to frames, the processor's frames, and every system trained, saved, reloaded
through the Auto classes and used to predict; `examples/train.py --system` with encoders passed by folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import datasets
import pytest
import torch
from test_modeling import make_row
from test_train import run
from transformers import AutoModel, AutoProcessor, VideoMAEImageProcessorPil, VivitImageProcessor

from modeling_m3d.modeling_m3d import M3DModel, M3DTubeletFrames, patch_grid
from modeling_m3d.processing_m3d import M3DProcessor, frame_pixels
from modeling_m3d.systems import PAPER_TEXT_ENCODERS, SYSTEMS, TABLE3, TABLE4, frames_per_row, get_system
from modeling_m3d.testing import build_tokenizer, tiny_config
from modeling_m3d.training import RECIPES, describe_recipe

ROOT = Path(__file__).resolve().parents[1]
ENCODER_CLASSES = {"vit": "ViTModel", "videomae": "VideoMAEModel", "vivit": "VivitModel", None: "ViTModel"}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def build(system_name: str, tokenizer, **fields) -> tuple[M3DModel, M3DProcessor]:
    """The system on tiny encoders, as `train.py --system NAME --tiny_encoders` builds it."""
    system = get_system(system_name)
    vision_config = system.tiny_vision_config()
    config = tiny_config(
        tokenizer, vision_config, max_frames=frames_per_row(vision_config, 8), **{**system.config, **fields}
    )
    processor = M3DProcessor(system.tiny_image_processor(), tokenizer, max_frames=config.max_frames)
    return M3DModel(config), processor


def tubelets(clip_length: int, tubelet: int, cls: bool) -> M3DTubeletFrames:
    """A tubelet map over one 2 × 2 patch grid (a 16 px frame in 8 px patches)."""
    config = type("VideoConfig", (), {"num_frames": clip_length, "image_size": 16})()
    if cls:  # ViViT: the temporal and spatial tubelet sizes in one list, a leading CLS token
        config.tubelet_size = [tubelet, 8, 8]
    else:  # VideoMAE
        config.tubelet_size, config.patch_size = tubelet, 8
    return M3DTubeletFrames(config)


@pytest.mark.parametrize("cls", [False, True])
def test_tubelet_tokens_map_back_to_the_frames_they_cover(cls):
    tubelet_frames = tubelets(clip_length=4, tubelet=2, cls=cls)
    frame_mask = torch.tensor([[True, True, True, False], [True, True, False, False], [True] * 4])
    pixels = torch.arange(3 * 4, dtype=torch.float).view(3, 4, 1, 1, 1).expand(-1, -1, 3, 2, 2)
    clip, clip_frames = tubelet_frames.clip(pixels, frame_mask)
    # n frames fill the 4 positions in order, position c showing frame ⌊c·n/4⌋
    assert clip_frames.tolist() == [[0, 0, 1, 2], [0, 0, 1, 1], [0, 1, 2, 3]]
    assert torch.equal(clip[:, :, 0, 0, 0], pixels[:, :, 0, 0, 0].gather(1, clip_frames))
    # token (temporal index k, patch p) holds 10·k + p in every feature; 4 levels, width 3
    values = (10 * torch.arange(2)[:, None] + torch.arange(4)).reshape(-1).float()
    if cls:
        values = torch.cat([torch.tensor([-1.0]), values])
    levels = values[None, None, :, None].expand(4, 3, -1, 3)
    frames = tubelet_frames(levels, clip_frames, 4)
    assert frames.shape == (4, 3, 4, 4, 3)
    first = frames[0, :, :, :, 0]  # (rows, frames, patches)
    patches = torch.arange(4).float()
    # row 0: frame 0 at positions 0-1 (tubelet 0), frames 1 and 2 share tubelet 1; frame 3 is padding
    expected = torch.stack([patches, patches + 10, patches + 10, torch.zeros(4)])
    assert torch.equal(first[0], expected)
    assert torch.equal(first[1], torch.stack([patches, patches + 10, torch.zeros(4), torch.zeros(4)]))
    # four frames: frames 0-1 in tubelet 0, 2-3 in tubelet 1
    assert torch.equal(first[2], torch.stack([patches, patches, patches + 10, patches + 10]))


def test_a_row_with_more_frames_than_the_clip_is_refused():
    tubelet_frames = tubelets(clip_length=4, tubelet=2, cls=False)
    with pytest.raises(ValueError, match="5 frames, more than the video encoder's clip of 4"):
        tubelet_frames.clip(torch.zeros(1, 5, 3, 16, 16), torch.ones(1, 5, dtype=torch.bool))


def test_patch_grid_of_frame_and_video_configs():
    assert patch_grid(SYSTEMS["videomae-ts"].tiny_vision_config()) == (4, 4)
    assert patch_grid(SYSTEMS["vivit-ts"].tiny_vision_config()) == (4, 4)
    assert patch_grid(type("NoSizes", (), {})()) is None


@pytest.mark.parametrize("processor_class", [VideoMAEImageProcessorPil, VivitImageProcessor])
def test_a_video_image_processor_works_frame_by_frame(processor_class):
    image_processor = processor_class(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    frames = [make_row(5)["frames"][0], make_row(4)["frames"][1].resize((64, 48))]
    together = frame_pixels(image_processor, frames)
    alone = torch.cat([frame_pixels(image_processor, [frame]) for frame in frames])
    assert together.shape == (2, 3, 32, 32)
    torch.testing.assert_close(together, alone)


def test_video_encoder_features_per_frame_and_per_row(tokenizer):
    torch.manual_seed(0)
    model, processor = build("videomae-ts", tokenizer, dropout=0.0)
    model.eval()
    rows = [make_row(0), make_row(2), make_row(1, video=False)]  # 1 and 3 frames, then none
    batch = processor(rows)
    assert processor.max_frames == model.config.max_frames == 16
    assert batch["pixel_values"].shape == (3, 3, 3, 32, 32)
    with torch.no_grad():
        levels = model.encode_frames(batch["pixel_values"], batch["frame_mask"])
        alone = model.encode_frames(batch["pixel_values"][1:2], batch["frame_mask"][1:2])
        output = model(**batch)
    assert levels.output.shape == (3, 3, 16, 32)  # 4 × 4 patches per frame
    torch.testing.assert_close(levels.output[1], alone.output[0])  # a row's clip holds only its frames
    assert not levels.output[0, 1:].any() and not levels.output[2].any()  # padding frames and no video
    assert output.grounding_logits.shape[:2] == (3, 3)  # grounding stays per frame of the annotation


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_every_system_trains_saves_reloads_and_predicts(name, tokenizer, tmp_path):
    torch.manual_seed(0)
    model, processor = build(name, tokenizer)
    system = SYSTEMS[name]
    assert type(model.vision_model).__name__ == ENCODER_CLASSES[system.vision]
    rows = [make_row(0), make_row(1, text=False), make_row(2, video=False), make_row(3)]
    batch = processor(rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(4):
        output = model(**batch)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(output.loss.item())
    assert losses[-1] < losses[0]
    if name == "text-crf":  # only the NER loss trains it
        torch.testing.assert_close(output.loss, output.ner_loss)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded, reprocessor = AutoModel.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {key: saved[key] for key in system.config} == dict(system.config)
    assert reprocessor.max_frames == processor.max_frames
    model.eval()
    again = reprocessor(rows)
    torch.testing.assert_close(again["pixel_values"], batch["pixel_values"])
    documents = model.predict(**batch, protocol="gold_pairs")
    assert reloaded.predict(**again, protocol="gold_pairs") == documents
    assert len(documents) == 4 and all(
        set(doc) >= {"entities", "chains", "relations", "groundings"} for doc in documents
    )


def test_system_table_and_lookup():
    assert set(TABLE3 + TABLE4) < set(SYSTEMS) and "text-crf" in SYSTEMS
    assert (
        SYSTEMS["m3d"].text_encoder("zh")
        == PAPER_TEXT_ENCODERS["zh"]
        == "markussagen/xlm-roberta-longformer-base-4096"
    )
    assert SYSTEMS["m3d"].vision_encoder == "google/vit-base-patch16-224"
    assert SYSTEMS["vivit-os"].vision_encoder == "google/vivit-b-16x2-kinetics400"
    assert SYSTEMS["videomae-ts"].vision_encoder == "MCG-NJU/videomae-base"
    assert SYSTEMS["text-crf"].vision_encoder is None
    with pytest.raises(ValueError, match="unknown system 'm3d-large'; known: m3d, "):
        get_system("m3d-large")


def _train_script(monkeypatch):
    """examples/train.py as a module (registered while the test runs: its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "examples" / "train.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def _build(train, rows: datasets.Dataset, recipe: str, **model_args):
    """The model train.py builds on `rows` with `recipe` and these ModelArguments (the recipe resolved as main does)."""
    model_args = train.ModelArguments(**model_args)
    resolved = train.resolve_recipe(model_args, train.TrainArguments(output_dir="unused", recipe=recipe))
    model, _ = train.build_model_and_processor(model_args, train.DataArguments(lang="en"), resolved, rows)
    return model


def test_the_resolved_recipe_records_the_system_and_the_overrides_and_refuses_bad_ones(monkeypatch):
    """What is printed, stored in all_results.json and written to the model card is the recipe with the --system's
    fields and --config_overrides merged in; a bad override is refused with the config's own message, before
    anything is built or written."""
    train = _train_script(monkeypatch)
    args = train.TrainArguments(output_dir="unused")

    def resolved(**model_args):
        return train.resolve_recipe(train.ModelArguments(**model_args), args)

    finetune = resolved(text_encoder="folder", config_overrides='{"loss_weights": {"re": 50}, "dropout": 0.2}')
    assert finetune.name == "finetune" and finetune.model_config == {
        **RECIPES["finetune"].model_config,
        "loss_weights": {**RECIPES["finetune"].model_config["loss_weights"], "re": 50},
        "dropout": 0.2,
    }
    assert "'re': 50" in describe_recipe(finetune) and "'dropout': 0.2" in describe_recipe(finetune)
    crf = resolved(system="text-crf", tiny_encoders=True, config_overrides='{"text_config": {"num_hidden_layers": 3}}')
    assert crf.model_config["fusion"] == "none" and crf.model_config["loss_weights"]["coref"] == 0.0
    assert crf.text_config == {**RECIPES["small"].text_config, "num_hidden_layers": 3}
    for overrides, message in (
        ('{"relation_none_weight": 0}', "`relation_none_weight` must be > 0"),
        ('{"fusion": "late"}', "'fusion' expected one of"),
        ('{"dropuot": 0.1}', r"\['dropuot'\] are not M3DConfig fields"),
        ('{"loss_weights": {"rel": 1}}', "unknown `loss_weights` keys"),
        ("[1]", "must be a JSON object"),
    ):
        with pytest.raises(ValueError, match=f"--config_overrides.*{message}"):
            resolved(tiny_encoders=True, config_overrides=overrides)
    with pytest.raises(ValueError, match="sub-config overrides .* need tiny encoders"):
        resolved(text_encoder="folder", config_overrides='{"text_config": {"hidden_size": 64}}')


def test_train_script_takes_the_papers_encoders_unless_named_or_tiny(monkeypatch):
    train = _train_script(monkeypatch)
    args = train.ModelArguments(system="vivit-ts")
    assert train.apply_system(args, "en") == train.ModelArguments(
        system="vivit-ts",
        text_encoder="allenai/longformer-base-4096",
        vision_encoder="google/vivit-b-16x2-kinetics400",
    )
    named = train.apply_system(train.ModelArguments(system="m3d", vision_encoder="frames/"), "zh")
    assert (named.text_encoder, named.vision_encoder) == (PAPER_TEXT_ENCODERS["zh"], "frames/")
    tiny = train.ModelArguments(system="m3d", tiny_encoders=True)
    assert train.apply_system(tiny, "en") == tiny
    with pytest.raises(ValueError, match="--tiny_encoders builds the encoders"):
        train.apply_system(train.ModelArguments(system="m3d", tiny_encoders=True, text_encoder="x"), "en")


def test_train_script_fuses_nothing_when_no_training_document_has_frames(monkeypatch, caplog):
    """On text alone the DFFM and MMCM only cost quality (README): train.py builds the w/o-DFFM model unless a
    fusion is chosen (--system, --config_overrides)."""
    from accelerate import PartialState

    PartialState(cpu=True)  # train.py logs through accelerate
    train = _train_script(monkeypatch)
    with_frames = datasets.Dataset.from_list([make_row(i) for i in range(3)])
    text_only = datasets.Dataset.from_list([make_row(i, video=False) for i in range(3)])
    assert train.count_frames(with_frames) == 1 + 2 + 3 and train.count_frames(text_only) == 0

    def fusion(rows, **model_args) -> str:
        return _build(train, rows, "small", **model_args).config.fusion

    assert fusion(with_frames) == "dffm"
    with caplog.at_level("WARNING"):
        assert fusion(text_only) == "none"
    assert "no training document has frames" in caplog.text
    assert fusion(text_only, config_overrides='{"fusion": "dffm"}') == "dffm"
    assert fusion(text_only, system="m3d-no-mmcm", tiny_encoders=True) == "dffm"


def test_config_overrides_update_the_recipes_loss_weights_key_by_key(monkeypatch):
    """`--config_overrides '{"loss_weights": {"re": 50}}'` over the `finetune` recipe's weights (NER 2,
    coreference 10, relations 30) changes α_re only; a system's weights (`text-crf`: NER alone) apply the same way."""
    from accelerate import PartialState

    PartialState(cpu=True)
    train = _train_script(monkeypatch)
    rows = datasets.Dataset.from_list([make_row(i, video=False) for i in range(2)])

    def weights(**model_args) -> dict:
        return _build(train, rows, "finetune", **model_args).config.loss_weights

    assert weights(config_overrides='{"loss_weights": {"re": 50}}') == {**weights(), "re": 50.0}
    assert weights()["coref"] == 10.0
    only_ner = weights(system="text-crf", tiny_encoders=True, config_overrides='{"loss_weights": {"ner": 2}}')
    assert only_ner["ner"] == 2.0 and not any(value for key, value in only_ner.items() if key != "ner")


def test_train_script_runs_a_video_system_on_encoders_passed_by_folder(tokenizer, tmp_path):
    """`--system videomae-ts` with a tiny Longformer and a tiny VideoMAE saved with their tokenizer and image
    processor: the processor keeps the clip's 16 frames, and the trained model reloads with the Auto classes."""
    system = SYSTEMS["videomae-ts"]
    text_folder, vision_folder = tmp_path / "longformer", tmp_path / "videomae"
    text_config = tiny_config(tokenizer).text_config
    AutoModel.from_config(text_config, add_pooling_layer=False).save_pretrained(text_folder)
    tokenizer.save_pretrained(text_folder)
    AutoModel.from_config(system.tiny_vision_config()).save_pretrained(vision_folder)
    system.tiny_image_processor().save_pretrained(vision_folder)
    output = tmp_path / "out"
    run([sys.executable, str(ROOT / "examples" / "train.py"), "--system", "videomae-ts", "--text_encoder",
         str(text_folder), "--vision_encoder", str(vision_folder), "--output_dir", str(output), "--synthetic_docs",
         "4", "--num_train_epochs", "1", "--recipe", "small"], tmp_path / "cache")  # fmt: skip
    config = json.loads((output / "config.json").read_text())
    assert (config["fusion"], config["max_frames"], config["vision_config"]["model_type"]) == (
        "two_stream",
        16,
        "videomae",
    )
    processor = AutoProcessor.from_pretrained(output)
    assert processor.max_frames == 16 and type(processor.image_processor).__name__.startswith(
        "VideoMAEImageProcessor"
    )
    results = json.loads((output / "all_results.json").read_text())
    assert 0.0 <= results["test_average_f1"] <= 1.0
    assert type(AutoModel.from_pretrained(output).vision_model).__name__ == "VideoMAEModel"
