"""Research support code: what the studies in ``experiments/`` and ``benchmarks/`` build on, not
what a user of the model imports.

- :mod:`~factorcl_hf.research.synthetic`: the paper's synthetic shared-vs-unique vectors, with
  their Bayes ceiling;
- :mod:`~factorcl_hf.research.encoders`: ``MLPEncoder`` and ``VectorFactorCL``, the same
  objectives over MLP encoders of vector data;
- :mod:`~factorcl_hf.research.club_check`: is FactorCL's CLUB min-max game still tracking
  (``factorcl-train --club_critic_check_steps``);
- :mod:`~factorcl_hf.research.information`: InfoNCE / NCE-CLUB estimates of the label
  information each embedding holds (``factorcl-evaluate --task information``).

The model, its training and its evaluation are the rest of ``factorcl_hf``; nothing there but
those two options reaches in here. Import the modules by name (``from
factorcl_hf.research.synthetic import make_synthetic``): this package imports nothing itself.
"""
