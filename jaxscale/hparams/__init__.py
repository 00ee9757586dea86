"""Hyperparameters across scale: μP (`mup`), its coordinate check (`coord_check`), and the
`python -m jaxscale.hparams` command line."""
