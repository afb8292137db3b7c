"""examples/app.py in a real browser: the app runs in a subprocess on a free local port, headless Chromium
(Debian's, driven by Playwright) uploads a generated video and SRT and reads the rendered extraction; another test
opens the gold-vs-predicted viewer on a tiny synthetic split. Screenshots are kept under pytest's tmp path (and
copied to $M3D_TEST_ARTIFACTS when set).

The model is a tiny one whose heads are set so that its output is known whatever the input: every word a
one-word PER entity, all entities one chain, one PER box per frame. Random weights could extract nothing."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from media import write_grey_clip as write_clip
from test_video import SRT

from modeling_m3d.rendering_m3d import CHAIN_COLOURS
from modeling_m3d.synthetic import write_synthetic_release
from modeling_m3d.testing import tiny_model_and_processor

gradio = pytest.importorskip("gradio", reason="the demo needs gradio (pip install -e '.[demo]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright")

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
browser_only = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (Debian package 'chromium'; .ci/run installs it)"
)
B_PER = 1  # BIO tag 1 + 2t = B-t, t = 0 = PER
START_TIMEOUT_S, EXTRACT_TIMEOUT_MS = 180, 120_000


def forced_model(folder: Path) -> Path:
    """Save a tiny model whose output is fixed: B-PER on every word, every entity pair coreferent, grounding
    slot 0 a PER box (0.5, 0.5, 0.4, 0.6) with score ~1 on every frame, the other slots empty."""
    model, processor = tiny_model_and_processor("en")
    with torch.no_grad():
        entity = model.entity_head
        for weight in (entity.emissions.weight, entity.emissions.bias, entity.crf.transitions,
                       entity.crf.start_transitions, entity.crf.end_transitions):  # fmt: skip
            weight.zero_()
        entity.emissions.bias[B_PER] = 20.0
        coref = model.coref_head
        for weight in (coref.bilinear, coref.subject_linear.weight, coref.object_linear.weight):
            weight.zero_()
        coref.subject_linear.bias.copy_(torch.tensor([0.0, 20.0]))  # class 1 = same chain
        grounding = model.grounding_head
        grounding.classifier.weight.zero_()
        grounding.box.weight.zero_()
        logits = torch.full((grounding.slots, grounding.num_types + 1), -20.0)
        logits[:, -1] = 20.0  # last class = no box
        logits[0] = torch.tensor([20.0, -20.0, -20.0, -20.0])  # slot 0: PER
        grounding.classifier.bias.copy_(logits.flatten())
        grounding.box.bias.copy_(torch.logit(torch.tensor([0.5, 0.5, 0.4, 0.6])).repeat(grounding.slots))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_app(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """Start examples/app.py on a free port; return the process and its URL once it answers."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = (tmp_path / "app.log").open("w")
    command = [sys.executable, str(REPO / "examples" / "app.py"), "--port", str(port),
               "--cache_dir", str(tmp_path / "cache"), *args]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}:\n{(tmp_path / 'app.log').read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    pytest.fail(f"the app did not answer within {START_TIMEOUT_S} s:\n{(tmp_path / 'app.log').read_text()}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def settled(page) -> None:
    """Wait until no Gradio event is pending (every status tracker hidden)."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=status-tracker]')]"
        ".every(tracker => tracker.classList.contains('hide'))"
    )


def keep_screenshot(page, tmp_path: Path, name: str) -> Path:
    settled(page)
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("M3D_TEST_ARTIFACTS"):
        folder = Path(os.environ["M3D_TEST_ARTIFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / name)
    return path


@pytest.fixture
def browser_page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return forced_model(tmp_path_factory.mktemp("forced-model"))


@pytest.fixture
def app(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    sys.modules.pop("app", None)
    import app

    return app


def test_the_video_path_gives_rows_extractions_and_frame_times(tmp_path, model_dir, app):
    video, srt = app.example_media(tmp_path / "cache")
    made = video.stat().st_mtime_ns
    assert app.example_media(tmp_path / "cache") == (video, srt) and video.stat().st_mtime_ns == made
    steps = []
    (clip,) = app.extract_video(
        app.load_extractor(str(model_dir)), str(video), str(srt), progress=lambda f, desc: steps.append(f)
    )
    assert steps[-1] == 1.0 and steps == sorted(steps)
    assert clip.row["tokens"][:5] == ["Ann", "met", "her", "brother", "Bob"]
    assert [s["start_time"] for s in clip.row["subtitles"]] == [0.0, 2.0]
    times = clip.frame_times
    # One frame every 24 video frames (the paper's Step 3): at 8 fps over 4 s, the frames at 0 s and 3 s.
    assert len(times) == len(clip.row["frames"]) == 2 and times == sorted(times) and 0 <= times[0] < times[-1] < 4
    assert sorted(g["frame"] for g in clip.extraction["groundings"]) == [0, 1]
    assert len(clip.extraction["entities"]) == len(clip.row["tokens"])  # the forced model: every word
    download = json.loads(json.dumps(clip.to_json()))
    assert download["frame_times"] == times and download["tokens"] == clip.row["tokens"]


def test_the_viewer_scores_each_document_with_the_eight_error_kinds(tmp_path, model_dir, app):
    release = write_synthetic_release(tmp_path / "release", docs=2, lang="en", frames=2, eval_docs=2)
    rows = app.load_release(app.DataArguments(dataset_dir=str(release)), tmp_path)["validation"]
    documents = app.view_documents(rows, app.load_extractor(str(model_dir)), "end_to_end", batch_size=2)
    assert [d.row["id"] for d in documents] == rows["id"]
    kinds = [name for name in documents[0].scores if "_error_" in name]
    assert [app.error_label(kind) for kind in kinds] == [
        "Entity: boundary", "Entity: type", "Entity chain: wrong entity", "Entity chain: missing entity",
        "Relation: unrelated", "Relation: type", "Grounding: boundary", "Grounding: type"]  # fmt: skip
    for document in documents:  # every word a PER: most predicted spans are no gold span
        assert "ner_error_boundary" in document.errors and 0 < document.scores["ner_f1"] < 1
        assert document.gold["entities"] and "Gold" in app.side_by_side(document)


@browser_only
@pytest.mark.slow
def test_video_upload_shows_entities_chain_colour_and_boxes(tmp_path, model_dir, browser_page):
    video = write_clip(tmp_path / "clip.mp4")
    subtitles = tmp_path / "clip.srt"
    subtitles.write_text(SRT, encoding="utf-8")
    process, url = start_app(tmp_path, "--model", str(model_dir))
    page = browser_page
    try:
        page.goto(url)
        page.set_input_files("#m3d-video input[type=file]", str(video))
        page.set_input_files("#m3d-subtitles input[type=file]", str(subtitles))
        page.wait_for_selector("#m3d-subtitles td.filename[aria-label='clip.srt']")
        page.click("#m3d-run")
        page.wait_for_selector("#m3d-result .m3d-entity", timeout=EXTRACT_TIMEOUT_MS)
        marks = page.locator("#m3d-result mark.m3d-entity.m3d-type-PER")
        assert marks.count() >= 2
        first_colour = CHAIN_COLOURS[0]
        assert all(f"--m3d-chain:{first_colour}" in marks.nth(k).get_attribute("style") for k in range(2))
        assert page.locator("#m3d-result .m3d-box.m3d-type-PER").count() >= 1
        assert "PER 1.00" in page.locator("#m3d-result .m3d-box-label").first.inner_text()
        assert page.locator("#m3d-timeline svg rect").count() >= 2
        page.locator("#m3d-result .m3d-entity-type").first.hover()  # hovering a mention outlines its chain
        outline = marks.nth(1).evaluate("element => getComputedStyle(element).outlineStyle")
        assert outline == "solid"
        download = page.wait_for_selector("#m3d-download a[download='clip.json']")
        (clip,) = page.request.get(download.get_attribute("href")).json()
        assert clip["entities"][0] == {"start": 0, "end": 1, "type": "PER", "text": "Peter"}
        assert len(clip["frame_times"]) == len(clip["groundings"])
        keep_screenshot(page, tmp_path, "app_video.png")
    finally:
        stop(process)


@browser_only
@pytest.mark.slow
def test_viewer_shows_gold_and_prediction_with_scores_and_filters(tmp_path, model_dir, browser_page):
    release = write_synthetic_release(tmp_path / "release", docs=2, lang="en", frames=2, eval_docs=3)
    process, url = start_app(
        tmp_path, "--model", str(model_dir), "--dataset_dir", str(release), "--split", "validation"
    )
    page = browser_page
    try:
        page.goto(url)
        page.get_by_role("tab", name="Viewer").click()
        page.wait_for_selector("#m3d-compare .m3d-view")
        views = page.locator("#m3d-compare .m3d-view")
        assert views.count() == 2
        assert views.nth(0).locator("h3").inner_text() == "Gold"
        assert views.nth(1).locator("h3").inner_text() == "Predicted"
        assert views.nth(0).locator(".m3d-entity").count() >= 1
        assert views.nth(1).locator(".m3d-entity").count() >= 1
        table = page.locator("#m3d-scores table").inner_text()
        for name in (
            "Entity F1",
            "Entity chain F1",
            "Relation F1",
            "Grounding F1",
            "Entity: boundary errors",
        ):
            assert name in table
        # every word a PER: some are not gold spans, so every document has NER boundary errors
        page.locator("#m3d-error-kind input").click()
        labels = [label.strip("✓ \n") for label in page.get_by_role("option").all_inner_texts()]
        assert labels[0] == "any document (3)" and len(labels) == 9  # and the eight Table VI kinds
        page.get_by_role("option", name="Entity: boundary (3)").click()
        settled(page)
        page.locator("#m3d-document input").click()
        assert len(page.get_by_role("option").all_inner_texts()) == 3
        page.get_by_role("option").nth(1).click()
        settled(page)
        assert page.locator("#m3d-compare .m3d-view").count() == 2
        keep_screenshot(page, tmp_path, "app_viewer.png")
    finally:
        stop(process)
