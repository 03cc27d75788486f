"""Label encoding and split columns of factorcl_hf.data.image_text."""

import datasets
import pytest

from factorcl_hf.data.image_text import encode_labels, split_by_column


def test_string_labels_get_the_same_ids_in_every_split():
    train = datasets.Dataset.from_dict({"label": ["dog", "cat", "dog"]})
    test = datasets.Dataset.from_dict({"label": ["emu", "cat"]})
    encoded, names = encode_labels({"train": train, "eval": test, "none": None}, "label")
    assert names == ["cat", "dog", "emu"]
    assert encoded["train"]["label"] == [1, 0, 1] and encoded["eval"]["label"] == [2, 0]
    assert encoded["none"] is None


def test_class_label_names_are_kept_and_strings_must_be_among_them():
    feature = datasets.Features({"label": datasets.ClassLabel(names=["zebra", "ant"])})
    train = datasets.Dataset.from_dict({"label": [0, 1]}, features=feature)
    encoded, names = encode_labels({"train": train, "eval": datasets.Dataset.from_dict({"label": ["ant"]})}, "label")
    assert names == ["zebra", "ant"] and encoded["eval"]["label"] == [1]
    with pytest.raises(ValueError, match="labels \\['bee'\\] in column 'label' of split 'eval'"):
        encode_labels({"train": train, "eval": datasets.Dataset.from_dict({"label": ["bee"]})}, "label")


def test_integer_labels_have_no_names():
    train = datasets.Dataset.from_dict({"label": [0, 3]})
    assert encode_labels({"train": train}, "label") == ({"train": train}, None)
    assert encode_labels({"train": train}, None)[1] is None


def test_split_column_makes_the_splits():
    table = datasets.Dataset.from_dict({"x": [1, 2, 3], "split": ["train", "test", "train"]})
    splits = split_by_column(table)
    assert sorted(splits) == ["test", "train"] and splits["train"]["x"] == [1, 3]
    assert "split" not in splits["test"].column_names
    assert list(split_by_column(table.remove_columns("split"))) == ["train"]
    with pytest.raises(ValueError, match="column 'split'"):
        split_by_column(datasets.Dataset.from_dict({"split": ["train", None]}))
