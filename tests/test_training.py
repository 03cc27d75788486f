"""The training script end to end on tiny data: multi-process, resume, one backbone call
per step, bad inputs."""

import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPModel

from factorcl_hf import FactorCLConfig
from factorcl_hf.configuration_factorcl import OBJECTIVE_REGISTRY
from factorcl_hf.data.image_text import load_image_text_dataset
from factorcl_hf.data.shapes import write_shapes_imagefolder
from factorcl_hf.estimators import CosineCritic, negative_log_weights
from factorcl_hf.objectives import ClosedFormFactorCLObjective, ContrastiveObjective, FactorCLObjective, build_objective
from training import loop as training_loop
from training.train import main, parse_args, run, train

REPO = Path(__file__).resolve().parent.parent
TINY = ["--tiny_hidden_size", "32", "--tiny_num_layers", "1", "--tiny_projection_dim", "16", "--head_dim", "8",
        "--head_hidden_dim", "16", "--per_device_train_batch_size", "8", "--eval_split", "none", "--disable_tqdm",
        "--learning_rate", "1e-3", "--logit_temperature", "0.07"]
# The objectives with learned critics take their size; the baselines refuse it.
CRITICS = ["--critic_hidden_dim", "16"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_shapes_imagefolder(tmp_path_factory.mktemp("shapes") / "data", num_samples=70, seed=1)


def run_flags(data_dir, out, *extra):
    objective = extra[extra.index("--objective") + 1] if "--objective" in extra else "factorcl_ssl"
    critics = CRITICS if objective in OBJECTIVE_REGISTRY and OBJECTIVE_REGISTRY[objective].six_bounds else []
    return ["--train_data", str(data_dir), "--label_column", "label", "--output_dir", str(out), *TINY, *critics, *extra]


def test_one_default_per_option():
    """The training arguments, the model config and the objective classes agree on the
    default of every option they share (the objective names the temperature `temperature`)."""
    args, config = parse_args([]), FactorCLConfig()
    shared = [name for name in FactorCLConfig.__annotations__ if hasattr(args, name)]
    assert {"objective", "head_dim", "head_hidden_dim", "critic_hidden_dim", "alignment_critic_type",
            "logit_temperature"} <= set(shared)
    assert not {"club_critic_steps", "critic_learning_rate"} & set(FactorCLConfig.__annotations__), "training options"
    for name in shared:
        assert getattr(args, name) == getattr(config, name), name
    for cls in (ContrastiveObjective, FactorCLObjective, ClosedFormFactorCLObjective):
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            config_name = {"temperature": "logit_temperature"}.get(name, name)
            if parameter.default is not parameter.empty and config_name in FactorCLConfig.__annotations__:
                assert parameter.default == getattr(config, config_name), f"{cls.__name__}.{name}"
    objective = build_objective(config.objective, (16, 16))
    assert (objective.head_dim, objective.temperature) == (config.head_dim, config.logit_temperature)
    assert isinstance(objective.alignment_critic, CosineCritic) and config.alignment_critic_type == "cosine"
    assert objective.alignment_critic.temperature == config.logit_temperature
    per_term = build_objective(config.objective, (16, 16), estimators="tracked")
    assert per_term.club_unique.critic.hidden_dim == config.critic_hidden_dim


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(data_dir, tmp_path):
    # 56 training rows / batch 8 = 7 steps per epoch: step 3 is mid-epoch, step 9 in epoch 2.
    flags = ["--objective", "factorcl_ssl", "--max_train_steps", "9", "--checkpointing_steps", "3",
             "--checkpoints_total_limit", "5", "--num_warmup_steps", "2"]
    full = train(parse_args(run_flags(data_dir, tmp_path / "full", *flags)))
    assert full.results["steps"] == 9
    # "Stop" after step 3: a second run starts from that checkpoint only.
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    os.rename(tmp_path / "full" / "checkpoints" / "step_3", resumed_dir / "checkpoints" / "step_3")
    train(parse_args(run_flags(data_dir, resumed_dir, *flags, "--resume_from_checkpoint", "latest")))
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(resumed_dir / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert diff <= 1e-6, f"resumed run differs from the uninterrupted one by {diff}"
    # And training really moved the weights (the comparison is not vacuous).
    first = train(parse_args(run_flags(data_dir, tmp_path / "short", "--objective", "factorcl_ssl", "--max_train_steps", "1")))
    c = load_file(tmp_path / "short" / "model" / "model.safetensors")
    assert max((a[k].double() - c[k].double()).abs().max().item() for k in a) > 1e-4
    assert first.results["steps"] == 1


def test_backbone_runs_once_per_step(data_dir, tmp_path, monkeypatch):
    calls = {"image": 0, "text": 0}
    original_image, original_text = CLIPModel.get_image_features, CLIPModel.get_text_features

    def count_image(self, *args, **kwargs):
        calls["image"] += 1
        return original_image(self, *args, **kwargs)

    def count_text(self, *args, **kwargs):
        calls["text"] += 1
        return original_text(self, *args, **kwargs)

    monkeypatch.setattr(CLIPModel, "get_image_features", count_image)
    monkeypatch.setattr(CLIPModel, "get_text_features", count_text)
    # The per-term layout's extra CLUB-critic steps reuse the step's features.
    train(parse_args(run_flags(data_dir, tmp_path / "tracked", "--objective", "factorcl_ssl", "--estimators", "tracked",
                               "--max_train_steps", "3", "--club_critic_steps", "3")))
    assert calls == {"image": 3, "text": 3}
    # The closed-form layout embeds the training rows once more, after training, to fit the
    # factorization: one batch of each modality here (56 rows <= the eval batch size).
    calls.update(image=0, text=0)
    run = train(parse_args(run_flags(data_dir, tmp_path / "closed_form", "--objective", "factorcl_ssl", "--max_train_steps", "3")))
    batches = -(-run.results["factorization_fit"]["rows"] // parse_args(run_flags(data_dir, tmp_path)).per_device_eval_batch_size)
    assert calls == {"image": 3 + batches, "text": 3 + batches}


def test_logged_records_are_means_over_each_logging_window(data_dir, tmp_path):
    """Per-step records (--logging_steps 1) against windows of 2: the window record is the
    mean of its steps, and the last, shorter window is logged too."""
    def log_of(name, logging_steps):
        out = tmp_path / name
        train(parse_args(run_flags(data_dir, out, "--objective", "factorcl_sup", "--max_train_steps", "3",
                                   "--logging_steps", str(logging_steps))))
        return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]

    per_step, windows = log_of("every_step", 1), log_of("every_2", 2)
    assert [r["step"] for r in per_step] == [1, 2, 3] and [r["step"] for r in windows] == [2, 3]
    assert {"loss", "shared_nce", "unique_club", "club_critics_loss", "lr"} <= windows[0].keys()
    for key in ("loss", "shared_nce", "unique_club"):
        assert windows[0][key] == pytest.approx((per_step[0][key] + per_step[1][key]) / 2, rel=1e-5, abs=1e-6)
        assert windows[1][key] == pytest.approx(per_step[2][key], rel=1e-5, abs=1e-6)


def test_club_critic_check_reports_each_club_term(data_dir, tmp_path, monkeypatch):
    seen = {}
    report = training_loop.club_critic_report

    def spy(estimators, train_inputs, test_inputs, batch_size, *args, **kwargs):
        seen.update(estimators=estimators, train=train_inputs, test=test_inputs, batch_size=batch_size)
        return report(estimators, train_inputs, test_inputs, batch_size, *args, **kwargs)

    monkeypatch.setattr(training_loop, "club_critic_report", spy)
    flags = run_flags(data_dir, tmp_path, "--objective", "factorcl_ssl", "--estimators", "tracked", "--max_train_steps", "2",
                      "--eval_split", "test", "--club_critic_check_steps", "5")
    results = run(flags)
    check = results["club_critic_check"]
    assert set(check) == {"shared_cond", "unique"}
    assert all(set(v) == {"trained", "refit"} for v in check.values())
    # InfoNCE of batches of 8 never exceeds log 8.
    assert all(value <= math.log(8) + 1e-6 for v in check.values() for value in v.values())
    assert json.loads((tmp_path / "results.json").read_text())["club_critic_check"] == check
    # The critic inputs: every full batch of 8 of each split, in order.
    splits = load_image_text_dataset(data_dir, "image", "caption", "label")
    assert seen["batch_size"] == 8
    for key in check:
        assert len(seen["train"][key][0]) == len(splits["train"]) // 8 * 8
        assert len(seen["test"][key][0]) == len(splits["test"]) // 8 * 8
    # "trained": the InfoNCE of each term's own critic on the test inputs, written out per batch
    # (mean_i of -log sum_j w_ij exp(S_ij - S_ii), w_ij = 1/8 for uniform negatives).
    for key, estimator in seen["estimators"].items():
        x, y, *condition = seen["test"][key]
        values = []
        for start in range(0, len(x), 8):
            rows = slice(start, start + 8)
            with torch.no_grad():
                scores = estimator.critic(x[rows], y[rows]).double()
            if estimator.negatives is None:
                log_weights = torch.full_like(scores, -math.log(8))
            else:
                log_weights = negative_log_weights(estimator.negatives, condition[0][rows]).double()
            values.append(-(scores - scores.diagonal()[:, None] + log_weights).logsumexp(dim=1).mean().item())
        assert check[key]["trained"] == pytest.approx(sum(values) / len(values), abs=1e-6), key


@pytest.mark.parametrize("objective", ["factorcl_sup", "simclr", "cross_self"])
def test_objectives_train_evaluate_save_and_reload(data_dir, tmp_path, objective):
    flags = run_flags(data_dir, tmp_path, "--objective", objective, "--max_train_steps", "2", "--eval_split", "test",
                      "--retrieval_match_columns", "shape", "size")
    results = run(flags)
    assert {"mean_R@1", "mean_R@5", "match_mean_R@1", "factorized_accuracy", "backbone_accuracy"} <= results.keys()
    assert results["match_mean_R@1"] >= results["mean_R@1"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["steps"] == 2
    from transformers import AutoModel, AutoProcessor

    import factorcl_hf  # noqa: F401 - registers the Auto classes

    model = AutoModel.from_pretrained(tmp_path / "model")
    AutoProcessor.from_pretrained(tmp_path / "model")
    assert model.config.objective == objective
    assert not list(tmp_path.glob("model-*")) and not list(tmp_path.glob(".model-*")), "staging folders left behind"
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "model" / "README.md")
    assert card.data.library_name == "transformers"
    reported = {m["name"]: m["value"] for r in card.data.to_dict()["model-index"][0]["results"] for m in r["metrics"]}
    # Every metric says how many evaluation items it was measured on.
    assert reported["factorized_accuracy (14 items)"] == pytest.approx(results["factorized_accuracy"])
    assert all(name.endswith("(14 items)") for name in reported), reported


@pytest.mark.slow
def test_two_processes_see_different_data(data_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "training.train", *run_flags(data_dir, tmp_path, "--objective", "factorcl_sup",
                                                  "--max_train_steps", "3", "--save_seen_rows")]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # One process reports: a single results block, the main process's (with the evaluation).
    assert done.stdout.count('"objective"') == 1, done.stdout
    assert json.loads(done.stdout[done.stdout.index("{"):])["steps"] == 3
    seen = [set(json.loads((tmp_path / f"seen_rows.rank{r}.json").read_text())) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 3 * 8
    assert not seen[0] & seen[1], "both processes trained on the same rows"
    assert (tmp_path / "model" / "model.safetensors").exists()


@pytest.mark.slow
def test_console_script_exits_0_and_prints_the_results_once(data_dir, tmp_path):
    script = Path(sys.executable).parent / "factorcl-train"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "training.train"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    flags = run_flags(data_dir, tmp_path, "--objective", "simclr", "--max_train_steps", "1", "--checkpointing_steps", "1")
    done = subprocess.run([*command, *flags], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["steps"] == 1, done.stdout
    # Quiet: no library bars ("Downloading data", "Writing model shards"), no accelerate INFO
    # line per checkpoint file, no warnings; only the run's own lines, the last one saying
    # where the model is.
    model_dir = tmp_path / "model"
    assert done.stderr.strip().splitlines() == [
        "Training simclr on 56 rows: 1 steps (1 epochs), 1 process(es)", f"Saved the trained model to {model_dir}",
        f"factorcl-train: done: the model is saved in {model_dir}"], done.stderr
    assert main(run_flags(data_dir, tmp_path / "in_process", "--objective", "simclr", "--max_train_steps", "1")) == 0


def shapes_table(data_dir, path, split_column=True, splits=("train", "test")):
    """The shapes imagefolder as one CSV/JSONL file: string labels (the shape's name), image
    paths relative to the file (the images copied beside it: paths out of a data file's
    folder are refused), and (optionally) a ``split`` column."""
    import csv
    import shutil

    images = path.parent / "images"
    shutil.copytree(data_dir, images, dirs_exist_ok=True)
    rows = []
    for split in splits:
        for line in (Path(data_dir) / split / "metadata.jsonl").read_text().splitlines():
            meta = json.loads(line)
            row = {"image": f"images/{split}/{meta['file_name']}", "caption": meta["caption"], "shape": meta["shape"]}
            rows.append({**row, "split": split} if split_column else row)
    if path.suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_string_labels_and_the_csv_split_column(data_dir, tmp_path):
    """String labels train a supervised objective, become id2label/label2id in the saved
    config and card, and the CSV's own test split gives the metrics."""
    table = shapes_table(data_dir, tmp_path / "shapes.csv")
    flags = ["--train_data", str(table), "--label_column", "shape", "--output_dir", str(tmp_path / "out"), *TINY,
             *CRITICS, "--objective", "factorcl_sup", "--max_train_steps", "1", "--eval_split", "test"]
    results = run(flags)
    assert {"mean_R@1", "factorized_accuracy"} <= results.keys()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tmp_path / "out" / "model")
    assert config.id2label == {0: "circle", 1: "cross", 2: "square", 3: "triangle"}
    assert config.label2id == {"circle": 0, "cross": 1, "square": 2, "triangle": 3}
    card = (tmp_path / "out" / "model" / "README.md").read_text()
    assert "`circle`, `cross`, `square`, `triangle`" in card
    assert 'candidate_labels=["circle", "cross", "square", "triangle"]' in card
    check_card_is_hub_ready(tmp_path / "out" / "model", results)


def check_card_is_hub_ready(model_dir, results):
    """The saved card validates, reports the run's metrics under the names the evaluation CLI
    uses (with the number of items), holds no local path, and its first snippet runs, without
    warnings, against the saved folder (named in place of the card's placeholder)."""
    import warnings

    from huggingface_hub import ModelCard
    from PIL import Image

    from factorcl_hf.hub import validate_model_card

    card = ModelCard.load(model_dir / "README.md")
    validate_model_card(card)
    assert card.data.license == "apache-2.0"
    reported = {r.metric_name.split(" (")[0]: (r.metric_type, r.metric_value) for r in card.data.eval_results}
    assert reported["image_to_text_R@1"] == ("recall", pytest.approx(results["image_to_text_R@1"]))
    assert reported["factorized_accuracy"] == ("accuracy", pytest.approx(results["factorized_accuracy"]))
    assert card.text.count("conditioned on the labels") == 1, "the objective is described once"
    assert str(model_dir.parent.parent) not in str(card), "the card holds a local path"
    snippet = card.text.split("```python\n")[1].split("```")[0]
    assert 'AutoModel.from_pretrained("path/to/model")' in snippet
    snippet = snippet.replace("path/to/model", str(model_dir.resolve()))
    Image.new("RGB", (40, 40), "red").save(model_dir.parent / "photo.jpg")
    cwd = os.getcwd()
    os.chdir(model_dir.parent)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            namespace = {}
            exec(snippet, namespace)
    finally:
        os.chdir(cwd)
    assert namespace["probs"].shape == (1, 2)


def test_eval_data_eval_fraction_and_the_no_evaluation_warning(data_dir, tmp_path, caplog):
    train_file = shapes_table(data_dir, tmp_path / "train.jsonl", split_column=False, splits=("train",))
    eval_file = shapes_table(data_dir, tmp_path / "eval.jsonl", split_column=False, splits=("test",))
    base = ["--train_data", str(train_file), "--label_column", "shape", *TINY, "--objective", "simclr",
            "--max_train_steps", "1", "--eval_split", "test"]
    with caplog.at_level("WARNING"):
        silent = run([*base, "--output_dir", str(tmp_path / "none")])
    assert "mean_R@1" not in silent and "--eval_fraction" in caplog.text
    held_out = train(parse_args([*base, "--output_dir", str(tmp_path / "fraction"), "--eval_fraction", "0.25"]))
    assert {"mean_R@1", "factorized_accuracy"} <= held_out.results.keys()
    assert len(held_out.model.config.id2label) == 4
    separate = run([*base, "--output_dir", str(tmp_path / "separate"), "--eval_data", str(eval_file)])
    assert {"mean_R@1", "factorized_accuracy"} <= separate.keys()
    card = (tmp_path / "separate" / "model" / "README.md").read_text()
    # Local data is named by its kind, not by a file name posing as a Hub dataset id.
    assert "eval.jsonl" not in card and "| local json data | train | 14 |" in card
    with pytest.raises(ValueError, match="`eval_fraction` must be in \\(0, 1\\)"):
        parse_args([*base, "--eval_fraction", "1.5"])


def test_locked_towers_do_not_change(data_dir, tmp_path):
    """Both towers locked: only the heads and critics train. The image tower locked but its
    last layer: that layer (and the text tower) trains, the first layer does not."""
    def weights_after(name, *flags):
        out = tmp_path / name
        train(parse_args(run_flags(data_dir, out, "--objective", "factorcl_ssl", "--max_train_steps", "2",
                                   "--tiny_num_layers", "2", *flags)))
        return load_file(out / "model" / "model.safetensors")

    def changed(a, b, prefix):
        keys = [k for k in a if k.startswith(prefix)]
        assert keys, prefix
        return max((a[k] - b[k]).abs().max().item() for k in keys) > 1e-12

    # The same run with steps of ~1e-30: the initial weights, as the training run builds them.
    initial = weights_after("initial", "--learning_rate", "1e-30")
    frozen = weights_after("frozen", "--lock_image", "--lock_text")
    assert not changed(initial, frozen, "clip.vision_model.") and not changed(initial, frozen, "clip.text_model.")
    assert not changed(initial, frozen, "clip.visual_projection") and changed(initial, frozen, "objective.heads.")
    partial = weights_after("partial", "--lock_image", "--lock_image_unlocked_layers", "1")
    assert not changed(initial, partial, "clip.vision_model.encoder.layers.0.")
    assert not changed(initial, partial, "clip.vision_model.embeddings.")
    assert changed(initial, partial, "clip.vision_model.encoder.layers.1.") and changed(initial, partial, "clip.text_model.")
    with pytest.raises(ValueError, match="`lock_text_unlocked_layers` is 3, but the text tower has 2 layers"):
        weights_after("bad", "--lock_text", "--lock_text_unlocked_layers", "3")


def test_trackers_get_the_evaluation_metrics_and_backbone_options_pass_through(data_dir, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_ = train(parse_args(run_flags(data_dir, tmp_path, "--objective", "simclr", "--max_train_steps", "2",
                                      "--eval_split", "test", "--report_to", "tensorboard", "--logging_steps", "1",
                                      "--gradient_checkpointing")))
    clip = run_.model.clip
    assert getattr(clip, "is_activation_checkpointing", None) or clip.is_gradient_checkpointing
    events = {path.parent for path in (tmp_path / "logs").rglob("events.out.tfevents.*")}
    tags = {tag for folder in events for tag in EventAccumulator(str(folder)).Reload().Tags()["scalars"]}
    assert {"loss", "eval/image_to_text_R@1", "eval/mean_R@1", "eval/factorized_accuracy"} <= set(tags), tags
    with pytest.raises(ValueError, match="`report_to` names unknown tracker 'tensorbored'"):
        train(parse_args(run_flags(data_dir, tmp_path, "--report_to", "tensorboard,tensorbored")))
    from training import loop

    seen = {}

    def capture(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(loop, "Accelerator", capture)
    with pytest.raises(RuntimeError, match="stop"):
        loop.build_accelerator(parse_args(run_flags(data_dir, tmp_path, "--torch_compile", "--report_to", "all")))
    assert seen["dynamo_backend"] == "inductor" and seen["log_with"] == ["all"]


def parquet_shards(data_dir, out, num_shards=3):
    """The embedded dataset's training split as Parquet shards (images embedded), the layout
    of a large Hub dataset."""
    import datasets

    split = datasets.load_dataset("imagefolder", data_dir=str(data_dir), split="train")
    # The image bytes go into the shards (a path to the imagefolder would lead out of their folder).
    split = split.cast_column("image", datasets.Image(decode=False)).map(
        lambda row: {"image": {"bytes": Path(row["image"]["path"]).read_bytes(), "path": None}}
    ).cast_column("image", datasets.Image())
    out.mkdir(parents=True)
    for index in range(num_shards):
        split.shard(num_shards, index, contiguous=True).to_parquet(str(out / f"train-{index:05d}.parquet"))
    return out


def test_streaming_trains_like_the_map_style_run(data_dir, tmp_path):
    """The same Parquet shards, streamed or loaded: both runs train (the loss falls) to
    comparable losses, and the streamed one evaluates on --eval_data."""
    shards = parquet_shards(data_dir, tmp_path / "shards")
    flags = ["--train_data", str(shards), "--label_column", "label", *TINY, *CRITICS, "--objective", "factorcl_sup",
             "--max_train_steps", "6", "--logging_steps", "1", "--learning_rate", "3e-3"]

    def losses(name, *extra):
        run_ = train(parse_args([*flags, "--output_dir", str(tmp_path / name), *extra]))
        return run_, [r["loss"] for r in map(json.loads, (tmp_path / name / "train_log.jsonl").read_text().splitlines())]

    _, loaded = losses("loaded")
    streamed_run, streamed = losses("streamed", "--streaming", "--streaming_shuffle_buffer", "16",
                                    "--streaming_sample_rows", "24", "--eval_data", str(data_dir), "--eval_split", "test",
                                    "--num_labels", "4")
    assert len(loaded) == len(streamed) == 6
    for curve in (loaded, streamed):
        assert sum(curve[-2:]) < sum(curve[:2]), curve
    assert abs(streamed[-1] - loaded[-1]) < 0.5 * abs(loaded[0] - loaded[-1]) + 0.1, (loaded, streamed)
    assert {"image_to_text_R@1", "factorized_accuracy"} <= streamed_run.results.keys()
    assert streamed_run.results["skipped_undecodable_images"] == 0
    with pytest.raises(ValueError, match="--streaming needs `max_train_steps`"):
        parse_args([*flags[:-6], "--streaming"])


@pytest.mark.slow
def test_two_processes_stream_different_rows(data_dir, tmp_path):
    shards = parquet_shards(data_dir, tmp_path / "shards", num_shards=2)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "training.train",
               "--train_data", str(shards), "--output_dir", str(tmp_path / "out"), *TINY, "--objective", "simclr",
               "--max_train_steps", "2", "--streaming", "--streaming_sample_rows", "16", "--save_seen_rows"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [set(json.loads((tmp_path / "out" / f"seen_rows.rank{r}.json").read_text())) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 2 * 8 and not seen[0] & seen[1], seen


def test_bad_inputs(data_dir, tmp_path):
    with pytest.raises(ValueError, match="no column 'text' \\(`caption_column`\\)"):
        train(parse_args(run_flags(data_dir, tmp_path, "--caption_column", "text", "--max_train_steps", "1")))
    with pytest.raises(ValueError, match="`per_device_train_batch_size` must be >= 2"):
        train(parse_args(run_flags(data_dir, tmp_path, "--per_device_train_batch_size", "1")))
    with pytest.raises(ValueError, match="`club_critic_check_steps` must be >= 0"):
        train(parse_args(run_flags(data_dir, tmp_path, "--club_critic_check_steps", "-1")))
    with pytest.raises(ValueError, match="`logging_steps` must be >= 1"):
        train(parse_args(run_flags(data_dir, tmp_path, "--logging_steps", "0")))
    with pytest.raises(ValueError, match="`objective` must be one of"):
        train(parse_args(run_flags(data_dir, tmp_path, "--objective", "clip")))
    with pytest.raises(ValueError, match="unknown options \\['learning_rat'\\]"):
        config = tmp_path / "bad.yaml"
        config.write_text("learning_rat: 0.1\n")
        parse_args(["--config", str(config)])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        train(parse_args(run_flags(empty, tmp_path, "--max_train_steps", "1")))


def test_undecodable_images_are_skipped_and_counted(tmp_path):
    from PIL import Image

    rows = []
    for i in range(18):
        name = f"{i}.png"
        if i < 2:
            (tmp_path / name).write_bytes(b"this is not a png")
        else:
            Image.new("RGB", (32, 32), (i * 10, 0, 0)).save(tmp_path / name)
        rows.append({"image": name, "caption": f"a red square number {i}", "label": i % 2})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = train(parse_args(["--train_data", str(tmp_path / "train.jsonl"), "--output_dir", str(tmp_path / "out"),
                            *TINY, "--max_train_steps", "1", "--objective", "simclr"]))
    assert run.results["skipped_undecodable_images"] == 2
