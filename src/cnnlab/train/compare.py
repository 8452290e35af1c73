"""Moved to cnnlab.reports.compare (comparing runs is no part of training); this name is kept
so that scripts written against earlier releases keep working."""

from cnnlab.reports.compare import compare_runs, format_leaderboard

__all__ = ["compare_runs", "format_leaderboard"]
