"""``--streaming``: train from a ``datasets`` IterableDataset, so a Hub dataset bigger than
the disk trains without a download.

The stream is cleared of undecodable images on the fly (counted), shuffled in a buffer,
sharded across processes (``datasets.distributed.split_dataset_by_node``: whole shards per
process when they divide evenly, else every process reads all rows and keeps its share) and
numbered (each row's ``_index`` seeds its augmentations, as in map-style training; here the
numbers depend on the number of processes, as a stream has no global row positions).
The first ``--streaming_sample_rows`` rows are read up front as a map-style sample: the tiny
model's tokenizer, the label count and the linear probe's training features come from it.
Evaluation reads ``--eval_data`` (or the source's ``--eval_split``) in full.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import datasets
from datasets.distributed import split_dataset_by_node
from PIL import Image

from factorcl_hf.data.image_text import encode_labels, image_decodes
from training.splits import eval_split_of

__all__ = ["streaming_data"]


def _decodable_rows(stream, image_column: str, counter: dict):
    """``stream`` without rows whose image fails to decode (``counter["count"]`` counts
    them), its image column left undecoded: ``{"bytes", "path"}`` (see :func:`_opened`)."""
    def keep(row) -> bool:
        decodes = image_decodes(row[image_column])
        counter["count"] += not decodes
        return decodes

    return stream.cast_column(image_column, datasets.Image(decode=False)).filter(keep)


def _opened(value):
    """The PIL image of an undecoded ``datasets.Image`` value. (A stream cast back to a
    decoding ``Image`` feature after the filter would still yield the raw values.)"""
    image = Image.open(BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
    image.load()
    return image


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
    if label_column is not None and features is not None and isinstance(features[label_column], datasets.Value) \
            and features[label_column].dtype in ("string", "large_string"):
        raise ValueError(f"with --streaming, `label_column` {label_column!r} must hold integers or a ClassLabel, "
                         "not strings (a stream cannot be scanned for its class names)")
    counter = {"count": 0}
    stream = _decodable_rows(stream, args.image_column, counter)
    sample = datasets.Dataset.from_list(list(stream.take(args.streaming_sample_rows)), features=features)
    counter["count"] = 0  # count the rows training reads, not the sample's
    stream = stream.shuffle(seed=args.seed, buffer_size=args.streaming_shuffle_buffer)
    rank, world, image = accelerator.process_index, accelerator.num_processes, args.image_column
    stream = split_dataset_by_node(stream, rank=rank, world_size=world)
    # A process counts only the rows it reads: interleaved, the counts stay distinct across processes.
    stream = stream.map(lambda row, i: {"_index": i * world + rank, image: _opened(row[image])}, with_indices=True)
    encoded, label_names = encode_labels({"train": sample, "eval": eval_set}, label_column)
    return {"train": encoded["train"], "eval": encoded["eval"], "stream": stream, "stream_dropped": counter,
            "eval_source": eval_source, "eval_split": eval_split, "label_names": label_names}
