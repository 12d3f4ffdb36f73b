"""Experiment configs: one module per experiment, each with get_config(arg) (installed as
continual.experiments)."""
