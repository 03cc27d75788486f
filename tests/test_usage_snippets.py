"""The README's and the model card's snippets for the tools CLIP users already have
(sentence-transformers, FAISS, LanceDB, clip_benchmark, the app), run offline against a saved
tiny model, and what they print checked against the package."""

import importlib
import io
import shlex
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import tomllib
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks._torchvision_stub import import_with_torchvision_stubbed
from benchmarks.clip_benchmark_compare import write_wds
from factorcl_hf.apps.search import run_search
from factorcl_hf.evaluation.embed import extract_embeddings
from factorcl_hf.evaluation.retrieval import evaluate_retrieval
from factorcl_hf.hub import build_model_card
from factorcl_hf.testing_utils import markdown_code_blocks

REPO = Path(__file__).resolve().parent.parent
README_SECTION = "Where CLIP users already are"
CARD_SECTION = "Use it where you already are"
README_MODEL = "outputs/demo/factorcl_ssl/model"  # the path the README's snippets load

pytest.importorskip("sentence_transformers", reason="the sentence-transformers extra")
pytest.importorskip("faiss", reason="the faiss extra")


def console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def run_command(line: str) -> None:
    """A console-script or ``python -m`` line of a snippet, run in this interpreter."""
    words = shlex.split(line)
    if words[:2] == ["python", "-m"]:
        importlib.import_module(words[2]).run(words[3:])
        return
    module, function = console_scripts()[words[0]].split(":")
    assert getattr(importlib.import_module(module), function)(words[1:]) == 0


def run_snippets(blocks, skip=()) -> list[dict]:
    """Run each block in the current folder: Python in a namespace of its own (returned, with
    what it printed under ``"_printed"``), shell lines as commands; lines starting with a word
    of ``skip`` are left to another test."""
    namespaces = []
    for number, (language, code) in enumerate(blocks):
        if language == "python":
            namespace, printed = {"__name__": "__snippet__"}, io.StringIO()
            with redirect_stdout(printed):
                exec(compile(code, f"<snippet {number}>", "exec"), namespace)
            namespaces.append({**namespace, "_printed": printed.getvalue()})
        else:
            assert language == "bash", f"snippet {number}: unexpected language {language!r}"
            for line in filter(None, (line.strip() for line in code.splitlines())):
                if not line.startswith(tuple(skip)):
                    run_command(line)
    return namespaces


@pytest.fixture
def workdir(photo_index, tmp_path, monkeypatch):
    """The folder the snippets run in: ``photos/``, ``photo.jpg`` and a clip_benchmark
    retrieval set of the photos and their captions (``my_retrieval_set/``)."""
    shutil.copytree(photo_index.images, tmp_path / "photos")
    Image.open(sorted(photo_index.images.iterdir())[0]).save(tmp_path / "photo.jpg")
    paths = sorted(photo_index.images.iterdir())
    write_wds(list(zip(paths, photo_index.captions)), tmp_path / "my_retrieval_set", "test",
              lambda row: {"png": row[0].read_bytes(), "txt": row[1].encode()}, {"dataset_type.txt": "retrieval\n"})
    monkeypatch.chdir(tmp_path)
    return tmp_path


def top5(photo_index, query: str) -> list[str]:
    return [item for item, _ in run_search(["--index", str(photo_index.index), "--model", str(photo_index.model_dir),
                                            "--query", query, "--top-k", "5"])]


def test_the_readmes_vector_store_snippets_find_what_factorcl_search_finds(photo_index, workdir):
    pytest.importorskip("lancedb", reason="the lancedb extra")
    blocks = [(language, code.replace(README_MODEL, str(photo_index.model_dir)))
              for language, code in markdown_code_blocks((REPO / "README.md").read_text(), README_SECTION)]
    faiss_block, lancedb_block = [block for block in blocks if block[0] == "python"]
    assert all(len([line for line in code.splitlines() if line.strip()]) <= 10 for _, code in (faiss_block, lancedb_block))
    embed = [block for block in blocks if block[0] == "bash" and block[1].startswith("factorcl-embed")]
    run_snippets(embed)
    assert (workdir / "photos.faiss").is_file()
    expected = top5(photo_index, "a red circle")
    for namespace in run_snippets([faiss_block, lancedb_block]):
        assert namespace["_printed"].strip() == repr(expected)


def test_the_readmes_clip_benchmark_command_writes_its_record(photo_index, workdir):
    pytest.importorskip("clip_benchmark", reason="the clip-benchmark extra")
    (command,) = [code for language, code in markdown_code_blocks((REPO / "README.md").read_text(), README_SECTION)
                  if "clip_benchmark_compare" in code]
    # The main job's 400 test pairs take a minute; a 60-pair shapes set shows the same path.
    run_snippets([("bash", command.replace(README_MODEL, str(photo_index.model_dir)).strip() + " --num-samples 60")])
    record = (workdir / "docs/results/clip_benchmark/demo_factorcl_ssl.json").read_text()
    assert '"zeroshot_retrieval"' in record and '"side_by_side"' in record


def test_the_model_cards_snippets_run_and_agree_with_the_package(photo_index, workdir):
    pytest.importorskip("clip_benchmark", reason="the clip-benchmark extra")
    import_with_torchvision_stubbed("clip_benchmark.datasets.builder")  # where torchvision cannot be installed
    card = build_model_card(photo_index.model, repo_id=str(photo_index.model_dir))
    blocks = markdown_code_blocks(str(card), CARD_SECTION)
    # factorcl-app serves until stopped: test_app.py runs the card's command in a browser.
    sentence_transformers, faiss_query, clip_benchmark = run_snippets(blocks, skip=["factorcl-app"])
    model, processor = photo_index.model, photo_index.processor
    texts = ["a photo of a cat", "a photo of a dog"]
    want = {name: extract_embeddings(model, processor, inputs, modality, ["pooler", "shared"])
            for name, inputs, modality in (("image", ["photo.jpg"], "image"), ("text", texts, "text"))}
    torch.testing.assert_close(torch.as_tensor(sentence_transformers["images"]), F.normalize(want["image"]["pooler"], dim=-1),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.as_tensor(sentence_transformers["texts"]), F.normalize(want["text"]["pooler"], dim=-1),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.as_tensor(sentence_transformers["shared"]),
                               F.normalize(want["text"]["shared"][:1], dim=-1), rtol=0, atol=1e-5)
    assert faiss_query["_printed"].strip() == repr(top5(photo_index, "a photo of a cat"))
    # Eight distinct noise images: no ties, so clip_benchmark's recall is this package's.
    ours = evaluate_retrieval(model, processor, sorted((workdir / "photos").iterdir()), photo_index.captions, ks=(1, 5))
    assert clip_benchmark["metrics"] == pytest.approx(
        {f"image_retrieval_recall@{k}": ours[f"text_to_image_R@{k}"] for k in (1, 5)}
        | {f"text_retrieval_recall@{k}": ours[f"image_to_text_R@{k}"] for k in (1, 5)}, abs=1e-6)
    (app_command,) = [code for language, code in blocks if "factorcl-app" in code]
    assert shlex.split(app_command)[:5] == ["factorcl-app", "--model", str(photo_index.model_dir), "--images", "photos/"]
