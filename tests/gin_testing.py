"""Gin helpers shared by the tests that parse the project's configs."""

import os

import gin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(ROOT, 'gin')


def parse(gin_file, bindings=()):
  """Clears gin, then parses gin/<gin_file> with `bindings` on top."""
  gin.clear_config()
  gin.add_config_file_search_path(GIN_DIR)
  gin.parse_config_files_and_bindings([os.path.join(GIN_DIR, gin_file)],
                                      list(bindings))
