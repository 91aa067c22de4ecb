"""Evaluation: how good a model is on the tasks the field uses (`ownllm eval`).

tasks.py (the data and prompts), scoring.py (log-likelihood of continuations, batched and
naive), evaluate.py (the tasks' metrics, standard errors, baselines, CORE; the result file).
"""
