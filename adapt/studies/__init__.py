"""Studies: grids of runs with model selection, tables and plots (``experiments.sweep``)."""
