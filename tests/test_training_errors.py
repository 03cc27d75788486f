"""A hostile user's inputs to the training script (issue 14): no code runs from a checkpoint,
no finished run is lost, and every bad input is named before long work starts."""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import training.loop
from factorcl_hf import FactorCLModel
from factorcl_hf.data.image_text import load_image_text_dataset
from factorcl_hf.data.shapes import write_shapes_imagefolder
from factorcl_hf.integrity import CHECKSUM_FILE
from factorcl_hf.testing_utils import fallback_folder
from training.train import main, parse_args, train

REPO = Path(__file__).resolve().parent.parent
TINY_CLIP = ["--tiny_hidden_size", "16", "--tiny_num_layers", "1", "--tiny_projection_dim", "8"]
SMALL_RUN = ["--head_dim", "4", "--head_hidden_dim", "8", "--per_device_train_batch_size", "4",
             "--eval_split", "none", "--disable_tqdm", "--objective", "simclr"]
TINY = TINY_CLIP + SMALL_RUN


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_shapes_imagefolder(tmp_path_factory.mktemp("shapes") / "data", num_samples=20, seed=1)


def flags(data_dir, out, *extra):
    return ["--train_data", str(data_dir), "--output_dir", str(out), *TINY, *extra]


@pytest.fixture(scope="module")
def checkpointed_run(data_dir, tmp_path_factory):
    """A run of 2 steps with a checkpoint after each, kept pristine (tests copy it)."""
    out = tmp_path_factory.mktemp("checkpointed") / "run"
    train(parse_args(flags(data_dir, out, "--max_train_steps", "2", "--checkpointing_steps", "1")))
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


class WritesMarker:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_hold_no_pickled_training_state(checkpointed_run):
    step = checkpointed_run / "checkpoints" / "step_2"
    assert json.loads((step / "train_state.json").read_text()) == {
        "step": 2, "per_device_train_batch_size": 4, "num_processes": 1, "gradient_accumulation_steps": 1}
    assert not list(step.glob("custom_checkpoint_*"))
    listed = {line.split("  ")[1] for line in (step / CHECKSUM_FILE).read_text().splitlines()}
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "train_state.json"} <= listed


@pytest.mark.parametrize("planted", ["custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"])
def test_a_planted_pickle_never_runs_on_resume(data_dir, checkpointed_run, tmp_path, planted):
    out = copy_run(checkpointed_run, tmp_path)
    step = out / "checkpoints" / "step_2"
    marker = tmp_path / "marker"
    (step / planted).write_bytes(pickle.dumps({"state": WritesMarker(marker)}, protocol=2))
    # The attacker also rewrites (here: drops) the checksum file, or the damage is caught by it.
    (step / CHECKSUM_FILE).unlink()
    resume = flags(data_dir, out, "--max_train_steps", "3", "--resume_from_checkpoint", "latest")
    if planted == "random_states_0.pkl":
        # accelerate skips RNG states it cannot load (weights_only=True refuses them): resume goes on.
        assert train(parse_args(resume)).results["steps"] == 3
    else:
        with pytest.raises(ValueError, match=f"checkpoint '{step}'") as error:
            train(parse_args(resume))
        assert planted.startswith("custom") == ("never loaded" in str(error.value))
    assert not marker.exists(), "code from the checkpoint ran"


def test_no_weights_only_false_in_the_package_or_training():
    """Nothing the package or the training script runs loads a pickle without weights_only."""
    found = [f"{path.relative_to(REPO)}: {line.strip()}" for folder in ("factorcl_hf", "training")
             for path in (REPO / folder).rglob("*.py") for line in path.read_text().splitlines()
             if "weights_only=False" in line.replace(" ", "") or "register_for_checkpointing" in line]
    assert not found, found


def test_a_damaged_or_truncated_checkpoint_is_named(data_dir, checkpointed_run, tmp_path):
    out = copy_run(checkpointed_run, tmp_path)
    step = out / "checkpoints" / "step_2"
    optimizer = step / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    resume = flags(data_dir, out, "--max_train_steps", "3", "--resume_from_checkpoint", str(step))
    with pytest.raises(ValueError, match=r"optimizer\.bin is damaged"):
        train(parse_args(resume))
    (step / CHECKSUM_FILE).unlink()
    with pytest.raises(ValueError, match=f"checkpoint '{step}' cannot be loaded"):
        train(parse_args(resume))


def test_output_paths_are_checked_before_training(data_dir, tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(training.loop, "build_data", no_training)
    existing_file = tmp_path / "out"
    existing_file.write_text("")
    with pytest.raises(ValueError, match=f"`output_dir` '{existing_file}' exists and is not a directory"):
        train(parse_args(flags(data_dir, existing_file, "--max_train_steps", "1")))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model").write_text("")
    with pytest.raises(ValueError, match=f"'{tmp_path / 'run' / 'model'}' exists and is not a directory"):
        train(parse_args(flags(data_dir, tmp_path / "run", "--max_train_steps", "1")))
    with pytest.raises(ValueError, match="`resume_from_checkpoint` '/nowhere/step_3' is not a checkpoint folder"):
        train(parse_args(flags(data_dir, tmp_path / "r2", "--resume_from_checkpoint", "/nowhere/step_3")))


def test_a_failed_final_save_leaves_the_trained_model_at_a_named_path(data_dir, tmp_path, monkeypatch):
    real_save = training.loop.save_pretrained_atomically

    def disk_full_in_output_dir(model, processor, target, card=None):
        if Path(target).parent == tmp_path / "run":
            raise OSError(28, "No space left on device")
        return real_save(model, processor, target, card=card)

    monkeypatch.setattr(training.loop, "save_pretrained_atomically", disk_full_in_output_dir)
    with pytest.raises(OSError, match="the trained model was saved to '([^']+)' instead") as error:
        train(parse_args(flags(data_dir, tmp_path / "run", "--max_train_steps", "1")))
    with fallback_folder(error.value) as fallback:
        assert FactorCLModel.from_pretrained(fallback).config.objective == "simclr"


@pytest.mark.parametrize("option,value,minimum", [
    ("max_train_steps", "0", 1), ("num_train_epochs", "0", 1), ("gradient_accumulation_steps", "0", 1),
    ("per_device_eval_batch_size", "0", 1), ("tiny_projection_dim", "-3", 1), ("checkpoints_total_limit", "0", 1),
    ("seed", "-1", 0),
])
def test_zero_steps_and_zero_sizes_are_errors(option, value, minimum):
    with pytest.raises(ValueError, match=f"`{option}` must be >= {minimum}, got {value}"):
        parse_args([f"--{option}", value])


def test_push_to_hub_without_a_repo_id_fails_before_training():
    with pytest.raises(ValueError, match="`hub_model_id` .* is required with `push_to_hub`"):
        parse_args(["--push_to_hub"])


def test_divergence_stops_at_the_step_names_the_last_checkpoint_and_saves_nothing(data_dir, tmp_path):
    out = tmp_path / "run"
    run = flags(data_dir, out, "--max_train_steps", "4", "--checkpointing_steps", "1", "--learning_rate", "1e30",
                "--max_grad_norm", "0")
    with pytest.raises(training.loop.TrainingDivergedError, match=r"diverged at optimizer step (\d+)") as error:
        train(parse_args(run))
    message = str(error.value)
    step = int(message.split("optimizer step ")[1].split(":")[0])
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("step_*")) if (out / "checkpoints").exists() else []
    if checkpoints:
        assert f"last good checkpoint is '{out / 'checkpoints' / checkpoints[-1]}'" in message
        assert checkpoints[-1] == f"step_{step - 1}"
    else:
        assert "there is no checkpoint" in message
    assert not (out / "model").exists(), "diverged weights were saved"
    for checkpoint in checkpoints:
        weights = load_file(out / "checkpoints" / checkpoint / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values()), checkpoint


# ------------------------------------------------------------------------------ data
def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused_before_the_first_step(data_dir, tmp_path,
                                                                                         monkeypatch):
    """The model checks token ids only with FACTORCL_DEBUG (a device sync per step): the
    training collator checks each batch against the model's vocabulary, so a --clip_model folder
    whose tokenizer does not fit its model stops the run before any optimizer step."""
    from transformers import CLIPModel

    from factorcl_hf.offline import build_caption_tokenizer, special_token_ids, tiny_clip_config, tiny_clip_processor

    monkeypatch.delenv("FACTORCL_DEBUG", raising=False)
    rows = (data_dir / "train" / "metadata.jsonl").read_text().splitlines()
    tokenizer = build_caption_tokenizer([json.loads(row)["caption"] for row in rows])
    vocab = len(tokenizer) - 5
    ids = {name: min(value, vocab - 1) for name, value in special_token_ids(tokenizer).items()}
    clip = tmp_path / "clip"
    CLIPModel(tiny_clip_config(vocab, **ids, hidden_size=16, num_layers=1, projection_dim=8)).save_pretrained(clip)
    tiny_clip_processor(tokenizer, 32).save_pretrained(clip)
    steps = []
    monkeypatch.setattr(training.loop, "training_step", lambda *args, **kwargs: steps.append(1))
    with pytest.raises(ValueError, match=f"`input_ids` holds token id \\d+, outside this model's vocabulary \\[0, {vocab - 1}\\]"):
        train(parse_args(["--train_data", str(data_dir), "--output_dir", str(tmp_path / "out"), *SMALL_RUN,
                          "--clip_model", str(clip), "--max_train_steps", "1"]))
    assert not steps


def image_rows(folder: Path, rows: int) -> list[str]:
    names = []
    for i in range(rows):
        name = f"{i}.png"
        Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(folder / name)
        names.append(name)
    return names


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "".join(row + "\n" for row in rows))
    return path


@pytest.mark.parametrize("labels,named", [
    (["0", "1", "0.7", "1"], "row 2 of column 'label' (`label_column`) is 0.7, not an integer"),
    (["0", "1", "", "1"], "row 2 of column 'label' (`label_column`) is None, a missing label"),
    (["0", "-1", "0", "1"], "row 1 of column 'label' (`label_column`) is -1, negative"),
])
def test_labels_that_are_not_class_ids_are_named(tmp_path, labels, named):
    names = image_rows(tmp_path, 4)
    csv = write_csv(tmp_path / "d.csv", "image,caption,label",
                    [f"{n},a caption {i},{label}" for i, (n, label) in enumerate(zip(names, labels))])
    with pytest.raises(ValueError) as error:
        load_image_text_dataset(csv, label_column="label")
    assert named in str(error.value) and str(csv) in str(error.value)


def test_float_labels_fail_the_training_run_before_it_starts(tmp_path):
    names = image_rows(tmp_path, 8)
    rows = [{"image": n, "caption": f"caption {i}", "label": 0.7 if i == 5 else i % 2} for i, n in enumerate(names)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="row 5 of column 'label' .* is 0.7, not an integer"):
        train(parse_args(["--train_data", str(tmp_path / "d.jsonl"), "--output_dir", str(tmp_path / "o"), *TINY,
                          "--label_column", "label", "--objective", "factorcl_sup", "--max_train_steps", "1"]))


def test_an_empty_caption_is_named_by_row_and_column(tmp_path):
    names = image_rows(tmp_path, 3)
    csv = write_csv(tmp_path / "d.csv", "image,text", [f"{names[0]},one", f"{names[1]},", f"{names[2]},three"])
    with pytest.raises(ValueError, match=r"row 1 of column 'text' \(`caption_column`\) is empty"):
        load_image_text_dataset(csv, caption_column="text")


@pytest.mark.parametrize("content", ["", "image,caption\n", "\n\n"])
def test_an_empty_csv_is_named(tmp_path, content):
    csv = tmp_path / "empty.csv"
    csv.write_text(content)
    with pytest.raises(ValueError, match=f"data file '{csv}' (is empty|cannot be read as csv: it is empty)"):
        load_image_text_dataset(csv)


def test_a_non_finite_loss_names_the_step(tmp_path):
    from types import SimpleNamespace

    args = parse_args(["--output_dir", str(tmp_path)])
    training.loop.check_loss_is_finite(args, SimpleNamespace(num_processes=1), torch.tensor(2.5), step=7)
    with pytest.raises(training.loop.TrainingDivergedError,
                       match=r"diverged at optimizer step 7: the loss is \[inf\].*no checkpoint to resume from"):
        training.loop.check_loss_is_finite(args, SimpleNamespace(num_processes=1), torch.tensor(float("inf")), step=7)


def test_push_to_hub_is_checked_before_training_and_a_late_failure_ends_in_one_line(data_dir, tmp_path, monkeypatch,
                                                                                     capsys):
    """Issue 26, item 3: an unreachable Hub (here: offline mode) stops the run before any work;
    a push that fails after training leaves the saved model, the printed results and one final
    line saying both, exit status 1."""
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    push = ["--push_to_hub", "--hub_model_id", "someone/x", "--max_train_steps", "1"]
    with monkeypatch.context() as patched:
        patched.setattr(training.loop, "build_data", no_training)
        with pytest.raises(ValueError, match="--push_to_hub 'someone/x': the Hub cannot be reached because offline mode"):
            train(parse_args(flags(data_dir, tmp_path / "offline", *push)))

    def refused(*args, **kwargs):
        raise RuntimeError("The Hugging Face Hub refused the push to 'someone/x': 403 Forbidden")

    monkeypatch.setattr(training.loop, "check_push_access", lambda repo_id: "someone")
    monkeypatch.setattr(training.loop, "push_to_hub", refused)
    out = tmp_path / "late"
    assert main(flags(data_dir, out, *push)) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["push_error"].endswith("403 Forbidden")
    assert captured.err.strip().splitlines()[-1] == (
        f"factorcl-train: the model is saved in {out / 'model'}, but the push to the Hub failed (The Hugging Face "
        "Hub refused the push to 'someone/x': 403 Forbidden)")
    assert FactorCLModel.from_pretrained(out / "model").config.objective == "simclr"


def test_locking_a_tower_of_the_random_tiny_clip_warns(data_dir, tmp_path, caplog):
    """Issue 26, item 7: --lock_image without --clip_model freezes random weights: said."""
    with caplog.at_level("WARNING", logger="factorcl.train"):
        train(parse_args(flags(data_dir, tmp_path / "out", "--max_train_steps", "1", "--lock_image")))
    assert "--lock_image without --clip_model freezes the image tower of a randomly initialised tiny CLIP" in caplog.text
