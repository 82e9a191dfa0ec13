"""Experiments: the built-in scenario catalog, and (soon) the compare runner, oracle and report."""
