"""Single-task CTR models (MODELS.md Part D), usable as one network per task or one network shared by tasks."""
