"""Moderating stored images in bulk: reading the sources, writing the result table."""
