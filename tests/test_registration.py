"""Auto classes after `import modeling_m3d`, and a saved checkpoint loading as Hub remote code without the package."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoProcessor

import modeling_m3d
from modeling_m3d import M3DConfig, M3DModel, M3DProcessor
from modeling_m3d.testing import tiny_model_and_processor

OUTPUT_KEYS = ("ner_logits", "coref_logits", "re_logits", "grounding_logits", "grounding_boxes")
CODE_FILES = ("configuration_m3d.py", "modeling_m3d.py", "decoding_m3d.py", "processing_m3d.py")

# Runs in a fresh interpreter where `modeling_m3d` cannot be imported (it is pip-installed editable, so it is
# blocked explicitly): everything must come from the checkpoint folder's own code files.
REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_m3d"] = None
    try:
        import modeling_m3d
    except ImportError:
        pass
    else:
        raise SystemExit("modeling_m3d is importable: the test would prove nothing")
    import torch
    from transformers import AutoModel, AutoProcessor

    folder, rows_file, out_file = sys.argv[1:]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
    batch = processor(json.load(open(rows_file)), return_tensors="pt")
    with torch.no_grad():
        output = model(**batch)
    keys = {keys}
    torch.save({{"batch": dict(batch), **{{k: output[k] for k in keys}}, "loss": output.loss}}, out_file)
    """
).format(keys=OUTPUT_KEYS)


def rows_with_frame_files(folder) -> list[dict]:
    """JSON-serialisable schema rows (frames as file paths): a full, a text-missing and a video-missing row."""
    paths = []
    for i in range(3):
        paths.append(str(folder / f"frame_{i}.png"))
        pixels = np.random.default_rng(i).integers(0, 256, (24, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(paths[-1])
    full = {
        "id": "full",
        "tokens": ["Ann", "Smith", "lived", "in", "Paris", "."],
        "frames": paths,
        "entities": [{"start": 0, "end": 2, "type": "PER", "chain": 0}, {"start": 4, "end": 5, "type": "LOC", "chain": 1}],
        "chains": [{"id": "L0", "type": "PER"}, {"id": "L1", "type": "LOC"}],
        "relations": [{"subject": 0, "object": 1, "type": "PER-LOC_residence"}],
        "groundings": [{"frame": 1, "type": "PER", "box": [0.5, 0.5, 0.2, 0.4]}],
    }  # fmt: skip
    empty = {"entities": [], "chains": [], "relations": [], "groundings": []}
    return [
        full,
        {**full, **empty, "id": "no_text", "tokens": []},
        {**full, "id": "no_video", "frames": [], "groundings": []},
    ]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model and processor saved to one folder, with the rows and the in-process outputs."""
    folder = tmp_path_factory.mktemp("checkpoint")
    torch.manual_seed(0)
    model, processor = tiny_model_and_processor()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    rows = rows_with_frame_files(tmp_path_factory.mktemp("frames"))
    return folder, rows, model.eval(), processor


def test_auto_classes_are_registered_on_import():
    config = AutoConfig.for_model("m3d", fusion="none")
    assert type(config) is M3DConfig and config.fusion == "none"
    assert set(modeling_m3d.__all__) >= {"M3DConfig", "M3DModel", "M3DProcessor"}
    assert M3DModel._auto_class == "AutoModel" and M3DProcessor._auto_class == "AutoProcessor"


def test_saved_folder_carries_auto_map_code_and_safetensors(saved):
    folder, *_ = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "m3d"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_m3d.M3DConfig",
        "AutoModel": "modeling_m3d.M3DModel",
    }
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_m3d.M3DProcessor"
    assert (folder / "model.safetensors").is_file()
    assert all((folder / name).is_file() for name in CODE_FILES)


def test_auto_model_and_processor_load_in_process(saved):
    folder, rows, model, processor = saved
    loaded_model, loaded_processor = AutoModel.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    assert type(loaded_model) is M3DModel and type(loaded_processor) is M3DProcessor
    batch = processor(rows)
    assert all(torch.equal(batch[k], loaded_processor(rows)[k]) for k in batch)
    with torch.no_grad():
        expected, actual = model(**batch), loaded_model(**batch)
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(actual[key], expected[key])


def test_remote_code_loads_without_the_package(saved, tmp_path):
    folder, rows, model, processor = saved
    rows_file, out_file = tmp_path / "rows.json", tmp_path / "out.pt"
    rows_file.write_text(json.dumps(rows))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(rows_file), str(out_file)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(out_file)
    batch = processor(rows)
    assert set(remote["batch"]) == set(batch)
    assert all(torch.equal(remote["batch"][k], batch[k]) for k in batch)
    with torch.no_grad():
        expected = model(**batch)
    for key in (*OUTPUT_KEYS, "loss"):
        torch.testing.assert_close(remote[key], expected[key])
