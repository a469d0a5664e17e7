"""Model registry: model versions, aliases, model cards and their signatures."""
