"""Smoke test of examples/benchmark.py --quick: it runs and writes every figure the issue names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEV_FILE = ROOT.parent / "shared" / "m3d" / "data" / "en" / "dev_en.json"
FIGURES = ("fusion_overhead", "fusion_overhead_tiny", "pair_scaling", "crf_share", "preprocess_rows_per_s",
           "eval_rows_per_s", "ingest_frames_per_s")  # fmt: skip


@pytest.mark.skipif(not DEV_FILE.is_file(), reason=f"{DEV_FILE} (the release's dev split) is not here")
def test_quick_benchmark_writes_every_figure(tmp_path):
    output = tmp_path / "benchmark.json"
    command = [sys.executable, str(ROOT / "examples" / "benchmark.py"), "--quick", "--dev_file", str(DEV_FILE),
               "--table_pieces", "512", "--table_frames", "8", "--video_seconds", "2", "--processor_rows", "2",
               "--eval_rows", "2", "--output", str(output)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]

    report = json.loads(output.read_text())
    for name in FIGURES:
        assert report[name] > 0, name
    assert set(report["targets_met"]) == {"fusion_overhead", "pair_scaling", "crf_share"}
    tiny = report["details"]["tiny"]
    assert (tiny["frames"], tiny["boxes"]) == (8, 3)
    assert 450 <= tiny["pieces"] <= 512 and 10 <= tiny["entities"] <= 30
    assert report["details"]["ingest"]["frames_kept"] == 2  # 2 s at 24 fps, one frame per 24
    [cell] = report["memory_table"]
    assert cell["frames"] == 8 and 400 < cell["pieces"] <= 512
    assert cell["step_seconds"] > 0 and cell["peak_memory_mib"] > 0
