"""The alert engine: rule model, evaluator, lifecycle, notifiers."""
