"""How the shipped weights, thresholds, fixtures and demo files were made. The Python recipes run as
modules from the repository root (``python -m recipes.code_models.split_fit CORPUS``); the READMEs
beside them give the commands."""
