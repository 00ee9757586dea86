"""Hyperparameters across scale: μP (`mup`) and its coordinate check (`coord_check`), searches
over a sweep spec's search space (Optuna), the best trial, power laws of the optimal learning rate
and batch size against compute, and many small models trained in one compiled program.
`python -m jaxscale.hparams --help` lists the commands."""
