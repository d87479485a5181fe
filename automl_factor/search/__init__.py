"""The search service: Ray Tune trials, Optuna samplers, MO-ASHA, Pareto fronts in MLflow.

With export.py, the only part of the package that imports Ray or MLflow.
"""
