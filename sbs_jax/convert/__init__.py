"""Converters between the student's parameters and other frameworks' checkpoint formats."""
