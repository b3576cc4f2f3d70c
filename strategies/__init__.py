"""Placeholder package: see the federation issue (#3). Nothing here is implemented yet."""
