"""The harness's file operations, in one place.

With TensorFlow installed they are `tf.io.gfile`'s, which also reach the file
systems TensorFlow knows (`gs://...` among them); without it, Python's own on
the local file system. Same names and arguments as `tf.io.gfile`.
"""

import glob as glob_lib
import os
import shutil
from typing import IO, Iterator, List, Tuple

try:
  from tensorflow.io import gfile as _gfile  # pylint: disable=g-import-not-at-top
except ImportError:  # No TensorFlow: the local file system.
  _gfile = None


def exists(path: str) -> bool:
  return _gfile.exists(path) if _gfile else os.path.exists(path)


def isdir(path: str) -> bool:
  return _gfile.isdir(path) if _gfile else os.path.isdir(path)


def listdir(path: str) -> List[str]:
  return _gfile.listdir(path) if _gfile else os.listdir(path)


def makedirs(path: str) -> None:
  if _gfile:
    _gfile.makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


def open_file(path: str, mode: str = 'r') -> IO:
  """A file object (`tf.io.gfile.GFile`, or `open`)."""
  return _gfile.GFile(path, mode) if _gfile else open(path, mode)  # pylint: disable=consider-using-with,unspecified-encoding


def _local_move(operation, src: str, dst: str, overwrite: bool) -> None:
  """`operation(src, dst)`, refusing an existing `dst` unless `overwrite`
  (as gfile does)."""
  if not overwrite and os.path.exists(dst):
    raise FileExistsError(dst)
  operation(src, dst)


def copy(src: str, dst: str, overwrite: bool = False) -> None:
  if _gfile:
    _gfile.copy(src, dst, overwrite=overwrite)
  else:
    _local_move(shutil.copyfile, src, dst, overwrite)


def rename(src: str, dst: str, overwrite: bool = False) -> None:
  if _gfile:
    _gfile.rename(src, dst, overwrite=overwrite)
  else:
    _local_move(os.replace, src, dst, overwrite)


def remove(path: str) -> None:
  if _gfile:
    _gfile.remove(path)
  else:
    os.remove(path)


def walk(top: str) -> Iterator[Tuple[str, List[str], List[str]]]:
  return _gfile.walk(top) if _gfile else os.walk(top)


def glob(pattern: str) -> List[str]:
  return _gfile.glob(pattern) if _gfile else glob_lib.glob(pattern)
