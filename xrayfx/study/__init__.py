"""The study layer: splits, parts, balancing, heads, runs and their record, the decision rule, fitting, predicting, evaluating, explaining."""
