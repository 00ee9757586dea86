"""Hyperparameters across scale: μP's coordinate check (`coord_check`; the parametrization itself
is `jaxscale.models.mup`), learning-rate transfer across widths, searches over a sweep spec's
search space (Optuna), the best trial, and many small models trained in one compiled program
(power laws of the optimal learning rate are `jaxscale.scaling.laws.lr_laws`).
`python -m jaxscale.hparams --help` lists the commands."""
