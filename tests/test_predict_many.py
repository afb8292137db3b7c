"""Many videos across processes: `accelerate launch examples/predict.py --input videos.jsonl --output ...` with
two CPU processes gives the lines of one process, in input order; a rerun skips the inputs already done."""

import json
import os
import subprocess
import sys

import pytest
from media import write_grey_clip
from test_ingest import srt
from test_predict_video import REPO, save_tiny_m3d

CLIP_OPTIONS = ["--frame_step", "20", "--min_clip", "10", "--max_clip", "15", "--device", "cpu"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Three short videos with subtitles listed in a JSON Lines file, and a saved tiny model."""
    folder = tmp_path_factory.mktemp("videos")
    lines = []
    for k in range(3):
        write_grey_clip(folder / f"v{k}.mp4", num_frames=60 + 100 * k)
        (folder / f"v{k}.srt").write_text(srt([(0, 2, f"Ann met Bob {k} times."), (12, 14, "Bob left.")]))
        lines.append({"video": f"v{k}.mp4", "subtitles": f"v{k}.srt"})
    (folder / "videos.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return folder, save_tiny_m3d(folder / "model")


def launch(folder, model, output, processes):
    """`accelerate launch` with `processes` processes (torchrun under --multi_gpu; on CPU they talk by gloo)."""
    launcher = ["--multi_gpu"] if processes > 1 else ["--cpu"]
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO / "examples" / "predict.py"), "--model", str(model), "--input", str(folder / "videos.jsonl"),
               "--output", str(output), *CLIP_OPTIONS]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{REPO}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=folder, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]


def test_two_processes_give_the_lines_of_one_in_input_order(videos):
    folder, model = videos
    one = launch(folder, model, folder / "one.jsonl", 1)
    two = launch(folder, model, folder / "two.jsonl", 2)
    assert [line["id"] for line in one] == ["v0_0", "v1_0", "v1_1", "v2_0", "v2_1"]
    assert [line["id"] for line in two] == [line["id"] for line in one]
    for a, b in zip(one, two, strict=True):
        assert (a["entities"], a["chains"], a["relations"]) == (b["entities"], b["chains"], b["relations"])
        assert [g["time"] for g in a["groundings"]] == [g["time"] for g in b["groundings"]]
    parts = sorted(p.name for p in (folder / "two.jsonl.parts").iterdir())
    assert parts == ["part-0.jsonl", "part-1.jsonl"]


def test_a_rerun_skips_the_inputs_already_done(videos):
    folder, model = videos
    output = folder / "rerun.jsonl"
    first = launch(folder, model, output, 1)
    part = folder / "rerun.jsonl.parts" / "part-0.jsonl"
    entries = part.read_text(encoding="utf-8").splitlines()
    part.write_text(entries[0] + "\n" + entries[2][:20], encoding="utf-8")  # input 2 lost, input 3 cut off
    assert launch(folder, model, output, 1) == first
    redone = [json.loads(line)["input"] for line in part.read_text(encoding="utf-8").splitlines()[2:]]
    assert redone == [2, 3]  # only the missing inputs were predicted again
