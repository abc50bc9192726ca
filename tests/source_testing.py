"""A check shared by the image and audio data tests (not collected)."""

import dataclasses


def assert_load_info_comes_from_describe(source, described, monkeypatch):
  """`source.load()`'s info is `source.describe()`'s, by construction: a
  changed description shows up in what `load()` returns (TFDS and folders
  only put in the counts of what they read). Call it where `load()` can
  read data (e.g. inside `tfds.testing.mock_data`)."""
  assert source.describe() == described
  original = type(source).describe
  monkeypatch.setattr(
      type(source), 'describe', lambda self: dataclasses.replace(
          original(self), name='described', num_classes=7))
  loaded = source.load().info
  assert (loaded.name, loaded.num_classes) == ('described', 7)
  assert loaded.image_shape == described.image_shape
