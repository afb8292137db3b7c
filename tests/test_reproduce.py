"""examples/reproduce.py: the grid of Tables III/IV and Figs. 8/9 end to end on tiny shapes (tables, figures,
resuming), and its plan and table cells."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from PIL import Image
from test_train import run

ROOT = Path(__file__).resolve().parents[1]
REPRODUCE = ROOT / "examples" / "reproduce.py"
# The smallest grid that still has every output: two languages, two seeds (a variance), a video baseline, an
# ablation, one extra prompt length and one extra missing-modality ratio; 4 training documents, one epoch.
SMALL = ["--systems", "m3d", "m3d-no-dffm", "videomae-ts", "--langs", "en", "zh", "--seeds", "1", "2",
         "--prompt_lengths", "2", "--missing_modality_ratios", "0.5", "--synthetic_docs", "4", "--num_train_epochs",
         "1"]  # fmt: skip


@pytest.fixture
def reproduce(monkeypatch):
    """examples/reproduce.py as a module (it imports train.py from its own folder, as when run as a script)."""
    monkeypatch.syspath_prepend(str(REPRODUCE.parent))
    spec = importlib.util.spec_from_file_location("reproduce_script", REPRODUCE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_default_grid_plan(reproduce):
    grid = reproduce.plan(reproduce.ReproduceArguments())
    assert len(grid["table3"]) == 5 * 2 * 3 and len(grid["table4"]) == 3 * 2 * 3
    assert [run.system for run in grid["table3"][:3]] == ["videomae-os"] * 3  # EN rows first, seeds together
    assert {run.lang for run in grid["table3"][:15]} == {"en"}
    # the figures reuse the tables' runs at the default setting, then sweep
    assert grid["fig8"][:6] == [run for run in grid["table3"] if run.system == "m3d"]
    assert {run.prompt_length for run in grid["fig8"][6:]} == {16, 128}
    assert {run.system for run in grid["fig9"]} == {"m3d", "m3d-no-mmcm"}
    unique = {run for runs in grid.values() for run in runs}
    assert len(unique) == 30 + 2 * 2 * 3 + 2 * 2 * 3 + 2 * 2 * 2 * 3
    assert reproduce.Run("m3d", "en", 1, missing_modality_ratio=1 / 3).directory(Path("r")) == Path(
        "r/runs/m3d/en/missing_ratio-0.333333/seed-1"
    )
    assert "text-crf" in {
        run.system for run in reproduce.plan(reproduce.ReproduceArguments(systems=["text-crf"]))["table3"]
    }


def test_cell_is_f1_with_the_variance_over_seeds(reproduce):
    results = [{"test_ner_f1": f1, "test_coref_f1": 0.5, "test_re_f1": 0.25, "test_grounding_f1": 0.0,
                "test_average_f1": 0.4} for f1 in (0.9, 0.8)]  # fmt: skip
    scores = reproduce.seed_scores(results)
    assert reproduce.cell(scores["ner_f1"]) == "85.00 (25.00)"  # mean 85 %, population variance 25 %²
    assert scores["ner_f1"]["values"] == [0.9, 0.8]


def test_the_grid_writes_tables_and_figures_and_resumes(tmp_path):
    output = tmp_path / "results"
    command = [sys.executable, str(REPRODUCE), *SMALL, "--output_dir", str(output)]
    first = run(command, tmp_path / "cache", timeout=600)
    assert first.stdout.count("== ") == 20  # 8 + 4 table runs, 4 + 4 figure runs
    table3 = (output / "table3.md").read_text()
    assert "| Ent. | Cha. | Rel. | Gro. | Avg. |" in table3
    rows = [line.split(" | ") for line in table3.splitlines() if line.startswith(("| EN", "| ZH", "|  |"))]
    assert [row[1] for row in rows] == ["VideoMAE+Longformer+Ts", "Our"] * 2
    assert table3.count("| EN |") == table3.count("| ZH |") == 1
    rows = json.loads((output / "table4.json").read_text())["rows"]
    assert [(row["lang"], row["label"]) for row in rows] == [
        ("en", "Best Setting"),
        ("en", "w/o DFFM"),
        ("zh", "Best Setting"),
        ("zh", "w/o DFFM"),
    ]
    for row in rows:
        values = row["ner_f1"]["values"]
        assert len(values) == 2 and row["ner_f1"]["mean"] == pytest.approx(sum(values) / 2)
    fig9 = json.loads((output / "fig9.json").read_text())
    assert [(point["lang"], point["missing_modality_ratio"]) for point in fig9] == [("en", 0.5), ("en", 2 / 3),
                                                                                  ("zh", 0.5), ("zh", 2 / 3)]  # fmt: skip
    fig8 = json.loads((output / "fig8.json").read_text())
    assert sorted({point["prompt_length"] for point in fig8}) == [2, 4]  # 4: the tiny config's default
    for name in ("fig8.png", "fig9.png"):
        with Image.open(output / name) as image:
            assert image.format == "PNG" and image.width > 400
    assert not list(output.glob("*.partial"))
    # a second call trains nothing and writes the same tables
    second = run(command, tmp_path / "cache", timeout=600)
    assert "== " not in second.stdout
    assert (output / "table3.md").read_text() == table3
    # a run recorded with other arguments is redone, and only that one
    recorded = output / "runs" / "m3d" / "en" / "default" / "seed-1" / "run_args.json"
    arguments = json.loads(recorded.read_text())
    assert arguments["data"]["synthetic_docs"] == 4 and arguments["model"]["system"] == "m3d"
    arguments["train"]["num_train_epochs"] = 7
    recorded.write_text(json.dumps(arguments))
    third = run(command, tmp_path / "cache", timeout=600)
    assert third.stdout.count("== ") == 1 and "== m3d en default seed 1" in third.stdout
    assert json.loads(recorded.read_text())["train"]["num_train_epochs"] == 1
