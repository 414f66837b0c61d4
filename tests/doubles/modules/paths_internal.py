"""Double of modules/paths_internal.py: ``models_path`` (tests point it at a temp folder)."""

models_path = "models"
