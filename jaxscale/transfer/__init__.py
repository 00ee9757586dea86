"""Transfer learning: a run's initial parameters from another run's checkpoint (`init_from`)."""
