"""Study layer: splits, balancing, heads, runs, decisions, fitting, prediction and evaluation."""
