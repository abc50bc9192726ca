"""Datasets of the experiments: image and audio sources, built-in data.

  * `sources`: the `Source` abstraction (`describe()` without data, `load()`
    the examples, the same `DatasetInfo`) and what image and audio sources
    share: TFDS reading and missing-dataset messages, data_dir resolution,
    class folders and their held-out split.
  * `images`: `image_datasets` / `dataset_info` (the image pipelines) and
    `image_source` (which source a dataset name is).
  * `image_sources`: what every image source provides, and the TFDS
    (CIFAR, ImageNet) and in-memory (synthetic_frequency, digits,
    textures) sources.
  * `image_folders`: folders of class folders of images.
  * `audio`: `audio_datasets` / `audio_dataset_info` (the audio pipelines)
    and `audio_source` (which source a dataset name is).
  * `audio_sources`: what every audio source provides, the paper's TFDS
    tasks and synthetic_audio.
  * `wav_folders`: folders of class folders of WAV files, WAV reading.
  * `augmentation`: image preprocessing and augmentation ops (batch
    pad-crop-flip, mixup, ImageNet JPEG crops).
  * `waveforms`: waveform ops (loudness normalisation, crops, whole-clip
    windows, resampling).
  * `synthetic`: the built-in generated sets, synthetic_frequency (images)
    and synthetic_audio.
  * `packaged`: real images that installed packages ship, digits
    (scikit-learn) and textures (photos bundled with scikit-image).
  * `batching`: the train-set shuffle / map / batch both pipelines share,
    and the fixed epoch passes of exact resume.
"""
