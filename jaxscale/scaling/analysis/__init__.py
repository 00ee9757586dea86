"""What a fit is used for: predictions, compute multipliers, validation by backtest, plots."""
