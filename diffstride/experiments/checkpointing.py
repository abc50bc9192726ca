"""Resuming an interrupted run exactly where its last backup left it.

Keras' `BackupAndRestore` restores the weights and optimizer state of the last
backup, but resumes at the start of the epoch that backup was made in: with
mid-epoch backups (`train.backup_every_steps`) the steps already done in that
epoch are done again, and the run ends with more steps than asked for. Here
the backup's optimizer step count is the truth: a run that resumes at step
`epoch * steps_per_epoch + done` first finishes that epoch on the remaining
`steps_per_epoch - done` batches, then trains the remaining epochs as usual,
so it ends with exactly `epochs * steps_per_epoch` steps and loses at most
the steps since the last backup.

Backups are double (`double_checkpoint=True`): if the newest weights file is
unreadable (a kill while it was written), the previous one is used; if
neither can be read the run stops with an error naming the files, rather
than silently starting from scratch.

The backup's files and their format are those of Keras' BackupAndRestore,
read through `keras_internals` (item 4).
"""

import dataclasses
import os
from typing import Any, Optional

from absl import logging
import keras

from diffstride.experiments import files
from diffstride.experiments import console
from diffstride.experiments import keras_internals
from diffstride.experiments.data import batching


def backup_callback(backup_dir: str, save_freq) -> keras.callbacks.Callback:
  """The BackupAndRestore callback of a run (double checkpoint, kept)."""
  return keras.callbacks.BackupAndRestore(
      backup_dir, save_freq=save_freq, double_checkpoint=True,
      delete_checkpoint=False)


@dataclasses.dataclass(frozen=True)
class ResumePoint:
  step: int  # Optimizer steps already taken.
  epoch: int  # The epoch to resume in (0-based).
  batches_done: int  # Batches of that epoch already trained on.


def _load(model: keras.Model, path: str) -> Optional[Exception]:
  try:
    model.load_weights(path)
  except Exception as e:  # pylint: disable=broad-except
    return e
  return None


def resume_point(model: keras.Model, backup_dir: str,
                 steps_per_epoch: int) -> ResumePoint:
  """Loads the newest readable backup into `model` and says where to resume.

  The model must be built and compiled. Without a backup, returns step 0.

  Raises:
    RuntimeError: backups exist but none can be read.
  """
  path = keras_internals.backup_weights_path(backup_dir)
  previous = keras_internals.previous_backup_weights_path(backup_dir)
  candidates = [p for p in (path, previous) if files.exists(p)]
  if not candidates:
    return ResumePoint(0, 0, 0)
  if model.optimizer is not None and not model.optimizer.built:
    model.optimizer.build(model.trainable_variables)
  errors = []
  for candidate in candidates:
    # Keras only loads files named *.weights.h5: try the previous backup
    # (*.h5.bkp) through a copy.
    readable = candidate
    if candidate != path:
      readable = os.path.join(backup_dir, 'previous.weights.h5')
      files.copy(candidate, readable, overwrite=True)
    error = _load(model, readable)
    if error is not None and readable != candidate:
      files.remove(readable)  # A failed attempt leaves nothing.
    if error is None:
      if candidate != path:
        logging.warning('The newest backup %s could not be read (%s); '
                        'resuming from the previous one, %s. The damaged '
                        'file is kept as %s.corrupt.', path, errors[-1],
                        candidate, path)
        # BackupAndRestore reads `path`: give it the good copy.
        files.rename(path, path + '.corrupt', overwrite=True)
        files.rename(readable, path, overwrite=True)
      break
    errors.append(error)
  else:
    raise RuntimeError(
        f'Cannot resume: no backup in {backup_dir} can be read '
        f'({"; ".join(f"{p}: {e}" for p, e in zip(candidates, errors))}). '
        f'Move {backup_dir} away to start the run from scratch.')
  steps_per_epoch = max(int(steps_per_epoch), 1)
  step = int(model.optimizer.iterations.numpy()) if model.optimizer else 0
  finished = keras_internals.read_backup_epoch(backup_dir)
  if finished is not None and step < finished * steps_per_epoch:
    # Keras skips the optimizer's state when its variables differ from the
    # saved ones (e.g. a constant learning rate instead of a schedule).
    logging.warning(
        'The backup in %s is past epoch %d but its optimizer state was '
        'not restored (did the optimizer configuration change?): resuming '
        'at that epoch with a fresh optimizer.', backup_dir, finished)
    step = finished * steps_per_epoch
  epoch, done = divmod(step, steps_per_epoch)
  console.say(f'Resuming from the backup at step {step} (epoch {epoch + 1}, '
              f'{done} batches into it).')
  # BackupAndRestore starts `fit` at the epoch its metadata names, which a
  # kill between its two writes can leave behind the weights: align it.
  keras_internals.write_backup_epoch(backup_dir, epoch)
  return ResumePoint(step, epoch, done)


def fit_with_resume(model: keras.Model, datasets, callbacks,
                    resume: ResumePoint, *, epochs: int, verbose: Any) -> int:
  """Trains up to `epochs`, from where `resume_point` left the model.

  `datasets` is a `run_data.Datasets`: with its fixed epoch passes, a
  resumed run reads the very batches the uninterrupted run would have.

  Finishes the backup's epoch on the batches it had not reached, then runs
  the remaining epochs (see the module docstring).

  Returns:
    The number of epochs run (partly or fully) by this call.
  """
  # The datasets are shuffled by their pipelines (Keras ignores `shuffle`
  # for a tf.data.Dataset, with a warning when it is True).
  fit = dict(validation_data=datasets.test, callbacks=callbacks,
             verbose=verbose, shuffle=False)
  epochs_run = 0
  first_full_epoch = resume.epoch
  if resume.batches_done and resume.epoch < epochs:
    if datasets.train_epoch is not None:  # The very batches not yet seen.
      rest = datasets.train_epoch(resume.epoch).skip(resume.batches_done)
      steps = dict(steps_per_epoch=(datasets.steps_per_epoch -
                                    resume.batches_done))
    else:
      rest, steps = datasets.train.skip(resume.batches_done), {}
    partial = model.fit(rest, initial_epoch=resume.epoch,
                        epochs=resume.epoch + 1, **steps, **fit)
    epochs_run += len(partial.epoch)
    first_full_epoch += 1
  if first_full_epoch < epochs:
    if datasets.train_epoch is not None:
      # One stream of every epoch's pass: with steps_per_epoch, Keras reads
      # epoch e's batches from it in epoch e.
      train, steps = batching.epoch_stream(
          datasets.train_epoch, first_full_epoch, epochs), dict(
              steps_per_epoch=datasets.steps_per_epoch)
    else:
      train, steps = datasets.train, {}
    epochs_run += len(model.fit(train, initial_epoch=first_full_epoch,
                                epochs=epochs, **steps, **fit).epoch)
  return epochs_run
