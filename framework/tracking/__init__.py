"""MLflow: tracking store, checkpoints, registry, resume."""
