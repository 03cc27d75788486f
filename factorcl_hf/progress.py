"""What the command lines print: their own progress bars and results, not the libraries'.

``datasets`` shows "Downloading data" / "Generating split" / "Map" / "Filter" bars even for
a local folder, and transformers a "Loading weights" / "Writing model shards" bar for every
load and save; neither is the progress of the run. They are hidden here; downloads from the
Hub (``huggingface_hub``'s bars, and ``datasets``' for a Hub dataset) keep theirs unless the
user asked for no progress at all.
"""

from __future__ import annotations

import logging

__all__ = ["hide_library_progress_bars"]


def hide_library_progress_bars(keep_downloads: bool = False) -> None:
    """Turn off transformers' load/save bars and (unless ``keep_downloads``) the bars of
    ``datasets`` and ``huggingface_hub``; quiet accelerate's INFO lines (a line per file of
    every checkpoint). Process-wide, as the libraries' own switches are."""
    import datasets
    import huggingface_hub
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    if not keep_downloads:
        datasets.disable_progress_bars()
        huggingface_hub.utils.disable_progress_bars()
    logging.getLogger("accelerate").setLevel(logging.WARNING)
