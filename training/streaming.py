"""``--streaming``: train from a ``datasets`` IterableDataset, so a Hub dataset bigger than
the disk trains without a download.

The stream is cleared of undecodable images on the fly (counted), shuffled in a buffer,
sharded across processes (``datasets.distributed.split_dataset_by_node``: whole shards per
process when they divide evenly, else every process reads all rows and keeps its share) and
numbered (each row's ``_index`` seeds its augmentations, as in map-style training; here the
numbers depend on the number of processes, as a stream has no global row positions).
The first ``--streaming_sample_rows`` rows are read up front as a map-style sample: the tiny
model's tokenizer and the linear probe's training features come from it. The label set cannot
come from a sample (a class first seen later would crash the run): it is the label column's
``ClassLabel``, or ``--label_names`` / ``--num_labels``, else the run stops before training.
Rows whose label is outside it, or whose caption is empty, are skipped and counted, like
undecodable images.
Evaluation reads ``--eval_data`` (or the source's ``--eval_split``) in full.
"""

from __future__ import annotations

from typing import Any

import datasets
from datasets.distributed import split_dataset_by_node

from factorcl_hf.data.image_text import caption_problem, encode_labels, image_decodes, label_problem
from training.splits import eval_split_of

__all__ = ["streaming_data"]


def _usable_rows(stream, image_column: str, caption_column: str, label_column: str | None, label_ids, counter: dict):
    """``stream`` without rows whose image fails to decode, whose caption is no text (the
    checks a map-style split gets before training, here as rows arrive) or whose label is not
    one of ``label_ids`` (a name -> id mapping, or a range of ids); ``counter`` counts each kind.
    The image column is left undecoded (``{"bytes", "path"}``): the collator opens it with
    :func:`~factorcl_hf.data.images.open_image`."""
    def keep(row) -> bool:
        if not image_decodes(row[image_column]):
            counter["count"] += 1
            return False
        if caption_problem(row[caption_column]):
            counter["captions"] += 1
            return False
        if label_column is not None and _label_id(row[label_column], label_ids) is None:
            counter["labels"] += 1
            return False
        return True

    stream = stream.cast_column(image_column, datasets.Image(decode=False)).filter(keep)
    if label_column is not None and isinstance(label_ids, dict):
        stream = stream.map(lambda row: {label_column: label_ids[row[label_column]]})
    return stream


def _label_id(label, label_ids):
    if isinstance(label_ids, dict):
        return label_ids.get(label) if isinstance(label, str) else (label if label in label_ids.values() else None)
    return None if label_problem(label) or isinstance(label, str) or label not in label_ids else int(label)


def _label_set(args, features, label_column: str):
    """``(label ids, class names)`` of a stream, known before training: the column's
    ``ClassLabel``, ``--label_names`` or ``--num_labels``; else a ``ValueError`` naming them."""
    feature = features[label_column] if features is not None and label_column in features else None
    if args.label_names:
        names = list(args.label_names)
        return {name: i for i, name in enumerate(names)}, names
    if isinstance(feature, datasets.ClassLabel):
        return range(feature.num_classes), list(feature.names)
    if args.num_labels:
        return range(args.num_labels), None
    raise ValueError(
        f"with --streaming, the label set must be known before training, and column {label_column!r} "
        "(`label_column`) is not a ClassLabel: give `--num_labels N` (integer ids 0..N-1) or `--label_names A B ...` "
        "(a class first seen after the sample would otherwise stop the run)"
    )


def streaming_data(args, accelerator, data, eval_data, source, label_column) -> dict[str, Any]:
    """The fields of ``training.loop.TrainingData`` for a streamed ``data`` (an
    ``IterableDatasetDict``): ``stream`` (this process's shard), ``train`` (the sample),
    ``eval`` and the label names."""
    if args.train_split not in data:
        raise ValueError(f"`train_split` {args.train_split!r} not in the data; splits: {sorted(data)}")
    stream, eval_set, eval_source, eval_split = eval_split_of(args, data, eval_data, source)
    if isinstance(eval_set, datasets.IterableDataset):
        eval_set = datasets.Dataset.from_list(list(eval_set), features=eval_set.features)
    features = stream.features
    label_ids, label_names = _label_set(args, features, label_column) if label_column is not None else (None, None)
    counter = {"count": 0, "labels": 0, "captions": 0}
    stream = _usable_rows(stream, args.image_column, args.caption_column, label_column, label_ids, counter)
    sample_features = None
    if features is not None:
        sample_features = features.copy()
        sample_features[args.image_column] = datasets.Image(decode=False)
        if isinstance(label_ids, dict):
            sample_features[label_column] = datasets.ClassLabel(names=label_names)
    sample = datasets.Dataset.from_list(list(stream.take(args.streaming_sample_rows)), features=sample_features)
    counter.update(count=0, labels=0, captions=0)  # count the rows training reads, not the sample's
    stream = stream.shuffle(seed=args.seed, buffer_size=args.streaming_shuffle_buffer)
    rank, world = accelerator.process_index, accelerator.num_processes
    stream = split_dataset_by_node(stream, rank=rank, world_size=world)
    # A process counts only the rows it reads: interleaved, the counts stay distinct across processes.
    stream = stream.map(lambda row, i: {"_index": i * world + rank}, with_indices=True)
    encoded, names = encode_labels({"train": sample, "eval": eval_set}, label_column, names=label_names)
    return {"train": encoded["train"], "eval": encoded["eval"], "stream": stream, "stream_dropped": counter,
            "eval_source": eval_source, "eval_split": eval_split, "label_names": names or label_names,
            "num_labels": len(label_ids) if label_ids is not None else None}
