"""Orbax checkpoints, integrity manifests, preemption, and restoring a trained model
(`restore.restore_model`) or a run's initial weights (`init_from`)."""
