"""Recipes: multi-step procedures that train models to MAKE data (above ``train/`` in the layering: a recipe may
import the trainer and the model registry; nothing under ``data/`` imports a recipe)."""
