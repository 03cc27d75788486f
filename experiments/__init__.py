"""Studies run with factorcl-hf, not part of the library: the paper's synthetic shared-vs-unique
benchmark (``synthetic_benchmark``: one run; ``synthetic_sweep``: the sweep CLI) and the CLUB
min-max game (``club_critic_game``). Run from the repository root, e.g.
``python -m experiments.synthetic_sweep --out outputs/synthetic --quick``."""
