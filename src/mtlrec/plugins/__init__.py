"""Plug-ins that attach to any model: DML (CTFM, GKD), virtual gradient. Each module registers itself."""
