"""Datasets for FactorCL: generators and loaders.

Names are imported on first use, so ``import factorcl_hf.data`` stays light (no ``datasets``,
no image drawing until asked for).
"""

from importlib import import_module

_LAZY_NAMES = {
    "shapes": (
        "ATTRIBUTES",
        "BACKGROUNDS",
        "CAPTION_ONLY_ATTRIBUTES",
        "CAPTION_TEMPLATES",
        "COLOURS",
        "DEFAULT_NUM_LABELS",
        "DEFAULT_UNIQUE_SHARE",
        "DRAWERS",
        "IMAGE_ONLY_ATTRIBUTES",
        "LABEL_RULES",
        "POSITIONS",
        "SHAPES",
        "SHAPES_COLUMNS",
        "SHARED_ATTRIBUTES",
        "SIZES",
        "build_shapes_dataset",
        "generate_shapes_records",
        "render_shapes_image",
        "save_sample_grid",
        "shapes_features",
        "shapes_label_accuracy_ceilings",
        "shared_label_rule",
        "unique_label_rule",
        "write_shapes_imagefolder",
    ),
}
_MODULE_OF = {name: module for module, names in _LAZY_NAMES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
