"""The study layer: splits, parts, runs and their record, the decision rule, fitting, predicting, evaluating."""
