"""Measuring how well the classifiers work on a labelled image set (``moderation evaluate``).

Imports nothing heavy: the model, matplotlib and the HTTP client load only when used.
"""
