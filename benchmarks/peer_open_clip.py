"""This package against open_clip on the same ViT CLIP, side by side: inference and training steps.

Both libraries hold *the same* randomly initialised CLIP: a transformers ``CLIPModel`` is built
from a ``CLIPConfig``, wrapped by ``FactorCLModel.from_clip`` (ours), and its weights are
converted once into an ``open_clip.model.CLIP`` built from an equivalent custom config
(:func:`open_clip_state_dict`). Before anything is timed, the image and text embeddings of both
(L2-normalized) must agree to 1e-4, and our CLIP loss must equal open_clip's ``ClipLoss`` on
the same embeddings; otherwise the script raises.

* **Inference**: ``FactorCLModel.get_image_features`` / ``get_text_features`` (the CLIP tower
  plus the objective's head; ``simclr`` model) against open_clip's ``encode_image`` /
  ``encode_text``: images/s and texts/s, ratio ours/open_clip (> 1: ours faster).
* **Training step** at batch B: ours is ``factorcl_hf.training_step.training_step`` (what
  ``training/train.py`` runs: forward with the loss, one backward of ``loss + critic_loss``,
  clipping, AdamW on ``parameter_groups``, the CLUB critics' Adam and their extra steps of the
  estimator preset) for ``simclr`` (the CLIP loss), ``factorcl_sup``, ``factorcl_ssl`` and
  ``cross_self``; open_clip's is its training loop's step: ``model(images, texts)``, its own
  ``open_clip.loss.ClipLoss``, backward, clipping, the same AdamW, the ``logit_scale`` clamp.
  Ratios are step times (> 1: ours slower) against open_clip's step and our ``simclr`` step.
  FactorCL-SSL and ``cross_self`` also encode the augmented views (2B inputs per tower).
* **Peak memory** of every timed call: ``benchmarks/_timing.py:peak_memory_bytes``.

Not the same work on both sides, by design: our models run the objective's projection head
on top of CLIP's projection (open_clip has none) and freeze CLIP's ``logit_scale`` (the
objective's temperature is used instead); ours takes an attention mask for padded captions,
open_clip's text tower has none. Captions are as long as the text context (open_clip adds its
whole positional table, so it only takes full-length token rows) and end with the end-of-text
id, the largest id in every row: open_clip pools text at the argmax of the ids, transformers'
CLIP at the first end-of-text id (the configs here make it the largest id of the vocabulary).

Shapes: ``tiny`` (the embedded demo's CLIP: 32 px images, 8 px patches, width 64, 2 layers;
heads and critics of training/configs/demo.yaml) and ``vit_b32`` (the ViT-B/32 architecture
at 224 px, 77 tokens; the paper's heads 512 → 128 and critics hidden 512).

Needs open_clip: ``pip install -e ".[bench]"`` (benchmarks/README.md). open_clip imports
torchvision at module import; where torchvision is not installed (it cannot be beside the CPU
torch wheel of this project) the few names it imports are stubbed for that import only
(benchmarks/_torchvision_stub.py): this benchmark never calls them (image transforms, a ResNet helper).

Run::

    python -m benchmarks.peer_open_clip --smoke
    python -m benchmarks.peer_open_clip --threads 1 2 --shapes tiny vit_b32 --json out/peer_open_clip.json
    python -m benchmarks.peer_open_clip --device cuda --autocast bfloat16 --shapes vit_b32
"""

from __future__ import annotations

import argparse
import math
import types
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from transformers import CLIPModel

from benchmarks._timing import add_run_arguments, peak_memory_bytes, time_side_by_side, write_json
from benchmarks._torchvision_stub import import_with_torchvision_stubbed
from benchmarks.objective_step import relative_difference
from benchmarks.train_step import make_batch
from factorcl_hf import FactorCLModel
from factorcl_hf.configuration_factorcl import ESTIMATOR_PRESETS, estimator_preset
from factorcl_hf.offline import tiny_clip_config, vit_b32_clip_config
from factorcl_hf.training_step import parameter_groups, training_step

SHAPES = ("tiny", "vit_b32")
DEFAULT_BATCH = {"tiny": 128, "vit_b32": 32}
SMOKE_BATCH = 8
OBJECTIVES = ("simclr", "factorcl_sup", "factorcl_ssl", "cross_self")
TRAIN_VARIANTS = ("open_clip",) + OBJECTIVES
INFERENCE_VARIANTS = ("ours.image", "open_clip.image", "ours.text", "open_clip.text")
# The heads and critics of each shape: the embedded demo's (training/configs/demo.yaml) and the paper's.
HEAD_OPTIONS = {
    "tiny": dict(head_dim=64, head_hidden_dim=256, critic_hidden_dim=256, logit_temperature=0.1),
    "vit_b32": dict(head_dim=128, head_hidden_dim=512, critic_hidden_dim=512, logit_temperature=0.07),
}
NUM_LABELS = 3
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.01  # training/arguments.py's default, on both sides
MAX_GRAD_NORM = 1.0  # training/arguments.py's default, on both sides
MAX_EMBEDDING_DIFF = 1e-4
MAX_LOSS_DIFF = 1e-5
INSTALL_HINT = 'pip install -e ".[bench]"'
NO_DEPS_HINT = 'pip install --no-deps "open-clip-torch>=2.24" ftfy'
MEMORY_FACTORY = "benchmarks.peer_open_clip:memory_workload"


# ------------------------------------------------------------------------ open_clip
def import_open_clip():
    """The ``open_clip`` module; exits with the install command when it is not installed."""
    try:
        return import_with_torchvision_stubbed("open_clip")
    except ModuleNotFoundError as error:
        if error.name != "open_clip":
            raise
        raise SystemExit(
            f"open_clip is not installed; this benchmark compares against it. Install the benchmark extra: "
            f"{INSTALL_HINT} (with the CPU torch wheel, where torchvision does not import: "
            f"{NO_DEPS_HINT}; benchmarks/README.md)"
        ) from error


def open_clip_model(open_clip, config):
    """An ``open_clip.model.CLIP`` of the same architecture as transformers' ``config`` (random init)."""
    vision, text = config.vision_config, config.text_config
    for tower in (vision, text):
        if tower.hidden_act != "quick_gelu" or tower.layer_norm_eps != 1e-5:
            raise ValueError(f"`config`: open_clip's CLIP uses quick_gelu and LayerNorm eps 1e-5, got "
                             f"{tower.hidden_act!r} and {tower.layer_norm_eps}")
    if text.eos_token_id != text.vocab_size - 1:
        raise ValueError(f"`config.text_config.eos_token_id` must be the largest id ({text.vocab_size - 1}): "
                         f"open_clip pools text at the argmax of the ids, got {text.eos_token_id}")
    vision_cfg = dict(layers=vision.num_hidden_layers, width=vision.hidden_size, patch_size=vision.patch_size,
                      head_width=vision.hidden_size // vision.num_attention_heads, image_size=vision.image_size,
                      mlp_ratio=vision.intermediate_size / vision.hidden_size)
    text_cfg = dict(context_length=text.max_position_embeddings, vocab_size=text.vocab_size, width=text.hidden_size,
                    heads=text.num_attention_heads, layers=text.num_hidden_layers,
                    mlp_ratio=text.intermediate_size / text.hidden_size)
    return open_clip.model.CLIP(config.projection_dim, vision_cfg, text_cfg, quick_gelu=True)


def _resblocks(hf: dict, hf_prefix: str, oc_prefix: str, num_layers: int) -> dict:
    state = {}
    for i in range(num_layers):
        src, dst = f"{hf_prefix}.encoder.layers.{i}.", f"{oc_prefix}.transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            # nn.MultiheadAttention holds q, k and v as one [3 * width, width] projection.
            state[dst + f"attn.in_proj_{kind}"] = torch.cat([hf[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for hf_name, oc_name in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                     ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                state[dst + f"{oc_name}.{kind}"] = hf[src + f"{hf_name}.{kind}"]
    return state


def open_clip_state_dict(clip: CLIPModel) -> dict[str, torch.Tensor]:
    """The weights of transformers' ``clip`` under open_clip's ``CLIP`` names (copies)."""
    hf = {name: tensor.detach().clone() for name, tensor in clip.state_dict().items()}
    config = clip.config
    state = {
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.proj": hf["visual_projection.weight"].T.contiguous(),  # open_clip computes x @ proj
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
        "text_projection": hf["text_projection.weight"].T.contiguous(),
        "logit_scale": hf["logit_scale"],
    }
    for hf_name, oc_name in (("vision_model.pre_layrnorm", "visual.ln_pre"), ("vision_model.post_layernorm", "visual.ln_post"),
                             ("text_model.final_layer_norm", "ln_final")):
        for kind in ("weight", "bias"):
            state[f"{oc_name}.{kind}"] = hf[f"{hf_name}.{kind}"]
    state.update(_resblocks(hf, "vision_model", "visual", config.vision_config.num_hidden_layers))
    state.update(_resblocks(hf, "text_model", "", config.text_config.num_hidden_layers))
    return {name.lstrip("."): tensor for name, tensor in state.items()}


def convert_to_open_clip(open_clip, clip: CLIPModel):
    """An open_clip ``CLIP`` holding ``clip``'s weights (every tensor of both is mapped: strict load)."""
    model = open_clip_model(open_clip, clip.config)
    model.load_state_dict(open_clip_state_dict(clip), strict=True)
    return model


# ------------------------------------------------------------------------- the case
def clip_config(shape: str):
    """transformers' ``CLIPConfig`` of ``shape``; end-of-text is the largest id (argmax pooling)."""
    if shape == "vit_b32":
        return vit_b32_clip_config()
    if shape != "tiny":
        raise ValueError(f"`shape` must be one of {SHAPES}, got {shape!r}")
    return tiny_clip_config(1000, bos_token_id=998, eos_token_id=999, pad_token_id=999, image_size=32, patch_size=8,
                            hidden_size=64, projection_dim=64, num_layers=2)


def build_case(shape: str, batch_size: int, device: str, objectives=OBJECTIVES, estimators: str | None = None,
               seed: int = 0) -> tuple[dict, object, dict]:
    """``(ours, open_clip_model, batch)``: one FactorCLModel per objective and open_clip's CLIP,
    all with the same CLIP weights, in train mode; the batch holds labels and augmented views."""
    open_clip = import_open_clip()
    torch.manual_seed(seed)
    clip = CLIPModel(clip_config(shape))
    ours = {}
    for objective in objectives:
        torch.manual_seed(seed)  # the same heads for a variant wherever it is built
        ours[objective] = FactorCLModel.from_clip(clip, objective=objective, num_labels=NUM_LABELS,
                                                  alignment_critic_type="cosine", estimators=estimators,
                                                  **HEAD_OPTIONS[shape]).to(device).train()
    reference = convert_to_open_clip(open_clip, clip).to(device).train()
    text_length = clip.config.text_config.max_position_embeddings
    batch = make_batch(types.SimpleNamespace(clip_config=clip.config), batch_size, text_length, device, seed)
    generator = torch.Generator().manual_seed(seed)
    batch["labels"] = torch.randint(0, NUM_LABELS, (batch_size,), generator=generator).to(device)
    return ours, reference, batch


def check_captions(text_config, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions of different lengths, each ending with end-of-text and padded with id 0 to the
    context length (open_clip's padding); the attention mask marks the caption."""
    generator = torch.Generator().manual_seed(seed)
    length, eos = text_config.max_position_embeddings, text_config.eos_token_id
    lengths = torch.randint(2, length + 1, (count,), generator=generator)
    ids = torch.randint(1, eos - 1, (count, length), generator=generator)
    positions = torch.arange(length)[None]
    ids = torch.where(positions < lengths[:, None] - 1, ids, 0)
    ids[torch.arange(count), lengths - 1] = eos
    return ids, (positions < lengths[:, None]).long()


@torch.no_grad()
def embedding_differences(ours: FactorCLModel, reference, pixel_values, input_ids, attention_mask) -> dict[str, float]:
    """Max |difference| of the L2-normalized CLIP embeddings (ours: ``backbone_embeds``)."""
    modes = (ours.training, reference.training)
    ours.eval(), reference.eval()
    try:
        pairs = {
            "image": (ours.get_image_features(pixel_values=pixel_values).backbone_embeds, reference.encode_image(pixel_values)),
            "text": (ours.get_text_features(input_ids=input_ids, attention_mask=attention_mask).backbone_embeds,
                     reference.encode_text(input_ids)),
        }
    finally:
        ours.train(modes[0]), reference.train(modes[1])
    return {name: (F.normalize(a.float(), dim=-1) - F.normalize(b.float(), dim=-1)).abs().max().item()
            for name, (a, b) in pairs.items()}


def check_embeddings(ours: FactorCLModel, reference, batch: dict, tolerance: float = MAX_EMBEDDING_DIFF) -> dict[str, float]:
    """Raise unless both libraries embed the batch's images and captions of every length alike."""
    text_config = ours.config.clip_config.text_config
    input_ids, attention_mask = (t.to(batch["pixel_values"].device) for t in check_captions(text_config, len(batch["input_ids"])))
    differences = embedding_differences(ours, reference, batch["pixel_values"], input_ids, attention_mask)
    wrong = {name: value for name, value in differences.items() if not value <= tolerance}
    if wrong:
        raise RuntimeError(f"open_clip and FactorCLModel embed differently: max |normalized difference| {wrong} > "
                           f"{tolerance}; the weight conversion (open_clip_state_dict) is wrong")
    return differences


@torch.no_grad()
def check_clip_loss(simclr: FactorCLModel, clip_loss, batch: dict, tolerance: float = MAX_LOSS_DIFF) -> float:
    """Our ``simclr`` loss is open_clip's ``ClipLoss`` on our embeddings at scale 1/temperature,
    minus log B (our InfoNCE is a bound on the MI); raise otherwise."""
    inputs = model_inputs(simclr, batch)
    loss = simclr(**inputs, return_loss=True).loss
    image = F.normalize(simclr.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output, dim=-1)
    text = F.normalize(simclr.get_text_features(input_ids=inputs["input_ids"],
                                                attention_mask=inputs["attention_mask"]).pooler_output, dim=-1)
    scale = torch.tensor(1.0 / simclr.config.logit_temperature, device=image.device)
    expected = clip_loss(image, text, scale) - math.log(len(image))
    difference = relative_difference(loss, expected)
    if not difference <= tolerance:
        raise RuntimeError(f"our simclr loss {loss.item():.6g} and open_clip's ClipLoss - log B {expected.item():.6g} "
                           f"differ (relative {difference:.3g} > {tolerance})")
    return difference


# ---------------------------------------------------------------------- the calls
def model_inputs(model: FactorCLModel, batch: dict) -> dict:
    """The batch fields ``model``'s objective uses (labels and augmented views only when used)."""
    keep = {"pixel_values", "input_ids", "attention_mask"}
    if model.config.is_supervised:
        keep.add("labels")
    if model.config.uses_augmented_views:
        keep |= {key for key in batch if key.startswith("augmented_")}
    return {key: value for key, value in batch.items() if key in keep}


def _autocast(device: str, autocast: str | None):
    dtype = getattr(torch, autocast) if autocast else None
    return (lambda: torch.autocast(torch.device(device).type, dtype=dtype)) if dtype else nullcontext


def _fused(device: str) -> dict:
    # Fused AdamW where torch has it, as training/loop.py's build_optimizers.
    return {"fused": True} if torch.device(device).type in ("cpu", "cuda") else {}


def ours_step(model: FactorCLModel, batch: dict, device: str, autocast: str | None):
    """One step of training/train.py: ``training_step`` with training/loop.py's optimizers."""
    game = estimator_preset(model.config.estimators, model.config.objective).club_game(LEARNING_RATE)
    optimizer = torch.optim.AdamW(parameter_groups(model, LEARNING_RATE, game["club_head_lr_scale"]),
                                  lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, **_fused(device))
    critic_params = model.club_critic_parameters()
    critic_optimizer = torch.optim.Adam(critic_params, lr=game["critic_learning_rate"], **_fused(device)) if critic_params else None
    inputs = {**model_inputs(model, batch), "return_loss": True}
    context = _autocast(device, autocast)

    def step():
        with context():
            training_step(model, inputs, optimizer, critic_optimizer, club_critic_steps=game["club_critic_steps"],
                          max_grad_norm=MAX_GRAD_NORM)

    return step


def open_clip_step(open_clip, model, batch: dict, device: str, autocast: str | None):
    """One step of open_clip's training loop (open_clip_train/train.py) with its ``ClipLoss``."""
    clip_loss = open_clip.loss.ClipLoss()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, **_fused(device))
    images, texts = batch["pixel_values"], batch["input_ids"]
    context = _autocast(device, autocast)

    def step():
        with context():
            image_features, text_features, logit_scale = model(images, texts)
            loss = clip_loss(image_features, text_features, logit_scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # as open_clip's loop does after each step

    return step


def inference_calls(ours: FactorCLModel, reference, batch: dict, device: str, autocast: str | None) -> dict:
    """Embedding calls of both libraries on the batch, without gradients (models in eval mode)."""
    pixel_values, input_ids, attention_mask = batch["pixel_values"], batch["input_ids"], batch["attention_mask"]
    context = _autocast(device, autocast)

    def run(fn):
        def call():
            with torch.no_grad(), context():
                return fn()
        return call

    return {
        "ours.image": run(lambda: ours.get_image_features(pixel_values=pixel_values)),
        "open_clip.image": run(lambda: reference.encode_image(pixel_values)),
        "ours.text": run(lambda: ours.get_text_features(input_ids=input_ids, attention_mask=attention_mask)),
        "open_clip.text": run(lambda: reference.encode_text(input_ids)),
    }


def memory_workload(shape: str, variant: str, batch_size: int, device: str = "cpu", autocast: str | None = None,
                    estimators: str | None = None, seed: int = 0):
    """Factory for :func:`benchmarks._timing.peak_memory_bytes`: builds the case, returns the call."""
    if variant not in TRAIN_VARIANTS + INFERENCE_VARIANTS:
        raise ValueError(f"`variant` must be one of {TRAIN_VARIANTS + INFERENCE_VARIANTS}, got {variant!r}")
    objectives = [variant] if variant in OBJECTIVES else ["simclr"]
    ours, reference, batch = build_case(shape, batch_size, device, objectives, estimators, seed)
    if variant in INFERENCE_VARIANTS:
        ours["simclr"].eval(), reference.eval()
        return inference_calls(ours["simclr"], reference, batch, device, autocast)[variant]
    if variant == "open_clip":
        return open_clip_step(import_open_clip(), reference, batch, device, autocast)
    return ours_step(ours[variant], batch, device, autocast)


# ------------------------------------------------------------------------- running
def benchmark_shape(shape: str, batch_size: int, repeats: int, device: str, autocast: str | None,
                    estimators: str | None = None, memory: bool = True) -> dict:
    """Check, then time inference and the training steps side by side (and their peak memory)."""
    open_clip = import_open_clip()
    ours, reference, batch = build_case(shape, batch_size, device, OBJECTIVES, estimators)
    differences = check_embeddings(ours["simclr"], reference, batch)
    loss_difference = check_clip_loss(ours["simclr"], open_clip.loss.ClipLoss(), batch)
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else None
    ours["simclr"].eval(), reference.eval()
    inference = time_side_by_side(inference_calls(ours["simclr"], reference, batch, device, autocast),
                                  repeats=repeats, synchronize=synchronize)
    ours["simclr"].train(), reference.train()
    steps = {"open_clip": open_clip_step(open_clip, reference, batch, device, autocast)}
    steps.update({objective: ours_step(model, batch, device, autocast) for objective, model in ours.items()})
    # A ViT-B/32 step lasts seconds on a CPU: the calibration call is the warm-up.
    timed = time_side_by_side(steps, repeats=repeats, warmup=0, min_sample_seconds=0.2, synchronize=synchronize)
    del ours, reference, steps  # the memory subprocesses build their own
    case = dict(shape=shape, batch_size=batch_size, device=device, autocast=autocast, estimators=estimators)
    peaks = {name: peak_memory_bytes(MEMORY_FACTORY, dict(case, variant=name), device) if memory else math.nan
             for name in TRAIN_VARIANTS + INFERENCE_VARIANTS}
    return summarize(shape, batch_size, differences, loss_difference, inference, timed, peaks)


def summarize(shape, batch_size, differences, loss_difference, inference, timed, peaks) -> dict:
    """One run's record: throughputs, ratios, peak MiB and the raw timing samples."""
    mib = {name: value / 2**20 for name, value in peaks.items()}
    record = {"shape": shape, "batch_size": batch_size, "threads": torch.get_num_threads(),
              "embedding_max_abs_diff": differences, "clip_loss_rel_diff": loss_difference, "inference": {}, "training": {}}
    for modality in ("image", "text"):
        ours_s, open_clip_s = inference[f"ours.{modality}"]["median_s"], inference[f"open_clip.{modality}"]["median_s"]
        record["inference"][modality] = {
            "ours_per_s": batch_size / ours_s, "open_clip_per_s": batch_size / open_clip_s,
            "throughput_ratio": open_clip_s / ours_s,  # ours/open_clip items per second
            "ours_peak_mib": mib[f"ours.{modality}"], "open_clip_peak_mib": mib[f"open_clip.{modality}"],
            "peak_vs_open_clip": mib[f"ours.{modality}"] / mib[f"open_clip.{modality}"] if peaks[f"open_clip.{modality}"] else math.nan,
            "samples_s": {side: inference[f"{side}.{modality}"]["samples_s"] for side in ("ours", "open_clip")},
        }
    for name in TRAIN_VARIANTS:
        seconds = timed[name]["median_s"]
        record["training"][name] = {
            "step_ms": seconds * 1e3, "time_vs_open_clip": seconds / timed["open_clip"]["median_s"],
            "time_vs_simclr": seconds / timed["simclr"]["median_s"], "peak_mib": mib[name],
            "peak_vs_open_clip": mib[name] / mib["open_clip"] if peaks["open_clip"] else math.nan,
            "samples_ms": [t * 1e3 for t in timed[name]["samples_s"]],
        }
    return record


def print_record(r: dict) -> None:
    d = r["embedding_max_abs_diff"]
    print(f"shape={r['shape']} B={r['batch_size']} threads={r['threads']}  max|Δ| normalized embeddings: "
          f"image {d['image']:.1e} text {d['text']:.1e}; CLIP loss rel Δ {r['clip_loss_rel_diff']:.1e}")
    print(f"{'inference':<13} {'ours/s':>10} {'open_clip/s':>12} {'ours/oc':>8} {'peak MiB ours':>14} {'oc':>8}")
    for modality, i in r["inference"].items():
        print(f"{modality + 's':<13} {i['ours_per_s']:>10.1f} {i['open_clip_per_s']:>12.1f} {i['throughput_ratio']:>7.2f}x "
              f"{i['ours_peak_mib']:>14.1f} {i['open_clip_peak_mib']:>8.1f}")
    print(f"{'train step':<13} {'ms':>10} {'/open_clip':>12} {'/simclr':>8} {'peak MiB':>14} {'/oc':>8}")
    for name, t in r["training"].items():
        print(f"{name:<13} {t['step_ms']:>10.1f} {t['time_vs_open_clip']:>11.2f}x {t['time_vs_simclr']:>7.2f}x "
              f"{t['peak_mib']:>14.1f} {t['peak_vs_open_clip']:>7.2f}x")
    print()


def print_summary(records: list[dict]) -> None:
    """Every run's ratios on one line each: throughput ours/open_clip, step time ours/open_clip."""
    header = f"{'shape':<8} {'B':>4} {'thr':>3} {'img/s':>6} {'txt/s':>6} " + " ".join(f"{n:>12}" for n in OBJECTIVES)
    print("ratios: inference throughput ours/open_clip; training step time ours/open_clip")
    print(header)
    for r in records:
        steps = " ".join(f"{r['training'][n]['time_vs_open_clip']:>11.2f}x" for n in OBJECTIVES)
        print(f"{r['shape']:<8} {r['batch_size']:>4} {r['threads']:>3} {r['inference']['image']['throughput_ratio']:>5.2f}x "
              f"{r['inference']['text']['throughput_ratio']:>5.2f}x {steps}")


def parse_args(argv=None) -> argparse.Namespace:
    # "resolve": --threads takes several counts here (add_run_arguments' takes one).
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], conflict_handler="resolve")
    add_run_arguments(parser)
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="torch CPU thread counts, one run each")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    parser.add_argument("--batch-size", type=int, default=None, help="default: tiny 128, vit_b32 32 (smoke: 8)")
    parser.add_argument("--repeats", type=int, default=None, help="timing rounds (default 3, smoke 1)")
    parser.add_argument("--estimators", choices=list(ESTIMATOR_PRESETS), default=None,
                        help="FactorCL's estimator preset (default: the package's, as training/train.py)")
    parser.add_argument("--smoke", action="store_true", help="tiny shape only, batch 8, one round: seconds")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--autocast", choices=["bfloat16", "float16"], default=None, help="mixed precision")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    import_open_clip()  # before any work: the install command if it is missing
    shapes = ["tiny"] if args.smoke else args.shapes
    repeats = args.repeats or (1 if args.smoke else 3)
    records = []
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        for shape in shapes:
            batch_size = args.batch_size or (SMOKE_BATCH if args.smoke else DEFAULT_BATCH[shape])
            record = benchmark_shape(shape, batch_size, repeats, args.device, args.autocast, args.estimators,
                                     memory=not args.no_memory)
            print_record(record)
            records.append(record)
    print_summary(records)
    open_clip = import_open_clip()
    meta = {"device": args.device, "torch": torch.__version__, "open_clip": open_clip.__version__,
            "autocast": args.autocast, "estimators": args.estimators or "package default", "repeats": repeats,
            "learning_rate": LEARNING_RATE, "weight_decay": WEIGHT_DECAY, "max_grad_norm": MAX_GRAD_NORM,
            "timing": "median of interleaved rounds, same process", "memory": "see benchmarks/_timing.py"}
    print(f"device={args.device} torch={torch.__version__} open_clip={open_clip.__version__} autocast={args.autocast}")
    write_json(args.json, {"meta": meta, "runs": records})
    return records


if __name__ == "__main__":
    main()
