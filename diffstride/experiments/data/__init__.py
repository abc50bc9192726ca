"""Datasets of the experiments: image and audio sources, built-in data."""
