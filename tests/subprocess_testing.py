"""Runs a test script in a fresh Python process and reads its result.

Scripts that need their own TensorFlow set-up (two logical CPU devices for a
MirroredStrategy, set before TensorFlow initialises) print one line
`RESULT <json>`; `run_script` returns that JSON.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script: str, timeout: float = 600) -> dict:
  """Runs `script` with `python -c` from the repository root.

  Returns:
    The JSON of the script's single `RESULT ` line.

  Raises:
    AssertionError: with the script's stderr if it failed, or its stdout if
      it did not print exactly one result line.
  """
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True,
                        text=True, timeout=timeout, env=env, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-5000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  assert len(lines) == 1, proc.stdout[-2000:]
  return json.loads(lines[0][len('RESULT '):])
