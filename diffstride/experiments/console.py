"""What the harness tells a person: a few lines read at a glance.

The training loop reports through `say(message)`: the data line, the model
line, a resume, and one line per epoch (`callbacks.EpochLine`). A command
line tool (train.py) calls `enable()`, and they go to standard output;
otherwise (the harness called as a library: tests, examples) they go to
absl's INFO log, which prints nothing unless asked for. At the end the
command line prints `summary(metrics, workdir)`; metrics.json stays the
machine-readable record.

`startup_lines_to_keep(lines)` is what train.py passes on of what was
written to the process's stderr while it imported the harness and
TensorFlow found its devices: TensorFlow's native libraries write notices
there before their logging is configured, so TF_CPP_MIN_LOG_LEVEL does not
reach them (tensorflow/tensorflow#100442). Dropped: the absl
pre-initialisation notice, INFO lines (oneDNN, "Could not find cuda
drivers"), the CPU-feature notice, and, when no CUDA driver was found, the
error of the failed call to cuInit that follows. Everything else (warnings,
errors) is kept. `train.py --verbose` keeps everything.

`GinProbeFilter` (installed on the root logger by
`diffstride/experiments/__init__.py`) drops gin's "Path not found" errors:
gin logs one each time it probes a location for an included file (the
current directory before the search path), even when it then finds the file;
a file found nowhere still fails with gin's IOError naming it.

No TensorFlow or Keras imports here.
"""

import logging as std_logging
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence

from absl import logging

# Start-up lines nobody can act on (the whole line must match).
_STARTUP_NOISE = (
    re.compile(r'WARNING: All log messages before absl::InitializeLog\(\) '
               r'is called are written to STDERR'),
    re.compile(r'I\d{4} [\d:. ]+\d+ \S+:\d+\] .*'),  # INFO severity.
    re.compile(r'To enable the following instructions: .*'),
)
_NO_CUDA_DRIVER = re.compile(r'Could not find cuda drivers on your machine')
_CUINIT_FAILED = re.compile(r'E\d{4} [\d:. ]+\d+ \S+:\d+\] failed call to '
                            r'cuInit: .*')

_state = {'stream': None}


def enable(stream=None):
  """Sends `say`'s lines to `stream` (default: standard output)."""
  _state['stream'] = stream or sys.stdout


def say(message: str):
  """One line for the person running the command (see the module
  docstring); absl's INFO log when no command line enabled the console."""
  stream = _state['stream']
  if stream is None:
    logging.info('%s', message)
  else:
    print(message, file=stream, flush=True)


class GinProbeFilter(std_logging.Filter):
  """Drops gin-config's 'Path not found' probe errors (module docstring)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not (record.msg == 'Path not found: %s' and
                record.pathname.replace(os.sep, '/').endswith(
                    'gin/resource_reader.py'))


def install_gin_probe_filter():
  """Puts one `GinProbeFilter` on the root logger (gin logs there)."""
  root = std_logging.getLogger()
  if not any(isinstance(f, GinProbeFilter) for f in root.filters):
    root.addFilter(GinProbeFilter())


def is_startup_noise(line: str) -> bool:
  return any(p.fullmatch(line) for p in _STARTUP_NOISE)


def startup_lines_to_keep(lines: Sequence[str]) -> List[str]:
  """The start-up stderr lines worth showing (module docstring)."""
  no_driver = any(_NO_CUDA_DRIVER.search(l) for l in lines)
  return [l for l in lines if not is_startup_noise(l) and not (
      no_driver and _CUINIT_FAILED.fullmatch(l))]


def _percent(value: Optional[float]) -> str:
  return '—' if value is None else f'{100 * value:.1f}%'


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f'{seconds} s'
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f'{minutes} min {seconds:02d} s'
  hours, minutes = divmod(minutes, 60)
  return f'{hours} h {minutes:02d} min'


def pair_text(values: Sequence[float]) -> str:
  """'(1.14, 1.17)': one layer's strides, two decimals."""
  return '(' + ', '.join(f'{float(v):.2f}' for v in values) + ')'


def strides_text(strides: Dict[str, Any]) -> str:
  """'diff_stride (1.14, 1.17), diff_stride_1 (2.31, 2.30)'."""
  return ', '.join(f'{name} {pair_text(values)}'
                   for name, values in strides.items())


def summary(metrics: Dict[str, Any], workdir: str) -> str:
  """The lines printed at the end of a run: test top-1 (and top-5 where it
  applies), shift consistency, learned strides, conv MMACs, parameters,
  wall time, the workdir and what is in it."""
  test = f'test top-1 {_percent(metrics.get("test_top1"))}'
  if metrics.get('test_top5') is not None:
    test += f', top-5 {_percent(metrics["test_top5"])}'
  if 'test_top1_before_recalibration' in metrics:
    test += (' (before BatchNorm recalibration '
             f'{_percent(metrics["test_top1_before_recalibration"])})')
  consistency = metrics.get('shift_consistency')
  if consistency:
    test += (f'; shift consistency {_percent(consistency.get("circular"))} '
             f'circular, {_percent(consistency.get("crop_pad"))} crop and '
             f'pad (up to {consistency.get("max_shift")} '
             f'{consistency.get("unit", "")})')
  lines = [test]
  strides = metrics.get('learned_strides')
  if strides:
    lines.append(f'learned strides: {strides_text(strides)}')
  cost = []
  mmacs = (metrics.get('complexity') or {}).get('conv_mmacs')
  if mmacs is not None:
    cost.append(f'{mmacs:.1f} conv MMACs per example')
  if metrics.get('num_params') is not None:
    cost.append(f'{metrics["num_params"]:,} parameters')
  if metrics.get('wall_time_seconds') is not None:
    cost.append(f'{_duration(metrics["wall_time_seconds"])} '
                f'({metrics.get("steps", "?")} steps)')
  if metrics.get('skipped_steps_this_time'):
    cost.append(f'{metrics["skipped_steps_this_time"]} non-finite steps '
                'skipped')
  if cost:
    lines.append(', '.join(cost))
  try:
    entries = sorted(os.listdir(workdir))
  except OSError:
    entries = []
  listed = ', '.join(e + ('/' if os.path.isdir(os.path.join(workdir, e))
                          else '') for e in entries)
  lines.append(f'workdir {workdir}: {listed}' if listed else
               f'workdir {workdir}')
  return '\n'.join(lines)
