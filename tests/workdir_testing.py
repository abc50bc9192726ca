"""Helpers for the tests that check what a run leaves in its workdir."""

import os


def files_of(root):
  """{path relative to `root`: (size, modification time, bytes)} of every
  file under `root`: equal before and after means nothing was written."""
  files = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, 'rb') as f:
        files[os.path.relpath(path, root)] = (
            os.path.getsize(path), os.stat(path).st_mtime_ns, f.read())
  return files
