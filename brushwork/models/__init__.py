"""Finding, detecting, loading and caching the models a recipe names."""
