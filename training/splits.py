"""Which rows train and which evaluate: ``--eval_data``, ``--eval_fraction`` or the data's own
``--eval_split``, for map-style and streamed data alike."""

from __future__ import annotations

import logging

from training.arguments import TrainingArguments

log = logging.getLogger("factorcl.train")

__all__ = ["eval_split_of"]


def eval_split_of(args: TrainingArguments, data, eval_data, source):
    """``(train, eval, eval source, eval split name)``: ``--eval_data``'s ``--eval_split`` (or
    its only split), else a seeded ``--eval_fraction`` of the training split, else the
    data's own ``--eval_split``; with none of them, a warning and no evaluation."""
    train_set = data[args.train_split]
    if args.eval_split == "none":
        return train_set, None, None, None
    if eval_data is not None:
        names = sorted(eval_data)
        name = args.eval_split if args.eval_split in eval_data else names[0] if len(names) == 1 else None
        if name is None:
            raise ValueError(f"`eval_split` {args.eval_split!r} not in `eval_data` {args.eval_data!r}; splits: {names}")
        return train_set, eval_data[name], args.eval_data, name
    if args.eval_fraction:
        parts = train_set.train_test_split(test_size=args.eval_fraction, seed=args.seed)
        return parts["train"], parts["test"], source, f"{args.train_split} ({args.eval_fraction:g} held out)"
    if args.eval_split in data and args.eval_split != args.train_split:
        return train_set, data[args.eval_split], source, args.eval_split
    log.warning("No evaluation: the data has no %r split (splits: %s). Give --eval_data or --eval_fraction to "
                "report metrics, or --eval_split none to silence this.", args.eval_split, sorted(data))
    return train_set, None, None, None
