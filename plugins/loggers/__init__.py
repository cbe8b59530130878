"""Built-in loggers: MLflow and TensorBoard (optional extras)."""
