"""Pure torch + transformers models. No lightning, ray or mlflow imports."""
