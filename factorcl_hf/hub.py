"""Publishing FactorCL models: a model card from ``model_cards/``, and the push to the Hub.

* :func:`build_model_card` renders ``model_cards/factorcl_model_card.md`` with
  ``ModelCardData`` metadata (library, tags, base model, datasets, pipeline tag and a
  model-index built from evaluation records) and a body explaining the shared/unique
  embeddings, loading with and without ``factorcl-hf``, training and limitations.
* :func:`push_to_hub` saves model + processor + ``README.md`` into one folder the way training
  saves a model (:func:`~factorcl_hf.checkpointing.save_pretrained_atomically`: the folder loads
  with ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` and with the stock
  ``zero-shot-image-classification`` pipeline, even where ``factorcl_hf`` is not installed)
  and uploads it; network failures become a ``RuntimeError`` that names the repository and
  says the Hub could not be reached.

Evaluation records are what ``python -m factorcl_hf.evaluation --out`` writes:
``{"task": ..., "data" or "dataset": ..., "split": ..., "metrics": {name: value}}``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, constants
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

from . import __version__
from .checkpointing import save_pretrained_atomically
from .configuration_factorcl import estimator_preset, objective_spec

__all__ = [
    "MODEL_CARD_TEMPLATE",
    "MODEL_CARD_TAGS",
    "build_model_card",
    "class_names",
    "validate_model_card",
    "save_model_card",
    "push_to_hub",
    "check_push_access",
]

def _model_card_template() -> Path:
    """The card template: the wheel's packaged copy (``factorcl_hf/model_cards/``), or the
    source tree's top-level ``model_cards/`` (checkouts and editable installs)."""
    name = "factorcl_model_card.md"
    package_dir = Path(__file__).resolve().parent
    packaged = package_dir / "model_cards" / name
    return packaged if packaged.is_file() else package_dir.parent / "model_cards" / name


MODEL_CARD_TEMPLATE = _model_card_template()
MODEL_CARD_TAGS = ("factorcl", "contrastive-learning", "multimodal", "clip")
PIPELINE_TAG = "zero-shot-image-classification"
# Short enough for small text position tables; also CLIP's customary prompt.
HYPOTHESIS_TEMPLATE = "a photo of a {}."

# Evaluation task -> (model-index task type, pretty task name). Task types are the Hub's task
# ids (huggingface.js `PIPELINE_DATA`): the Hub has no image-text retrieval or probe task, so
# evaluations of the embeddings are filed under image-feature-extraction.
_TASKS = {
    "retrieval": ("image-feature-extraction", "Image-text retrieval"),
    "zero_shot": ("zero-shot-image-classification", "Zero-shot image classification"),
    "irfl_mc": ("multiple-choice", "IRFL multiple choice"),
    "irfl_type": ("image-feature-extraction", "IRFL figurative-type linear probe"),
    "probe": ("image-feature-extraction", "Linear probe"),
    "information": ("image-feature-extraction", "Label information (nats)"),
}


def _metric_type(metric: str) -> str:
    """The Hub's metric id (``evaluate``'s names) of one of this package's metric names
    (``image_to_text_R@1``, ``factorized_accuracy``, ``top1``, ...); the name itself says which."""
    if "R@" in metric or metric == "mean_recall":
        return "recall"
    if metric.endswith("accuracy") or metric.startswith("top"):
        return "accuracy"
    return metric


# The Hub's task ids (huggingface.js `PIPELINE_DATA`) that a FactorCL card may use.
HUB_TASK_TYPES = frozenset({
    "zero-shot-image-classification", "image-feature-extraction", "feature-extraction", "image-classification",
    "multiple-choice", "text-retrieval", "visual-document-retrieval", "image-text-to-text", "other",
})
# The Hub's license ids (https://huggingface.co/docs/hub/repositories-licenses), the common ones.
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "openrail++", "creativeml-openrail-m", "bigscience-openrail-m", "bsd",
    "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "cc-by-2.0", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0",
    "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-4.0",
    "gpl-2.0", "gpl-3.0", "lgpl-2.1", "lgpl-3.0", "agpl-3.0", "mpl-2.0", "epl-2.0", "isc", "unlicense", "wtfpl",
    "llama2", "llama3", "llama3.1", "gemma", "other", "unknown",
})


def validate_model_card(card) -> None:
    """Check ``card`` as the Hub reads it, offline: huggingface_hub parses its YAML into
    ``ModelCardData`` (raising on a malformed model-index); the license and every model-index
    task type must be Hub ids, and ``base_model``/``datasets`` Hub repositories, not local
    paths. (``ModelCard.validate`` asks the Hub itself; ``push_to_hub`` does that on upload.)
    Raises ``ValueError`` naming the field."""
    data = ModelCard(str(card)).data
    if data.license not in HUB_LICENSES:
        raise ValueError(f"model card `license` must be a Hub license id (e.g. apache-2.0, mit), got {data.license!r}")
    for field in ("base_model", "datasets"):
        values = getattr(data, field, None) or []
        for value in [values] if isinstance(values, str) else values:
            if Path(value).is_absolute() or Path(value).exists() or value.count("/") > 1:
                raise ValueError(f"model card `{field}` must name Hub repositories, got the local path {value!r}")
    for result in data.eval_results or []:
        if result.task_type not in HUB_TASK_TYPES:
            raise ValueError(f"model-index task type {result.task_type!r} is not a Hub task id ({sorted(HUB_TASK_TYPES)})")


def _config_of(model_or_config):
    config = getattr(model_or_config, "config", model_or_config)
    if getattr(config, "model_type", None) != "factorcl":
        raise ValueError(
            f"`model_or_config` must be a FactorCLModel or FactorCLConfig, got {type(model_or_config).__name__}"
        )
    return config


def _records(eval_results) -> list[Mapping[str, Any]]:
    if eval_results is None:
        return []
    records = [eval_results] if isinstance(eval_results, Mapping) else list(eval_results)
    for record in records:
        if not isinstance(record, Mapping) or not isinstance(record.get("metrics"), Mapping) or "task" not in record:
            raise ValueError(
                "`eval_results` must be an evaluation record {'task', 'data' or 'dataset', 'metrics': {...}} "
                "(as written by `python -m factorcl_hf.evaluation --out`) or a list of them"
            )
    return records


def _dataset_name(record: Mapping[str, Any]) -> str:
    name = record.get("dataset") or record.get("data") or "unknown"
    if isinstance(name, (list, tuple)):
        name = ", ".join(Path(str(part)).name for part in name)
    return Path(str(name).rstrip("/")).name or str(name)


def _eval_results(records: list[Mapping[str, Any]]):
    results, rows = [], []
    for record in records:
        task_type, task_name = _TASKS.get(record["task"], (str(record["task"]), str(record["task"])))
        dataset = _dataset_name(record)
        split = record.get("split")
        # How many items each metric was measured on: a 1.0 on 26 items says little.
        size = record.get("num_samples")
        for metric, value in record["metrics"].items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            qualifiers = [f"{record['embedding']} embedding"] if record.get("embedding") else []
            if size is not None:
                qualifiers.append(f"{size} items")
            metric_name = f"{metric} ({', '.join(qualifiers)})" if qualifiers else metric
            results.append(EvalResult(
                task_type=task_type, task_name=task_name,
                dataset_type=record.get("dataset_type", dataset), dataset_name=dataset, dataset_split=split,
                metric_type=_metric_type(metric), metric_name=metric_name, metric_value=float(value),
            ))
            rows.append({"task": task_name, "dataset": dataset, "split": split or "", "metric": metric_name,
                         "value": f"{float(value):.4f}", "size": "" if size is None else str(size)})
    return results, rows


def _training_terms(config) -> dict[str, Any]:
    """For objectives with FactorCL's six terms: the estimator preset they train with and the
    terms weighed other than 1 (the preset's weights, then the config's), as ``[(name, weight)]``."""
    if not objective_spec(config.objective).six_bounds:
        return {"estimators": None, "term_weights": []}
    preset = estimator_preset(config.estimators, config.objective)
    weights = preset.weights(config.term_weights)
    return {"estimators": preset.name, "term_weights": [(name, f"{w:g}") for name, w in weights.items() if w != 1]}


def _layout(config) -> str | None:
    """The estimator preset's layout of a factorized objective (``None`` otherwise)."""
    if not objective_spec(config.objective).factorized:
        return None
    return estimator_preset(config.estimators, config.objective).layout


def _embedding_sizes(config) -> dict[str, int]:
    """The sizes of the embeddings the card's table lists: one head each for Z_S and Z_U in the
    closed_form layout (objectives.ClosedFormFactorCLObjective); two and three heads in the
    per-term layout (objectives.FactorCLObjective); one head and no Z_U without factorization."""
    head_dim = config.head_dim
    shared_dim, unique_dim = {None: (head_dim, 0), "closed_form": (head_dim, head_dim),
                              "per_term": (2 * head_dim, 3 * head_dim)}[_layout(config)]
    return {
        "pooler_dim": head_dim,
        "shared_dim": shared_dim,
        "unique_dim": unique_dim,
        "factorized_dim": shared_dim + unique_dim,
        "backbone_dim": config.backbone_embed_dim,
    }


def class_names(model_or_config) -> list[str] | None:
    """The label names of ``config.id2label`` in id order, or ``None`` when they are only
    transformers' placeholders (``LABEL_0``, ...), i.e. the labels were bare integers."""
    config = getattr(model_or_config, "config", model_or_config)
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label, key=int)]
    if not names or all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return None
    return names


def build_model_card(
    model_or_config,
    eval_results: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    base_model: str | None = None,
    datasets: str | Sequence[str] | None = None,
    training_summary: str | Mapping[str, Any] | None = None,
    *,
    model_name: str | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    template_path: str | os.PathLike | None = None,
):
    """Render the FactorCL model card.

    Args:
        model_or_config: the ``FactorCLModel`` (or its ``FactorCLConfig``) being published.
        eval_results: one evaluation record or a list (see the module docstring); each numeric
            metric becomes a model-index ``EvalResult`` and a row of the card's table.
        base_model: Hub id of the CLIP checkpoint it started from (e.g. ``openai/clip-vit-base-patch32``).
        datasets: Hub id(s) or names of the training data.
        training_summary: free text, or a mapping such as ``{"epochs": 10, "learning_rate": 1e-6}``
            rendered as a list.
        model_name: title and model-index name (default: the repo name or ``clip-<objective>``).
        repo_id: the Hub id or local folder the card's loading snippets load (default: ``model_name``).
        license: SPDX-style license id for the metadata.
        template_path: another Jinja template (default: :data:`MODEL_CARD_TEMPLATE`).

    Returns:
        A ``huggingface_hub.ModelCard``.
    """
    config = _config_of(model_or_config)
    template = Path(template_path) if template_path is not None else MODEL_CARD_TEMPLATE
    if not template.is_file():
        raise ValueError(f"model card template {str(template)!r} does not exist")
    if isinstance(datasets, str):
        datasets = [datasets]
    datasets = list(datasets) if datasets else None
    if training_summary is not None and not isinstance(training_summary, (str, Mapping)):
        raise ValueError("`training_summary` must be a string or a mapping of training settings")

    objective = config.objective
    spec = objective_spec(objective)
    on_hub = repo_id and not Path(repo_id).is_absolute() and not Path(repo_id).exists()
    model_name = model_name or (repo_id.split("/")[-1] if on_hub else f"clip-{objective.replace('_', '-')}")
    results, rows = _eval_results(_records(eval_results))
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        tags=list(MODEL_CARD_TAGS),
        base_model=base_model,
        datasets=datasets,
        license=license,
        eval_results=results or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=model_name,
        repo_id=repo_id or model_name,
        objective=objective,
        objective_title=spec.title,
        objective_description=spec.description,
        factorized=spec.factorized,
        layout=_layout(config),
        **_embedding_sizes(config),
        **_training_terms(config),
        base_model=base_model,
        datasets=datasets,
        training_items=list(training_summary.items()) if isinstance(training_summary, Mapping) else [],
        training_text=training_summary if isinstance(training_summary, str) else None,
        eval_rows=rows,
        hypothesis_template=HYPOTHESIS_TEMPLATE,
        class_names=class_names(config),
        package_version=__version__,
    )


def save_model_card(save_directory: str | os.PathLike, model_or_config, *args, **kwargs):
    """Build the card (arguments of :func:`build_model_card`) and write it as
    ``save_directory/README.md``; returns the card."""
    card = build_model_card(model_or_config, *args, **kwargs)
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    card.save(directory / "README.md")
    return card


def check_push_access(repo_id: str, token: str | None = None) -> str:
    """Before any work that ends in a push: the Hub answers, the token is valid, and its user
    may write to ``repo_id``'s namespace (the user's own or one of their organisations).
    Returns the user name; raises ``ValueError`` saying which of these fails."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"`hub_model_id` must be a Hub repository id like 'user/name', got {repo_id!r}")
    offline = (f"--push_to_hub {repo_id!r}: the Hub cannot be reached because offline mode is enabled "
               "(HF_HUB_OFFLINE=1); unset it, or train without --push_to_hub and push later")
    if constants.HF_HUB_OFFLINE:
        raise ValueError(offline)
    api = HfApi(token=token)
    try:
        identity = api.whoami()
    except LocalTokenNotFoundError as error:
        raise ValueError(f"--push_to_hub {repo_id!r}: no Hub token; log in with `hf auth login` or set "
                         "HF_TOKEN") from error
    except OfflineModeIsEnabled as error:
        raise ValueError(offline) from error
    except HfHubHTTPError as error:
        raise ValueError(f"--push_to_hub {repo_id!r}: the Hub at {api.endpoint} refused the token ({error}); log in "
                         "with `hf auth login` or set HF_TOKEN") from error
    except _transport_errors() as error:
        raise ValueError(f"--push_to_hub {repo_id!r}: the Hub at {api.endpoint} cannot be reached ({error}); check "
                         "the network or HF_ENDPOINT, or train without --push_to_hub and push later") from error
    user = identity.get("name")
    namespaces = {user, *(org.get("name") for org in identity.get("orgs") or [])}
    if repo_id.split("/")[0] not in namespaces:
        raise ValueError(f"--push_to_hub {repo_id!r}: the token's user {user!r} cannot write to namespace "
                         f"{repo_id.split('/')[0]!r} (theirs: {sorted(n for n in namespaces if n)})")
    return user


def _transport_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub raises its HTTP client's errors for connection failures (httpx or
    # httpx2 depending on the version); HfHubHTTPError derives from that client's HTTPError.
    client_errors = tuple(base for base in HfHubHTTPError.__mro__ if base.__name__ == "HTTPError")
    return (OSError, *client_errors)


def push_to_hub(
    model,
    processor,
    repo_id: str,
    card=None,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload FactorCL model",
) -> str:
    """Create ``repo_id`` (if needed) and upload model + processor + model card in one commit.

    Args:
        model: the ``FactorCLModel`` to publish.
        processor: its processor (saved beside it so pipelines can load the folder).
        repo_id: ``"user/name"`` on the Hub.
        card: a ``ModelCard`` (default: :func:`build_model_card` of ``model`` without results).
        token: Hub token (default: the logged-in one).
        private: create the repository as private.

    Returns:
        The URL of the commit.

    Raises:
        RuntimeError: the Hub could not be reached (offline, connection refused, ...) or it
            refused the upload; the message names ``repo_id``.
    """
    if not isinstance(repo_id, str) or not repo_id.strip() or repo_id.count("/") > 1:
        raise ValueError(f"`repo_id` must be a Hub repository id like 'user/name', got {repo_id!r}")
    if card is None:
        card = build_model_card(model, repo_id=repo_id)
    api = HfApi(token=token)
    network_errors = _transport_errors()
    with tempfile.TemporaryDirectory(prefix="factorcl-push-") as folder:
        folder = save_pretrained_atomically(model, processor, Path(folder) / "model", card=card)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=commit_message, repo_type="model"
            )
        except OfflineModeIsEnabled as error:
            raise RuntimeError(
                f"Cannot push to {repo_id!r}: the Hugging Face Hub could not be reached because offline mode "
                "is enabled (HF_HUB_OFFLINE=1); unset it to push."
            ) from error
        except HfHubHTTPError as error:
            raise RuntimeError(f"The Hugging Face Hub at {api.endpoint} refused the push to {repo_id!r}: {error}") from error
        except network_errors as error:
            raise RuntimeError(
                f"Cannot push to {repo_id!r}: the Hugging Face Hub at {api.endpoint} could not be reached ({error}). "
                "Check the network connection or HF_ENDPOINT and try again."
            ) from error
    return str(getattr(commit, "commit_url", commit))
