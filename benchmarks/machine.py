"""The machine a benchmark ran on, for its output: every figure names its CPU."""

import os
import platform
import subprocess


def cpu_name() -> str:
  """e.g. 'AMD EPYC (AVX-512, 2 CPUs)', from `lscpu` where there is one."""
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True,
                         check=False).stdout
  except OSError:
    return f'{platform.processor() or "unknown CPU"} ({os.cpu_count()} CPUs)'
  name = ''
  for line in out.splitlines():
    if line.startswith('Model name:'):
      name = line.split(':', 1)[1].strip()
  flags = out.split('Flags:', 1)[-1]
  avx512 = 'AVX-512' if 'avx512f' in flags else 'no AVX-512'
  return f'{name or platform.processor()} ({avx512}, {os.cpu_count()} CPUs)'
