"""Interpretability: gate values, expert utilisation, VG surfaces, per-task feature importance, plots."""
