"""factorcl-app (factorcl_hf/app.py): the index ranks as factorcl-search does, the served app
answers gradio_client, and (slow) the console command serves a page that headless Chromium
queries and photographs."""

import os
import runpy
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from factorcl_hf.app import ImageIndex, build_app, main
from factorcl_hf.apps.search import run_search
from factorcl_hf.evaluation.embed import extract_embeddings
from factorcl_hf.evaluation.zero_shot import class_prompt_embeddings, zero_shot_logits
from factorcl_hf.hub import build_model_card
from factorcl_hf.testing_utils import markdown_code_blocks

gradio_client = pytest.importorskip("gradio_client", reason="the app extra")
# The browser helpers: examples/app_screenshot.py (serve factorcl-app, query it in headless Chromium).
SCREENSHOT = runpy.run_path(str(Path(__file__).resolve().parent.parent / "examples" / "app_screenshot.py"))


@pytest.fixture(scope="module")
def index(photo_index):
    return ImageIndex(photo_index.model, photo_index.processor, photo_index.images)


def test_search_ranks_as_factorcl_search(photo_index, index):
    assert index.build().startswith("Indexed 8 images")
    for caption in photo_index.captions[:4]:
        hits = index.search(caption, None, "pooler", 5)
        searched = run_search(["--index", str(photo_index.index), "--model", str(photo_index.model_dir),
                               "--query", caption, "--top-k", "5"])
        assert [path.name for path, _ in hits] == [item for item, _ in searched]
        assert [score for _, score in hits] == pytest.approx([score for _, score in searched], abs=1e-5)
    # By an example image, with the unique embedding: the image itself first, at cosine 1.
    first = sorted(photo_index.images.iterdir())[0]
    hits = index.search(None, str(first), "unique", 3)
    assert hits[0][0] == first and hits[0][1] == pytest.approx(1.0, abs=1e-5)


def test_what_the_search_and_classifier_refuse(index):
    with pytest.raises(ValueError, match="a text cannot be compared with 'unique' image embeddings"):
        index.search("a red circle", None, "unique", 5)
    with pytest.raises(ValueError, match="type a query or drop an example image"):
        index.search("  ", None, "pooler", 5)
    with pytest.raises(ValueError, match="at least two strings"):
        index.classify(str(sorted(index.folder.iterdir())[0]), "circle", "a {}")


def test_the_served_app_answers_gradio_client(photo_index, index):
    app = build_app(index)
    port = SCREENSHOT["free_port"]()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               allowed_paths=[str(photo_index.images)])
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        caption = photo_index.captions[1]
        gallery, table = client.predict(caption, None, "pooler", 5, api_name="/search")
        searched = run_search(["--index", str(photo_index.index), "--model", str(photo_index.model_dir),
                               "--query", caption, "--top-k", "5"])
        assert [row[1] for row in table["data"]] == [item for item, _ in searched]
        assert [Path(item["image"]).name for item in gallery] == [item for item, _ in searched]
        image = sorted(photo_index.images.iterdir())[2]
        label = client.predict(gradio_client.handle_file(str(image)), "circle, square, cross", "a {}", api_name="/classify")
    finally:
        app.close()
    prompts = class_prompt_embeddings(photo_index.model, photo_index.processor, ["circle", "square", "cross"], ["a {}"])
    embeds = extract_embeddings(photo_index.model, photo_index.processor, [str(image)], "image")["pooler"]
    probs = zero_shot_logits(embeds, prompts, photo_index.model.objective.alignment_critic).softmax(-1)[0]
    got = {item["label"]: item["confidence"] for item in label["confidences"]}
    assert got == pytest.approx(dict(zip(["circle", "square", "cross"], probs.tolist())), abs=1e-5)


def test_bad_arguments_exit_naming_them_before_serving(tmp_path, photo_index, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--model", str(tmp_path / "nowhere"), "--images", str(photo_index.images)])
    assert exited.value.code == 2 and "nowhere' does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["--model", str(photo_index.model_dir), "--images", str(tmp_path / "none")])
    assert exited.value.code == 2 and "`--images`" in capsys.readouterr().err


def test_missing_gradio_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(SystemExit, match=r'factorcl-app needs gradio: pip install "factorcl-hf\[app\]"'):
        main(["--model", "m", "--images", "i"])


@pytest.mark.slow
def test_the_console_app_answers_a_query_in_headless_chromium(photo_index, tmp_path):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        message = "Debian's chromium and chromium-driver are not installed (make test installs them)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    pytest.importorskip("selenium")
    shutil.copytree(photo_index.images, tmp_path / "photos")
    # The model card's command, as a user runs it from the folder holding photos/.
    card = build_model_card(photo_index.model, repo_id=str(photo_index.model_dir))
    (command,) = [code for _, code in markdown_code_blocks(str(card), "Use it where you already are") if "factorcl-app" in code]
    words = shlex.split(command)
    assert words[0] == "factorcl-app"
    port = SCREENSHOT["free_port"]()
    server = SCREENSHOT["serve"]([str(Path(sys.executable).with_name("factorcl-app")), *words[1:]], port, tmp_path)
    screenshot = tmp_path / "app.png"
    try:
        query = photo_index.captions[3]
        names = SCREENSHOT["query_in_chromium"](f"http://127.0.0.1:{port}/", query, screenshot, tmp_path / "profile")
    finally:
        server.terminate()
        server.wait(timeout=30)
    searched = run_search(["--index", str(photo_index.index), "--model", str(photo_index.model_dir),
                           "--query", query, "--top-k", "5"])
    assert names[:5] == [item for item, _ in searched]
    assert screenshot.stat().st_size > 10_000 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
