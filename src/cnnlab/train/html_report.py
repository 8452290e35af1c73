"""Moved to cnnlab.reports.html_report (the report looks at finished runs); this name is kept
so that scripts written against earlier releases keep working."""

from cnnlab.reports.html_report import write_html_report

__all__ = ["write_html_report"]
