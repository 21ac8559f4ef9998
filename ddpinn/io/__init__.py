"""Run outputs: metrics log, progress lines, result files and plots."""
