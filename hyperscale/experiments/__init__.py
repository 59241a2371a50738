"""Experiment drivers built on training (few-shot transfer, low-resource sweeps) and their reporting
(:mod:`hyperscale.experiments.report`: tables, curves and task-embedding plots)."""
