"""Issue 27's hostile cases, one test each: the 14 that lost work, read what they should not or
hung (``test_badNN_*``, named after the case) and the weak ones that gave a traceback, a
confusing message or a silent oddity (``test_weak_*``). Tiny models, tiny data."""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile import (
    CAPTION_WORDS,
    bomb_png,
    caption,
    deadline,
    exif_rotated_jpeg,
    fifo,
    good_png,
    imagefolder,
    png16,
    write_csv,
)
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import training.loop
from factorcl_hf import FactorCLModel
from factorcl_hf.apps.embed import main as embed_main
from factorcl_hf.apps.embed import run_embed
from factorcl_hf.apps.search import main as search_main
from factorcl_hf.apps.search import run_search
from factorcl_hf.checkpointing import LOCK_FILE, OutputDirLock
from factorcl_hf.data.image_text import ImageTextCollator, load_image_text_dataset
from factorcl_hf.data.shapes import write_shapes_imagefolder
from factorcl_hf.evaluation.__main__ import main as evaluate_main
from factorcl_hf.integrity import CHECKSUM_FILE, write_checksums
from factorcl_hf.offline import build_caption_tokenizer, tiny_clip_processor
from factorcl_hf.testing_utils import fallback_folder, save_tiny_model
from training.train import main as train_main
from training.train import parse_args, train

TINY = ["--tiny_hidden_size", "16", "--tiny_num_layers", "1", "--tiny_projection_dim", "8", "--head_dim", "4",
        "--head_hidden_dim", "8", "--per_device_train_batch_size", "4",
        "--eval_split", "none", "--disable_tqdm", "--objective", "simclr"]
SMALL_HEADS = dict(head_dim=4, head_hidden_dim=8, critic_hidden_dim=8, critic_embed_dim=4)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_shapes_imagefolder(tmp_path_factory.mktemp("shapes") / "data", num_samples=20, seed=1)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    captions = [caption(i) for i in range(6)] + [" ".join(CAPTION_WORDS)]
    model, processor = save_tiny_model(directory, captions, **SMALL_HEADS)
    return directory, model, processor


def flags(data, out, *extra):
    return ["--train_data", str(data), "--output_dir", str(out), *TINY, *extra]


def exit_status(main, argv) -> int:
    """What a console script's process would exit with: its return value, or the status of
    the ``SystemExit`` an argument error raises."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def no_model_built(monkeypatch):
    """Make building the model fail loudly: the checks under test must come before it."""
    def built(*args, **kwargs):
        raise AssertionError("the model was built: the check came after the data was accepted")

    monkeypatch.setattr(training.loop, "build_model_and_processor", built)


# ---------------------------------------------------------------------------- BAD cases
def test_bad01_a_full_disk_at_the_final_save_keeps_the_model(data_dir, tmp_path, monkeypatch):
    import transformers.modeling_utils

    real_save = transformers.modeling_utils.safe_save_file

    def disk_full_under_the_output_dir(tensors, filename, *args, **kwargs):
        if Path(filename).is_relative_to(tmp_path / "run"):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full_under_the_output_dir)
    with pytest.raises(OSError, match="the trained model was saved to '([^']+)' instead") as error:
        train(parse_args(flags(data_dir, tmp_path / "run", "--max_train_steps", "1")))
    with fallback_folder(error.value) as fallback:
        assert FactorCLModel.from_pretrained(fallback).config.objective == "simclr"


def test_bad02_an_unreadable_eval_image_costs_nothing(tmp_path):
    data = imagefolder(tmp_path / "data", 12)
    imagefolder(data, 5, extra=[("broken.png", "a red circle photo")], split="test")
    (data / "test" / "broken.png").write_bytes(b"not an image")
    run = train(parse_args(flags(data, tmp_path / "out", "--max_train_steps", "1", "--eval_split", "test",
                                 "--label_column", "label")))
    assert run.results["skipped_undecodable_eval_images"] == 1
    assert {"mean_R@1", "factorized_accuracy"} <= run.results.keys()
    assert (tmp_path / "out" / "model" / "model.safetensors").exists()


def test_bad02_an_evaluation_failure_never_costs_the_saved_model(data_dir, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ValueError("the evaluation broke")

    monkeypatch.setattr(training.loop, "evaluate", broken)
    out = tmp_path / "out"
    status = train_main(flags(data_dir, out, "--max_train_steps", "1", "--eval_split", "test"))
    results = json.loads((out / "results.json").read_text())
    assert status == 1 and results["evaluation_error"] == "ValueError: the evaluation broke"
    assert FactorCLModel.from_pretrained(out / "model").config.objective == "simclr"
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"factorcl-train: the model is saved in {out / 'model'}, but the evaluation failed " \
                   "(ValueError: the evaluation broke)"


def test_bad02_an_evaluation_between_epochs_that_fails_does_not_stop_training(data_dir, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("the evaluation broke")

    monkeypatch.setattr(training.loop, "evaluate", broken)
    run = train(parse_args(flags(data_dir, tmp_path / "out", "--num_train_epochs", "2", "--eval_every_epoch",
                                 "--eval_split", "test")))
    assert run.results["steps"] == 2 * run.results["rows_per_epoch"] // 4
    assert (tmp_path / "out" / "model" / "model.safetensors").exists()


def test_bad03_single_class_labels_fail_before_training(tmp_path, monkeypatch):
    data = imagefolder(tmp_path / "data", 8, label_of=lambda i: 0)
    no_model_built(monkeypatch)
    with pytest.raises(ValueError, match=r"column 'label' \(`label_column`\) holds a single class"):
        train(parse_args(flags(data, tmp_path / "out", "--max_train_steps", "1", "--label_column", "label")))


def _label_stream(folder: Path, labels: list[int]) -> Path:
    """Parquet shards (images embedded) whose rows have ``labels``, in order."""
    import datasets

    folder.mkdir()
    good_png(folder / "image.png", 1)
    image = (folder / "image.png").read_bytes()
    rows = {"image": [{"bytes": image, "path": None}] * len(labels), "caption": [caption(i) for i in range(len(labels))],
            "label": labels}
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                  "label": datasets.Value("int64")})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / "train-00000.parquet"))
    (folder / "image.png").unlink()
    return folder


@pytest.mark.slow
def test_bad04_a_stream_gets_its_label_set_before_training(tmp_path, monkeypatch):
    # The first 8 rows (the sample) hold classes 0..3; class 7 comes later.
    shards = _label_stream(tmp_path / "shards", [0, 1, 2, 3] * 2 + [7, 0, 1, 7, 2, 3, 0, 1])
    stream = ["--streaming", "--streaming_sample_rows", "8", "--streaming_shuffle_buffer", "4", "--max_train_steps", "3",
              "--label_column", "label", "--objective", "factorcl_sup", "--critic_hidden_dim", "8"]
    with monkeypatch.context() as patched:
        no_model_built(patched)
        with pytest.raises(ValueError, match="give `--num_labels N`"):
            train(parse_args(flags(shards, tmp_path / "none", *stream)))
    known = train(parse_args(flags(shards, tmp_path / "known", *stream, "--num_labels", "8")))
    assert known.results["steps"] == 3 and known.model.config.num_labels == 8
    assert known.results["skipped_rows_outside_the_label_set"] == known.results["skipped_rows_without_caption"] == 0
    fewer = train(parse_args(flags(shards, tmp_path / "fewer", *stream, "--num_labels", "4", "--max_train_steps", "2")))
    assert fewer.results["steps"] == 2 and fewer.results["skipped_rows_outside_the_label_set"] > 0


def test_bad05_a_second_trainer_on_the_same_output_dir_is_refused(data_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = OutputDirLock(out).acquire()
    try:
        with pytest.raises(ValueError, match=rf"in use by another training run \(pid {os.getpid()} on host "):
            train(parse_args(flags(data_dir, out, "--max_train_steps", "1")))
        assert not (out / "model").exists() and not (out / "checkpoints").exists()
    finally:
        holder.release()
    # A crashed run leaves its lock file behind, but not the lock: the next run takes it.
    (out / LOCK_FILE).write_text(json.dumps({"pid": 2**22 + 1, "host": "gone", "started": "yesterday"}))
    assert train(parse_args(flags(data_dir, out, "--max_train_steps", "1"))).results["steps"] == 1


def test_bad06_resuming_after_the_captions_changed_keeps_the_token_ids(data_dir, tmp_path):
    out = tmp_path / "run"
    first = train(parse_args(flags(data_dir, out, "--max_train_steps", "2", "--checkpointing_steps", "1")))
    vocabulary = first.processor.tokenizer.get_vocab()
    changed = shutil.copytree(data_dir, tmp_path / "changed")
    for metadata in changed.rglob("metadata.jsonl"):
        rows = [json.loads(line) for line in metadata.read_text().splitlines()]
        metadata.write_text("".join(json.dumps({**r, "caption": "zebra crossing " + r["caption"]}) + "\n" for r in rows))
    captions = [json.loads(line)["caption"] for line in (changed / "train" / "metadata.jsonl").read_text().splitlines()]
    assert build_caption_tokenizer(captions).get_vocab() != vocabulary, "the new captions move the token ids"
    resumed = train(parse_args(flags(changed, out, "--max_train_steps", "3", "--resume_from_checkpoint", "latest")))
    assert resumed.results["steps"] == 3
    assert resumed.processor.tokenizer.get_vocab() == vocabulary


def test_bad07_weights_missing_the_heads_fail_to_load(saved_model, tmp_path):
    directory, _, _ = saved_model
    damaged = shutil.copytree(directory, tmp_path / "damaged")
    weights = load_file(damaged / "model.safetensors")
    kept = {name: tensor for name, tensor in weights.items() if not name.startswith("objective.heads")}
    assert len(kept) < len(weights)
    save_file(kept, damaged / "model.safetensors", metadata={"format": "pt"})
    write_checksums(damaged, "*.safetensors")  # the attacker regenerates the checksums too
    with pytest.raises(ValueError, match=r"lack \d+ tensor\(s\) of the model: objective\.heads"):
        FactorCLModel.from_pretrained(damaged)
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\n")
    assert exit_status(embed_main, ["--model", str(damaged), "--texts", str(texts), "--out", str(tmp_path / "e.parquet")]) == 2
    assert not (tmp_path / "e.parquet").exists()


def test_bad08_a_huge_label_id_is_refused_naming_its_row(tmp_path, monkeypatch):
    rows = [{"image": good_png(tmp_path / f"{i}.png", i).name, "caption": caption(i), "label": label}
            for i, label in enumerate([0, 1, 10**9, 1])]
    csv = write_csv(tmp_path / "data.csv", rows)
    with pytest.raises(ValueError, match=r"row 2 of column 'label' \(`label_column`\) is 1000000000, a class id above"):
        load_image_text_dataset(csv, label_column="label")
    no_model_built(monkeypatch)
    with pytest.raises(ValueError, match="row 2 of column 'label'"):
        train(parse_args(flags(csv, tmp_path / "out", "--label_column", "label", "--per_device_train_batch_size", "2")))


def test_bad09_a_10000_word_caption_builds_the_tokenizer_in_seconds():
    # 10,000 distinct words of letters only (a digit is a word of its own to CLIP's pre-tokeniser).
    words = ["w" + "".join(chr(97 + i // 26**k % 26) for k in range(3)) for i in range(10_000)]
    with deadline(20, "building a tokenizer from one 10,000-word caption"):
        tokenizer = build_caption_tokenizer([" ".join(words), "a red circle"], model_max_length=32)
    vocabulary = tokenizer.get_vocab()
    # Only the words a 32-position model sees are learned: the caption's first 30.
    assert {f"{word}</w>" for word in words[:30]} <= vocabulary.keys()
    assert f"{words[30]}</w>" not in vocabulary and "circle</w>" in vocabulary


def test_bad09_the_merges_are_the_textbook_loops():
    """The incremental loop gives the textbook BPE loop's merges, in order (ties included)."""
    import random
    from collections import Counter

    from benchmarks.tokenizer_build import reference_word_merges
    from factorcl_hf.offline import _train_word_merges

    rng = random.Random(0)
    counts = Counter({"".join(rng.choice("abcde") for _ in range(rng.randint(1, 9))): rng.randint(1, 4)
                      for _ in range(300)})
    assert _train_word_merges(counts) == reference_word_merges(counts)


def test_bad10_a_fifo_named_as_an_image_is_skipped_not_opened(tmp_path):
    rows = [{"image": good_png(tmp_path / f"{i}.png", i).name, "caption": caption(i)} for i in range(8)]
    rows.append({"image": fifo(tmp_path / "pipe.png").name, "caption": "a red circle photo"})
    with deadline(60, "training on a CSV naming a FIFO"):
        run = train(parse_args(flags(write_csv(tmp_path / "data.csv", rows), tmp_path / "out", "--max_train_steps", "1")))
    assert run.results["skipped_undecodable_images"] == 1


def test_bad11_a_decompression_bomb_is_counted_by_embed(saved_model, tmp_path, capsys):
    directory, _, _ = saved_model
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        good_png(folder / f"{i}.png", i)
    bomb_png(folder / "bomb.png")
    bomb_png(folder / "warning.png", side=10_000)  # between Pillow's warning and its error
    out = tmp_path / "images.parquet"
    with deadline(60, "embedding a folder holding bombs"):
        run_embed(["--model", str(directory), "--images", str(folder), "--out", str(out), "--no-progress"])
    import pyarrow.parquet as pq

    assert pq.read_table(out).to_pydict()["id"] == ["0.png", "1.png", "2.png"]
    assert "skipped 2 image(s) that failed to decode" in capsys.readouterr().out


def test_bad12_the_evaluation_cli_refuses_fractional_labels(saved_model, tmp_path, capsys):
    directory, _, _ = saved_model
    rows = [{"image": good_png(tmp_path / f"{i}.png", i).name, "caption": caption(i), "label": 0.7 if i == 3 else i % 2}
            for i in range(8)]
    csv = write_csv(tmp_path / "data.csv", rows)
    status = exit_status(evaluate_main, ["--model", str(directory), "--task", "probe", "--data", str(csv), "--no-progress"])
    assert status == 2
    assert "row 3 of column 'label' (`label_column`) is 0.7, not an integer (it would be floored)" in capsys.readouterr().err


def test_bad13_a_16_bit_png_keeps_its_pixels(tmp_path):
    path = png16(tmp_path / "ramp.png")
    assert Image.open(path).mode == "I;16"
    processor = tiny_clip_processor(build_caption_tokenizer(["a ramp"]), 24)
    batch = ImageTextCollator(processor)([{"image": Image.open(path), "caption": "a ramp"}])
    row = batch["pixel_values"][0, 0, 12]
    assert float(row.max() - row.min()) > 3, "the image trains as a flat square"
    assert torch.all(row[1:] >= row[:-1]), "the ramp's order is kept"
    from factorcl_hf.evaluation.embed import load_image

    pixels = np.asarray(load_image(path))[0, :, 0]
    assert pixels[0] == 0 and pixels[-1] == 255 and 100 < pixels[12] < 160


def test_bad14_sha256sums_cannot_make_the_loader_read_outside_the_folder(saved_model, tmp_path, monkeypatch):
    import factorcl_hf.integrity

    directory, _, _ = saved_model
    secret = tmp_path / "secret.txt"
    secret.write_text("not the model's")
    read = []
    real_sha = factorcl_hf.integrity.sha256_of
    monkeypatch.setattr(factorcl_hf.integrity, "sha256_of", lambda path: read.append(Path(path)) or real_sha(path))
    for name, entry in (("relative", "../secret.txt"), ("absolute", str(secret)), ("symlink", "link")):
        folder = shutil.copytree(directory, tmp_path / name)
        if name == "symlink":
            (folder / "link").symlink_to(secret)
        with (folder / CHECKSUM_FILE).open("a") as listing:
            listing.write(f"{'0' * 64}  {entry}\n")
        with pytest.raises(ValueError, match="entries must be file names inside the folder|a symlink out of the folder"):
            FactorCLModel.from_pretrained(folder)
    assert all(path.resolve() != secret for path in read), "a file outside the model folder was read"


# --------------------------------------------------------------------------- WEAK cases
def test_weak_image_paths_out_of_the_data_folder_are_refused(tmp_path):
    inside = tmp_path / "data"
    inside.mkdir()
    outside = good_png(tmp_path / "outside.png")
    names = [good_png(inside / f"{i}.png", i).name for i in range(3)]
    for bad in (str(outside), "../outside.png"):
        csv = write_csv(inside / "pairs.csv", [{"image": n, "caption": caption(i)} for i, n in enumerate(names)]
                        + [{"image": bad, "caption": "a red circle"}])
        with pytest.raises(ValueError, match=rf"row 3 of column 'image' .* is '{bad}', outside the data file's folder"):
            load_image_text_dataset(csv)
        assert len(load_image_text_dataset(csv, allow_outside_paths=True)["train"]) == 4
    folder = imagefolder(tmp_path / "folder", 3, extra=[("link.png", "a red circle")])
    (folder / "train" / "link.png").symlink_to(outside)
    with pytest.raises(ValueError, match="is a symlink to .*outside the data folder"):
        load_image_text_dataset(folder, label_column="label")
    # A Parquet file's image structs may hold paths, not bytes: the same rule.
    import datasets

    table = datasets.Dataset.from_dict({"image": [str(inside / names[0]), str(outside)], "caption": ["a", "b"]})
    table.cast_column("image", datasets.Image()).to_parquet(str(inside / "pairs.parquet"))
    with pytest.raises(ValueError, match=rf"row 1's image '{outside}' is outside the data folder"):
        load_image_text_dataset(inside / "pairs.parquet")


def test_weak_training_errors_are_one_line_with_exit_2(data_dir, tmp_path, capsys, monkeypatch):
    assert train_main(flags(data_dir, tmp_path / "out", "--max_grad_norm", "nan")) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "factorcl-train: error: `max_grad_norm` must be a finite number >= 0 (0: off), got nan"]
    with pytest.raises(ValueError, match="max_grad_norm"):
        train_main(flags(data_dir, tmp_path / "out", "--max_grad_norm", "nan", "--debug"))
    monkeypatch.setenv("FACTORCL_DEBUG", "1")
    with pytest.raises(ValueError, match="max_grad_norm"):
        train_main(flags(data_dir, tmp_path / "out", "--max_grad_norm", "nan"))


@pytest.mark.parametrize("option,value,named", [
    ("max_grad_norm", "nan", "`max_grad_norm` must be a finite number >= 0"),
    ("seed", "-1", "`seed` must be >= 0"),
    ("seed", str(2**32), "`seed` must be < 2**32"),
    ("output_dir", "", "`output_dir` must name a folder"),
    ("checkpoints_total_limit", "0", "`checkpoints_total_limit` must be >= 1"),
    ("learning_rate", "inf", "`learning_rate` must be a finite number > 0"),
    ("num_labels", "1", "`num_labels` must be >= 2"),
])
def test_weak_option_values_are_refused_naming_them(option, value, named):
    with pytest.raises(ValueError, match=named.replace("*", r"\*")):
        parse_args([f"--{option}", value])


def test_weak_a_checkpoint_claiming_a_huge_step_or_another_batch_is_refused(data_dir, tmp_path):
    out = tmp_path / "run"
    train(parse_args(flags(data_dir, out, "--max_train_steps", "1", "--checkpointing_steps", "1")))
    step = out / "checkpoints" / "step_1"
    with pytest.raises(ValueError, match=r"per_device_train_batch_size: 4 -> 2.*Resume with its settings"):
        train(parse_args(flags(data_dir, out, "--max_train_steps", "2", "--resume_from_checkpoint", "latest",
                               "--per_device_train_batch_size", "2")))
    state = json.loads((step / "train_state.json").read_text())
    (step / "train_state.json").write_text(json.dumps({**state, "step": 10**12}))
    write_checksums(step)
    with pytest.raises(ValueError, match=r"at step 1000000000000, beyond this run's 2 steps"):
        train(parse_args(flags(data_dir, out, "--max_train_steps", "2", "--resume_from_checkpoint", str(step))))


def test_weak_an_evaluation_split_of_one_row_is_refused(data_dir, tmp_path, monkeypatch):
    no_model_built(monkeypatch)
    with pytest.raises(ValueError, match=r"evaluation split \(--eval_fraction\) has 1 usable row\(s\), fewer than 2"):
        train(parse_args(flags(data_dir, tmp_path / "out", "--eval_split", "test", "--eval_fraction", "0.05")))


def test_weak_staging_left_by_an_interrupted_save_is_removed_and_the_umask_honoured(data_dir, tmp_path):
    out = tmp_path / "run"
    leftovers = [out / "checkpoints" / ".staging-step_7", out / ".model-abc123"]
    for folder in leftovers:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half written")
    previous = os.umask(0o022)
    try:
        train(parse_args(flags(data_dir, out, "--max_train_steps", "1", "--checkpointing_steps", "1")))
    finally:
        os.umask(previous)
    assert not any(folder.exists() for folder in leftovers)
    for path in (out / "model", out / "checkpoints" / "step_1"):
        assert path.stat().st_mode & 0o777 == 0o755
    assert (out / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("edit,named", [
    (lambda c: c["clip_config"]["vision_config"].update(patch_size=0), r"`clip_config.vision_config.patch_size` is 0"),
    (lambda c: c.update(head_dim=10**9), r"`head_dim` is 1000000000; it must be an integer in \[1, 65536\]"),
    (lambda c: c["clip_config"]["text_config"].update(vocab_size=10**12), r"`clip_config.text_config.vocab_size`"),
    (lambda c: c.update(model_type="bert"), r"is a 'bert' model, not a 'factorcl' one"),
    (None, r"SHA256SUMS lists no \*\.safetensors file"),
])
def test_weak_a_bad_saved_config_or_checksum_list_names_the_field(saved_model, tmp_path, edit, named):
    directory, _, _ = saved_model
    folder = shutil.copytree(directory, tmp_path / "model")
    if edit is None:
        (folder / CHECKSUM_FILE).write_text("")
    else:
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=named):
        FactorCLModel.from_pretrained(folder)
    # The console scripts load it the same way: one line naming the field, exit 2.
    (tmp_path / "texts.txt").write_text("a red circle\n")
    assert exit_status(embed_main, ["--model", str(folder), "--texts", str(tmp_path / "texts.txt"),
                                    "--out", str(tmp_path / "e.parquet")]) == 2


def test_weak_loader_messages_name_the_file_row_and_column(tmp_path):
    import datasets

    names = [good_png(tmp_path / f"{i}.png", i).name for i in range(3)]
    rows = [{"image": n, "caption": caption(i)} for i, n in enumerate(names)]
    cases = [
        ([*rows[:2], {"image": "", "caption": "a red circle"}], r"row 2 of column 'image' \(`image_column`\) is empty"),
        ([*rows[:2], {"image": names[2], "caption": "\u200b\u200b"}],
         r"row 2 of column 'caption' \(`caption_column`\) is empty \(whitespace or invisible characters only\)"),
        ([{"image": n, "caption": str(i)} for i, n in enumerate(names)], r"row 0 of column 'caption'.* is a int, not text"),
    ]
    for case, (table, named) in enumerate(cases):
        with pytest.raises(ValueError, match=named):
            load_image_text_dataset(write_csv(tmp_path / f"case{case}.csv", table))
    # The text "NA" is a caption, not a missing value.
    loaded = load_image_text_dataset(write_csv(tmp_path / "na.csv", [*rows[:2], {"image": names[2], "caption": "NA"}]))
    assert loaded["train"]["caption"][2] == "NA"
    folder = imagefolder(tmp_path / "folder", 3)
    with (folder / "train" / "metadata.jsonl").open("a") as metadata:
        metadata.write('{"file_name": "0.png", "caption": \n')
    with pytest.raises(ValueError, match=r"metadata.jsonl line 4 is not a JSON object"):
        load_image_text_dataset(folder)
    shards = tmp_path / "shards"
    shards.mkdir()
    datasets.Dataset.from_dict({"image": [1, 2], "caption": ["a", "b"]}).to_parquet(str(shards / "train.parquet"))
    with pytest.raises(ValueError, match=r"column 'image' \(`image_column`\) holds int64, not images or image paths"):
        load_image_text_dataset(shards)


def test_weak_embed_applies_exif_orientation_as_training_does(saved_model, tmp_path):
    directory, model, processor = saved_model
    folder = tmp_path / "photos"
    folder.mkdir()
    _, upright = exif_rotated_jpeg(folder / "rotated.jpg")
    run_embed(["--model", str(directory), "--images", str(folder), "--out", str(tmp_path / "r.npy"), "--no-progress"])
    stored = torch.from_numpy(np.load(tmp_path / "r.image.pooler.npy"))
    from factorcl_hf.evaluation.embed import embed_images

    expected = embed_images(model, processor, [upright])
    unrotated = embed_images(model, processor, [Image.open(folder / "rotated.jpg").convert("RGB")])
    assert torch.dist(stored, expected) < torch.dist(stored, unrotated)
    torch.testing.assert_close(stored, expected, atol=0.05, rtol=0)


def test_weak_search_refuses_an_empty_query_an_empty_index_and_another_models_index(saved_model, tmp_path, capsys):
    directory, _, _ = saved_model
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\na blue square\n")
    index = tmp_path / "texts.parquet"
    run_embed(["--model", str(directory), "--texts", str(texts), "--out", str(index), "--no-progress"])
    search = ["--index", str(index), "--model", str(directory)]
    with pytest.raises(SystemExit):
        run_search([*search, "--query", "  "])
    assert "--query is empty" in capsys.readouterr().err
    import pyarrow.parquet as pq

    table = pq.read_table(index)
    pq.write_table(table.slice(0, 0), tmp_path / "empty.parquet")
    assert exit_status(search_main, ["--index", str(tmp_path / "empty.parquet"), "--model", str(directory), "--query", "red"]) == 2
    assert "holds no rows" in capsys.readouterr().err
    other = tmp_path / "other"
    save_tiny_model(other, [caption(i) for i in range(6)] + [" ".join(CAPTION_WORDS)], seed=1, **SMALL_HEADS)
    query = str(good_png(tmp_path / "q.png"))
    assert exit_status(search_main, ["--index", str(index), "--model", str(other), "--query-image", query]) == 2
    assert "was written by another model" in capsys.readouterr().err


def test_weak_search_leaves_out_nan_vectors(saved_model, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory, _, _ = saved_model
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\na blue square\na green circle\n")
    index = tmp_path / "texts.parquet"
    run_embed(["--model", str(directory), "--texts", str(texts), "--out", str(index), "--no-progress"])
    table = pq.read_table(index)
    pooler = table.column("pooler").to_pylist()
    pooler[1] = [float("nan")] * len(pooler[1])
    table = table.set_column(table.schema.get_field_index("pooler"), "pooler", pa.array(pooler, pa.list_(pa.float32())))
    pq.write_table(table, index)
    hits = run_search(["--index", str(index), "--model", str(directory), "--query-image",
                       str(good_png(tmp_path / "q.png")), "--top-k", "3"])
    assert [item for item, _ in hits] != [] and "1" not in [item for item, _ in hits]


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_weak_the_lock_names_its_holder(tmp_path):
    first = OutputDirLock(tmp_path).acquire()
    try:
        with pytest.raises(ValueError, match=rf"pid {os.getpid()} on host '"):
            OutputDirLock(tmp_path).acquire()
    finally:
        first.release()
    OutputDirLock(tmp_path).acquire().release()


def test_weak_a_stream_skips_and_counts_rows_without_caption(tmp_path):
    """A stream cannot be checked before training: its rows are, as they arrive."""
    import datasets

    from training.streaming import _usable_rows

    image = {"bytes": good_png(tmp_path / "image.png").read_bytes(), "path": None}
    rows = [{"image": image, "caption": text, "label": label}
            for text, label in (("a red circle", 0), ("", 1), (" \u200b", 0), ("a blue square", 5), ("a photo", 1))]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                  "label": datasets.Value("int64")})
    stream = datasets.Dataset.from_list(rows, features=features).to_iterable_dataset()
    counter = {"count": 0, "labels": 0, "captions": 0}
    kept = list(_usable_rows(stream, "image", "caption", "label", range(2), counter))
    assert [row["caption"] for row in kept] == ["a red circle", "a photo"]
    assert counter == {"count": 0, "labels": 1, "captions": 2}
