"""A corpus of hostile files, made at test time, through every entry point: training,
evaluation, ``factorcl-embed``, ``factorcl-search`` and ``from_pretrained`` (issue 27).

Every call runs under a deadline (nothing may hang) and must either skip the hostile input and
count it, or refuse it with a message naming it (row, file, field). Nothing outside the data
or model folder is opened: the corpus's outside files are watched.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
from hostile import (
    CAPTION_WORDS,
    bomb_png,
    caption,
    deadline,
    exif_rotated_jpeg,
    fifo,
    good_png,
    png16,
    truncated_png,
    write_csv,
)
from safetensors.torch import load_file, save_file

from factorcl_hf import FactorCLModel
from factorcl_hf.apps.embed import main as embed_main
from factorcl_hf.apps.embed import run_embed
from factorcl_hf.apps.search import main as search_main
from factorcl_hf.evaluation.__main__ import main as evaluate_main
from factorcl_hf.evaluation.__main__ import run as evaluate_run
from factorcl_hf.integrity import CHECKSUM_FILE, write_checksums
from factorcl_hf.testing_utils import save_tiny_model
from training.train import parse_args, train

TINY = ["--tiny_hidden_size", "16", "--tiny_num_layers", "1", "--tiny_projection_dim", "8", "--head_dim", "4",
        "--head_hidden_dim", "8", "--per_device_train_batch_size", "4", "--disable_tqdm",
        "--objective", "simclr", "--max_train_steps", "1"]
# A caption a hostile user might write: 10,000 distinct words (one hung the tokenizer build).
HUGE_CAPTION = " ".join("w" + "".join(chr(97 + i // 26**k % 26) for k in range(3)) for i in range(10_000))
# Images that must be skipped and counted wherever they are read; the others must decode.
UNDECODABLE = {"truncated.png": truncated_png, "bomb.png": bomb_png,
               "bomb_warning.png": lambda path: bomb_png(path, side=10_000), "fifo.png": fifo}
DECODABLE = {"sixteen_bit.png": png16, "rotated.jpg": lambda path: exif_rotated_jpeg(path)[0]}
SECONDS = 90  # per call: a tiny model trains or embeds in a few seconds


def exit_status(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """``data/`` (an imagefolder whose splits hold every hostile image and a huge caption),
    ``photos/`` (the same images, loose), ``outside.png`` beside them, and the CSVs that point
    out of their folder or hold an empty caption, each in its own folder."""
    root = tmp_path_factory.mktemp("hostile")
    outside = good_png(root / "outside.png", 99)
    data = root / "data"
    for split, good in (("train", 10), ("test", 6)):
        folder = data / split
        folder.mkdir(parents=True)
        rows = [{"file_name": good_png(folder / f"{i}.png", i).name, "caption": caption(i), "label": i % 2}
                for i in range(good)]
        rows[0]["caption"] = HUGE_CAPTION
        for i, (name, make) in enumerate({**UNDECODABLE, **DECODABLE}.items()):
            make(folder / name)
            rows.append({"file_name": name, "caption": caption(i), "label": i % 2})
        (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    photos = root / "photos"
    photos.mkdir()
    for path in (data / "test").iterdir():
        if path.name == "fifo.png":
            fifo(photos / path.name)  # copying a FIFO would block on it
        elif path.suffix != ".jsonl":
            shutil.copy(path, photos / path.name)
    csvs = {}
    for case in ("absolute", "parent", "symlink", "empty_caption"):
        folder = root / case
        folder.mkdir()
        rows = [{"image": good_png(folder / f"{i}.png", i).name, "caption": caption(i), "label": i % 2} for i in range(6)]
        bad = {"image": "5.png", "caption": caption(5), "label": 1}
        if case == "absolute":
            bad["image"] = str(outside)
        elif case == "parent":
            bad["image"] = "../outside.png"
        elif case == "symlink":
            (folder / "link.png").symlink_to(outside)
            bad["image"] = "link.png"
        else:
            bad["caption"] = " \u200b "
        csvs[case] = write_csv(folder / "pairs.csv", [*rows, bad])
    return {"root": root, "data": data, "photos": photos, "outside": outside, "csvs": csvs}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    save_tiny_model(directory, [caption(i) for i in range(6)] + [" ".join(CAPTION_WORDS)], head_dim=4,
                    head_hidden_dim=8, critic_hidden_dim=8, critic_embed_dim=4)
    return directory


@pytest.fixture
def watched(corpus, monkeypatch):
    """Record every file opened through ``open`` / ``os.open`` / Pillow: the outside file must
    never be among them."""
    import builtins

    import PIL.Image

    opened = []
    real_open, real_os_open, real_pil_open = builtins.open, os.open, PIL.Image.open

    def track(path):
        if isinstance(path, (str, os.PathLike)):
            opened.append(os.path.realpath(path))

    monkeypatch.setattr(builtins, "open", lambda file, *a, **k: track(file) or real_open(file, *a, **k))
    monkeypatch.setattr(os, "open", lambda path, *a, **k: track(path) or real_os_open(path, *a, **k))
    monkeypatch.setattr(PIL.Image, "open", lambda fp, *a, **k: track(fp) or real_pil_open(fp, *a, **k))
    yield opened
    assert os.path.realpath(corpus["outside"]) not in opened, "a file outside the data folder was opened"


# ------------------------------------------------------------------------------ training
@pytest.mark.slow
def test_training_skips_and_counts_every_undecodable_image(corpus, tmp_path, watched):
    with deadline(SECONDS, "training on the hostile corpus"):
        run = train(parse_args(["--train_data", str(corpus["data"]), "--output_dir", str(tmp_path / "out"), *TINY,
                                "--label_column", "label", "--eval_split", "test"]))
    results = run.results
    assert results["skipped_undecodable_images"] == results["skipped_undecodable_eval_images"] == len(UNDECODABLE)
    assert results["train_rows"] == 10 + len(DECODABLE)
    assert "mean_R@1" in results and (tmp_path / "out" / "model" / "model.safetensors").exists()


@pytest.mark.parametrize("case,named", [
    ("absolute", "row 6 of column 'image' .* outside the data file's folder"),
    ("parent", "row 6 of column 'image' .* is '../outside.png', outside the data file's folder"),
    ("symlink", "row 6 of column 'image' .* is 'link.png', outside the data file's folder"),
    ("empty_caption", r"row 6 of column 'caption' \(`caption_column`\) is empty"),
])
def test_training_refuses_and_names(corpus, tmp_path, case, named, watched):
    with deadline(SECONDS, f"training on the {case} CSV"), pytest.raises(ValueError, match=named):
        train(parse_args(["--train_data", str(corpus["csvs"][case]), "--output_dir", str(tmp_path / "out"), *TINY]))
    assert not (tmp_path / "out" / "model").exists()


# ---------------------------------------------------------------------------- evaluation
def test_evaluation_skips_and_counts(corpus, model_dir, watched):
    with deadline(SECONDS, "evaluating on the hostile corpus"):
        record = evaluate_run(["--model", str(model_dir), "--task", "retrieval", "--data", str(corpus["data"]),
                               "--no-progress"])
    assert record["skipped_undecodable_images"] == len(UNDECODABLE)
    assert record["num_samples"] == 6 + len(DECODABLE)


@pytest.mark.parametrize("case", ["absolute", "parent", "symlink", "empty_caption"])
def test_evaluation_refuses_and_names(corpus, model_dir, case, capsys, watched):
    argv = ["--model", str(model_dir), "--task", "probe", "--data", str(corpus["csvs"][case]), "--no-progress"]
    with deadline(SECONDS, f"evaluating the {case} CSV"):
        assert exit_status(evaluate_main, argv) == 2
    assert "row 6 of column" in capsys.readouterr().err


# --------------------------------------------------------------------------------- embed
def test_embed_skips_and_counts(corpus, model_dir, tmp_path, capsys, watched):
    out = tmp_path / "photos.parquet"
    with deadline(SECONDS, "embedding the hostile photos"):
        run_embed(["--model", str(model_dir), "--images", str(corpus["photos"]), "--out", str(out), "--no-progress"])
    assert f"skipped {len(UNDECODABLE)} image(s) that failed to decode" in capsys.readouterr().out
    with deadline(SECONDS, "embedding the hostile imagefolder"):
        run_embed(["--model", str(model_dir), "--data", str(corpus["data"]), "--out", str(tmp_path / "data.npy"),
                   "--no-progress"])
    assert len(json.loads((tmp_path / "data.image.ids.json").read_text())) == 6 + len(DECODABLE)


def test_embed_refuses_a_symlink_out_of_the_folder(corpus, model_dir, tmp_path, capsys, watched):
    photos = shutil.copytree(corpus["photos"], tmp_path / "photos", ignore=shutil.ignore_patterns("fifo.png"))
    (photos / "link.png").symlink_to(corpus["outside"])
    out = tmp_path / "photos.parquet"
    with deadline(SECONDS, "embedding a folder with a symlink out"):
        assert exit_status(embed_main, ["--model", str(model_dir), "--images", str(photos), "--out", str(out)]) == 2
    assert "link.png' is a symlink to" in capsys.readouterr().err and not out.exists()


# -------------------------------------------------------------------------------- search
@pytest.fixture(scope="module")
def index(model_dir, tmp_path_factory):
    texts = tmp_path_factory.mktemp("index") / "texts.txt"
    texts.write_text("\n".join([caption(i) for i in range(4)] + [HUGE_CAPTION]) + "\n")
    out = texts.with_suffix(".parquet")
    run_embed(["--model", str(model_dir), "--texts", str(texts), "--out", str(out), "--no-progress"])
    return out


@pytest.mark.parametrize("name", [*UNDECODABLE, *DECODABLE])
def test_search_by_a_hostile_image_answers_or_names_it(corpus, model_dir, index, name, capsys, watched):
    argv = ["--index", str(index), "--model", str(model_dir), "--query-image", str(corpus["photos"] / name)]
    with deadline(SECONDS, f"searching with {name}"):
        status = exit_status(search_main, argv)
    if name in UNDECODABLE:
        assert status == 2 and name in capsys.readouterr().err
    else:
        assert status == 0 and capsys.readouterr().out.count("  text ") == 5


def test_search_by_a_huge_or_empty_query(model_dir, index, capsys):
    with deadline(SECONDS, "searching with a 10,000-word query"):
        assert exit_status(search_main, ["--index", str(index), "--model", str(model_dir), "--query", HUGE_CAPTION]) == 0
    assert exit_status(search_main, ["--index", str(index), "--model", str(model_dir), "--query", "\t"]) == 2
    assert "--query is empty" in capsys.readouterr().err


# ----------------------------------------------------------------------- from_pretrained
def _rewrite_weights(folder: Path, keep) -> None:
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if keep(k)}, folder / "model.safetensors", metadata={"format": "pt"})
    write_checksums(folder, "*.safetensors")


def _truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    (folder / CHECKSUM_FILE).unlink()


def _config(folder: Path, **fields) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))


HOSTILE_MODELS = {
    "outside checksum entry": (lambda f, outside: (f / CHECKSUM_FILE).open("a").write(f"{'0' * 64}  ../{outside.name}\n"),
                               "entries must be file names inside the folder"),
    "checksum entry symlinked out": (lambda f, outside: ((f / "extra").symlink_to(outside),
                                                         (f / CHECKSUM_FILE).open("a").write(f"{'0' * 64}  extra\n")),
                                     "a symlink out of the folder"),
    "fifo weights": (lambda f, outside: ((f / "model.safetensors").unlink(), fifo(f / "model.safetensors")),
                     "'model.safetensors', which is not a regular file"),
    "truncated weights": (lambda f, outside: _truncate(f), "cannot be read as safetensors"),
    "weights missing the heads": (lambda f, outside: _rewrite_weights(f, lambda k: not k.startswith("objective.")),
                                  r"lack \d+ tensor\(s\) of the model: objective\."),
    "a pickle instead of safetensors": (lambda f, outside: ((f / "model.safetensors").rename(f / "pytorch_model.bin"),
                                                            (f / CHECKSUM_FILE).unlink()),
                                        "no file named model.safetensors"),
    "a 4 TB head": (lambda f, outside: _config(f, head_dim=2**20, head_hidden_dim=2**20), "`head_dim` is 1048576"),
    "a bert config": (lambda f, outside: _config(f, model_type="bert"), "is a 'bert' model, not a 'factorcl' one"),
}


@pytest.mark.parametrize("case", list(HOSTILE_MODELS))
def test_from_pretrained_refuses_and_names(corpus, model_dir, tmp_path, case, watched):
    folder = shutil.copytree(model_dir, tmp_path / "model")
    damage, named = HOSTILE_MODELS[case]
    damage(folder, corpus["outside"])
    with deadline(SECONDS, f"loading a model folder with {case}"), pytest.raises((ValueError, OSError), match=named):
        FactorCLModel.from_pretrained(folder)
