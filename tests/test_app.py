"""demo/app.py without a browser: the checks of the page's inputs and one request through a real (untrained)
tiny model. The page in a real browser: tests/test_app_browser.py."""
import os
import sys

import cv2
import numpy as np
import pytest
from tiny_trained import CONFIG, REPO

sys.path.insert(0, os.path.join(REPO, "demo"))
import app as web_app  # demo/app.py


@pytest.fixture(scope="module")
def demo_app():
    # untrained, so every candidate is kept (its scores sit near the focal-loss prior, below the 0.05 default)
    untrained = web_app.ModelChoice("tiny", CONFIG, "", threshold=0.0, one_phrase_iou=0.3,
                                    opts=("MODEL.ATSS.INFERENCE_TH", "0.0"))
    return web_app.DemoApp([untrained], max_megapixels=1.0)


def _picture(tmp_path, name="scene.png", shape=(120, 160, 3)):
    path = str(tmp_path / name)
    image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    cv2.imwrite(path, image)
    return path, image


def test_bad_uploads_get_messages_that_name_the_problem(tmp_path):
    with pytest.raises(web_app.BadInput, match="No picture"):
        web_app.read_picture(None)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(web_app.BadInput, match="'notes.png' is not an image"):
        web_app.read_picture(str(tmp_path / "notes.png"))
    big, _ = _picture(tmp_path, "big.png", (1000, 1200, 3))
    with pytest.raises(web_app.BadInput, match=r"'big.png' is 1.2 megapixels \(1200x1000\).*at most 1"):
        web_app.read_picture(big, max_megapixels=1.0)
    path, image = _picture(tmp_path)
    assert np.array_equal(web_app.read_picture(path), image)  # BGR, as the predictor takes it


def test_prompt_and_phrases_boxes():
    for empty in ("", "   ", None):
        with pytest.raises(web_app.BadInput, match="prompt is empty"):
            web_app.check_prompt(empty, "")
    assert web_app.check_prompt(" red star. blue circle ", "") == ("red star. blue circle", None)
    assert web_app.check_prompt("a red star left of a circle", "red star; circle") == (
        "a red star left of a circle", ["red star", "circle"])
    with pytest.raises(web_app.BadInput, match="empty phrase"):
        web_app.check_prompt("a red star", "red star;;")


def test_a_request_gives_picture_table_and_summary(demo_app, tmp_path):
    path, image = _picture(tmp_path)
    picture, table, summary = demo_app.detect(path, "red star. blue circle", "", "tiny", 0.0, False)
    assert picture.ndim == 3 and picture.shape[2] == 3 and picture.shape[1] >= image.shape[1]
    assert table and {row[0] for row in table} <= {"red star", "blue circle"}
    scores = [row[1] for row in table]
    assert scores == sorted(scores, reverse=True)
    height, width = image.shape[:2]  # pixels of the upload (GLIP's "+1" box convention: up to one past the edge)
    assert all(0 <= row[2] <= row[4] <= width + 1 and 0 <= row[3] <= row[5] <= height + 1 for row in table)
    assert summary.startswith(f"{len(table)} detections with score >= 0.00") and "160x120 picture" in summary
    # a higher threshold keeps the table's top rows only; one phrase per region never adds rows
    cut = scores[len(scores) // 2] + 5e-4  # between two table scores (they are rounded to 3 decimals)
    assert demo_app.detect(path, "red star. blue circle", "", "tiny", cut, False)[1] == [
        r for r in table if r[1] >= cut]
    assert len(demo_app.detect(path, "red star. blue circle", "", "tiny", 0.0, True)[1]) <= len(table)


def test_a_request_reuses_one_predictor_and_its_prompt_cache(demo_app, tmp_path):
    path, _ = _picture(tmp_path)
    demo_app.detect(path, "green square. red star", "", "tiny", 0.5, False)
    predictor = demo_app.models["tiny"].predictor()
    hits = predictor.cache_hits
    demo_app.detect(path, "green square. red star", "", "tiny", 0.5, False)
    assert demo_app.models["tiny"].predictor() is predictor and predictor.cache_hits == hits + 1


def test_bad_requests_are_messages(demo_app, tmp_path):
    path, _ = _picture(tmp_path)
    too_long = " ".join(["a red star next to a blue circle"] * 40)
    with pytest.raises(web_app.BadInput, match="Prompt: .*token"):
        demo_app.detect(path, too_long, "red star", "tiny", 0.5, False)
    with pytest.raises(web_app.BadInput, match="Prompt: .*purple"):
        demo_app.detect(path, "a red star", "purple", "tiny", 0.5, False)
    with pytest.raises(web_app.BadInput, match="between 0 and 1"):
        demo_app.detect(path, "red star", "", "tiny", 1.5, False)
    with pytest.raises(web_app.BadInput, match="Unknown model 'GLIP-L'"):
        demo_app.detect(path, "red star", "", "GLIP-L", 0.5, False)


def test_page_builds_with_its_tabs(demo_app):
    page = web_app.build_page(demo_app, samples=[])
    ids = {getattr(block, "elem_id", None) for block in page.blocks.values()}
    assert {"picture", "prompt", "phrases", "model", "threshold", "one_phrase", "detect", "result", "summary",
            "detections"} <= ids
    assert "question" not in ids and "describe" not in ids  # the VQA / caption tabs need their models
    assert not os.path.exists(os.path.join(REPO, "demo", "app.pyi"))  # gradio writes stubs for subclassed widgets


def test_cli_defaults_bind_locally():
    args = web_app.get_parser().parse_args([])
    assert args.host == "127.0.0.1" and args.port == 7860


def test_ask_and_caption_tabs_serve_their_models(tmp_path):
    """Untrained VQA and captioning quick-schedule models: the tabs' wiring, not their answers' quality."""
    tabs = web_app.DemoApp(
        [web_app.ModelChoice("tiny", CONFIG, "")],
        vqa=web_app.ModelChoice("VQA", os.path.join(REPO, "configs/quick_schedules/glipv2_tiny_vqa_synthetic.yaml"), ""),
        caption=web_app.ModelChoice(  # (its config starts from the grounding quick schedule's checkpoint)
            "captioning", os.path.join(REPO, "configs/quick_schedules/glipv2_tiny_caption_synthetic.yaml"), "",
            opts=("MODEL.WEIGHTS", "")),
    )
    path, image = _picture(tmp_path)
    picture, answers, summary = tabs.answer(path, "what color is the star?", 0.5)
    assert picture.ndim == 3 and len(answers) == 5 and "answered in" in summary
    assert [s for _, s in answers] == sorted((s for _, s in answers), reverse=True)
    with pytest.raises(web_app.BadInput, match="question is empty"):
        tabs.answer(path, "  ", 0.5)
    picture, caption, summary = tabs.describe(path, 2, 0.5)
    assert picture.ndim == 3 and isinstance(caption, str) and caption and "log-probability" in summary
    ids = {getattr(b, "elem_id", None) for b in web_app.build_page(tabs).blocks.values()}
    assert {"question", "ask", "answers", "describe", "caption"} <= ids


def test_default_models_are_make_demos(monkeypatch):
    """GLIP-T not cached: the embedded model (no training); without its file either, the tiny model is trained."""
    import make_demo

    record = {"file_name": "val/0.png", "annotations": [{"category_id": 1}, {"category_id": 8}]}
    trained = []
    monkeypatch.setattr(make_demo, "cached_glip_t", lambda: None)
    monkeypatch.setattr(make_demo, "ensure_tiny_model", lambda: trained.append(1) or "cached/model_final.pth")
    monkeypatch.setattr(make_demo, "synthetic_sample", lambda: record)
    monkeypatch.setattr(make_demo, "cached_tiny_model", lambda: None)
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(make_demo, "embedded_model", lambda: ("embedded.yaml", "embedded.pth"))
    models, samples = web_app.default_models()
    assert [(m.config_file, m.weights) for m in models] == [("embedded.yaml", "embedded.pth")] and not trained
    assert models[0].threshold == make_demo.EMBEDDED_THRESHOLD and models[0].one_phrase_default
    assert samples == [["val/0.png", make_demo.tiny_prompt(record) + "."]]

    monkeypatch.setattr(make_demo, "embedded_model", lambda: None)
    models, _ = web_app.default_models()
    assert [m.weights for m in models] == ["cached/model_final.pth"] and trained == [1]
    monkeypatch.setattr(make_demo, "embedded_model", lambda: ("embedded.yaml", "embedded.pth"))
    monkeypatch.setattr(make_demo, "cached_tiny_model", lambda: "tiny/model_final.pth")
    models, _ = web_app.default_models()
    assert [m.weights for m in models] == ["embedded.pth", "tiny/model_final.pth"] and trained == [1]
