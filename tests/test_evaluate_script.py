"""examples/evaluate.py on a tiny saved model: both protocols, the missing-modality sweep, JSON and PNG plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from modeling_m3d.schema import TASKS
from modeling_m3d.synthetic import write_synthetic_release
from modeling_m3d.testing import tiny_model_and_processor

ROOT = Path(__file__).resolve().parents[1]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_evaluate_script_writes_scores_sweep_and_plots(tmp_path):
    data_dir = write_synthetic_release(tmp_path / "data", docs=16, lang="en", seed=1, frames=2)
    model, processor = tiny_model_and_processor("en", texts=["Ann Lee was born in Paris in 1950 ."])
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    output = tmp_path / "evaluation"
    command = [sys.executable, str(ROOT / "examples" / "evaluate.py"), "--model_dir", str(tmp_path / "model"),
               "--dataset_dir", str(data_dir), "--split", "validation+test", "--output_dir", str(output),
               "--sweep_ratios", "0", "0.5", "1", "--missing_modality_ratio", "0.5",
               "--cache_dir", str(tmp_path / "cache")]  # fmt: skip
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    for noise in ("torchvision", "Loading weights", "Generating", "Warning"):  # library notices and bars
        assert noise not in result.stderr, noise

    report = json.loads((output / "evaluation.json").read_text())
    # 4 + 4 documents, as in datasets' split syntax
    assert report["split"] == "validation+test" and report["documents"] == 8
    for protocol in ("gold_pairs", "end_to_end"):
        scores = report["protocols"][protocol]
        for task in TASKS:
            assert 0.0 <= scores[f"{task}_f1"] <= 1.0
        assert 0.0 <= scores["average_f1"] <= 1.0
    assert list(report["missing_ratio_sweep"]) == ["0", "0.5", "1"]
    counts = {ratio: [point[f"documents_{mode}"] for mode in ("full", "text_missing", "video_missing")]
              for ratio, point in report["missing_ratio_sweep"].items()}  # fmt: skip
    assert counts == {"0": [8, 0, 0], "0.5": [4, 2, 2], "1": [0, 4, 4]}  # each split cut in thirds on its own
    # the sweep point at the run's own ratio repeats the gold_pairs pass: same rows, modalities and model
    same_ratio = {
        k: v for k, v in report["missing_ratio_sweep"]["0.5"].items() if not k.startswith("documents_")
    }
    assert same_ratio == report["protocols"]["gold_pairs"]
    # every relation type of the model: an F1 where the split has examples of it, None (no bar) where it has none
    per_type = report["relation_type_f1"]
    assert list(per_type) == processor.relation_types
    scored = {name: f1 for name, f1 in per_type.items() if f1 is not None}
    assert scored and all(0.0 <= f1 <= 1.0 for f1 in scored.values()) and len(scored) < len(per_type)
    for name in ("missing_ratio.png", "relation_types.png"):
        assert (output / name).read_bytes()[:8] == PNG_MAGIC, name
