"""What a new user meets first: the scripts' --help, the names the README has them type (`m3d-hier`, `m3d`), and a
clear error for rows in another language than the model's."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_m3d.synthetic import write_synthetic_release
from modeling_m3d.testing import tiny_model_and_processor

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("train", "evaluate")


def script_parser(name: str):
    """`build_parser()` of examples/<name>.py, imported from its file."""
    spec = importlib.util.spec_from_file_location(f"m3d_example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the string annotations through it
    spec.loader.exec_module(module)
    return module.build_parser()


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_option_has_a_help_text_and_the_script_a_description(name):
    parser = script_parser(name)
    assert parser.description and parser.description.startswith(("Train and evaluate", "Score a model"))
    options = [action for action in parser._actions if action.option_strings and action.dest != "help"]
    undocumented = [action.option_strings[0] for action in options if not (action.help or "").strip()]
    assert not undocumented, f"{name}.py options without a help text: {undocumented}"
    assert not [action.dest for action in options if "DESIGN" in action.help]


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_prints_usage_and_nothing_else(name):
    """No library warning (torchvision fallback, ...) before the usage text."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / f"{name}.py"), "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0 and result.stdout.startswith("usage:")
    assert result.stderr == ""


def test_rows_in_another_language_than_the_processor_are_refused():
    _, processor = tiny_model_and_processor("en")
    english = {"id": "en-0", "lang": "en", "tokens": ["Anna", "visited", "Paris"], "frames": []}
    chinese = {"id": "zh-0", "lang": "zh", "tokens": list("安娜去了巴黎"), "frames": []}
    assert processor([english])["input_ids"].shape[0] == 1
    with pytest.raises(
        ValueError, match=r"row 'zh-0': field 'lang' is 'zh' but this processor .* is for 'en'"
    ):
        processor([english, chinese])


def test_padding_to_the_attention_window_leaves_the_encoding_unchanged():
    """`pad_to_multiple_of` (set by train.py to the Longformer's window) saves with the processor; the encoder's
    output on the real pieces is the one it computes when it pads the batch itself."""
    import torch

    from modeling_m3d import M3DProcessor

    model, processor = tiny_model_and_processor("en")
    window = max(model.config.text_config.attention_window)
    padded = M3DProcessor(
        processor.image_processor, processor.tokenizer, lang="en", pad_to_multiple_of=window
    )
    row = {"id": "en-0", "lang": "en", "tokens": ["Anna", "visited", "the", "city", "."], "frames": []}
    plain, aligned = processor([row]), padded([row])
    assert aligned["input_ids"].shape[1] % window == 0 and plain["input_ids"].shape[1] % window != 0
    model.eval()
    with torch.no_grad():
        expected = model.encode_text(plain["input_ids"], plain["attention_mask"])
        found = model.encode_text(aligned["input_ids"], aligned["attention_mask"])[:, :, : expected.shape[2]]
    torch.testing.assert_close(found, expected)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        M3DProcessor(processor.image_processor, processor.tokenizer, pad_to_multiple_of=0)


def test_hub_copy_built_into_m3d_loads_as_load_dataset_m3d_zh(tmp_path, monkeypatch):
    """The README's commands, from a working folder: build the Hub-native copy into `m3d/`, load it by that name."""
    import datasets

    release = write_synthetic_release(tmp_path / "release", docs=4, lang="zh", frames=1)
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "dataset_script" / "build_hub_dataset.py"), "--data_dir", str(release),
               "--output_dir", "m3d", "--lang", "zh"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dataset = datasets.load_dataset("m3d", "zh", cache_dir=str(tmp_path / "cache"))
    assert dataset["train"].num_rows == 4 and set(dataset["train"]["lang"]) == {"zh"}
