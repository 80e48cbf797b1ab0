"""Reporting: tables, plots and reports that people read."""
