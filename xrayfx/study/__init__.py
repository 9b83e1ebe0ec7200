"""The study layer: splits, balance, heads, runs, decision, fit, predict, evaluate and explain."""
