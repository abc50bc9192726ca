"""The harness's file operations behave the same with TensorFlow's gfile and
without TensorFlow (Python's own)."""

import os

import pytest

from diffstride.experiments import files


@pytest.fixture(params=['gfile', 'local'])
def implementation(request, monkeypatch):
  if request.param == 'local':
    monkeypatch.setattr(files, '_gfile', None)
  else:
    assert files._gfile is not None  # pylint: disable=protected-access
  return request.param


def test_the_operations(tmp_path, implementation):
  del implementation
  root = str(tmp_path / 'a' / 'b')
  files.makedirs(root)
  files.makedirs(root)  # Already there: nothing happens.
  assert files.isdir(root) and files.exists(root)
  path = os.path.join(root, 'x.txt')
  with files.open_file(path, 'w') as f:
    f.write('hello')
  with files.open_file(path) as f:
    assert f.read() == 'hello'
  files.copy(path, path + '.copy')
  with pytest.raises(Exception):  # pylint: disable=broad-exception-raised
    files.copy(path, path + '.copy')  # Exists, overwrite=False.
  files.copy(path, path + '.copy', overwrite=True)
  files.rename(path + '.copy', path + '.moved')
  with pytest.raises(Exception):  # pylint: disable=broad-exception-raised
    files.rename(path + '.moved', path)  # Exists, overwrite=False.
  files.rename(path + '.moved', path, overwrite=True)
  assert sorted(files.listdir(root)) == ['x.txt']
  assert [os.path.basename(p) for p in files.glob(os.path.join(root, '*.txt'))
          ] == ['x.txt']
  walked = [(os.path.relpath(d, str(tmp_path)), sorted(n))
            for d, _, n in files.walk(str(tmp_path))]
  assert walked == [('.', []), ('a', []), (os.path.join('a', 'b'), ['x.txt'])]
  files.remove(path)
  assert not files.exists(path)
