"""Dissecting networks: layer summaries, MACs, receptive fields, and FC-to-conv conversion."""

from cnnlab.analysis.fully_conv import to_fully_convolutional
from cnnlab.analysis.summary import LayerRow, Summary, format_summary, summarize

__all__ = ["LayerRow", "Summary", "format_summary", "summarize", "to_fully_convolutional"]
