"""The search service: Ray Tune trials, Optuna samplers, MO-ASHA, Pareto fronts in MLflow.

The only part of the package that imports Ray or MLflow.
"""
