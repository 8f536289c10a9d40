"""ImageNet, streamed from tensorflow-datasets with tf.data.

ImageNet does not fit in host memory, so it is read batch by batch on each
host instead of through ``load_dataset``. TensorFlow is imported only when
an iterator is made.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from resflax.data.base import config_int, config_value
from resflax.data.tfds_source import import_tensorflow, tfds_data_dir
from resflax.errors import DataError

NUM_CLASSES = 1000
DEFAULT_IMAGE_SIZE = 224

# Standard ImageNet statistics (fractions of 255), for use with `normalize` on
# batches from `imagenet_iterator`: computing them would mean a pass over
# 1.28M images, and every published ImageNet ResNet uses these values.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def image_size(config_data: Any) -> int:
  """Output side of the streamed images (config.data.image_size)."""
  return config_int(config_data, "image_size", DEFAULT_IMAGE_SIZE, minimum=1)


def imagenet_iterator(
    config_data: Any,
    split: str,
    batch_size: int,
    *,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    training: bool | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Streams ImageNet batches from TFDS as host numpy arrays.

  Training batches (infinite, shuffled) use an Inception-style random resized
  crop (8%-100% of the area, aspect 3/4-4/3) to `image_size` and a random
  horizontal flip. Evaluation batches (one pass) resize the shorter side to
  `image_size * 256 / 224` and take the central `image_size` crop; the last
  batch is padded and every host yields the same number of batches, with
  `mask` marking real examples, so the eval step compiles once and multi-host
  collectives stay in lockstep. Images are uint8: normalize them on the
  device with `normalize(images, IMAGENET_MEAN, IMAGENET_STD)`.

  Args:
    config_data: `config.data`; uses `name` (default 'imagenet2012' unless it
      starts with 'imagenet'), `tfds_data_dir` and `image_size` (output
      side, default 224; set it, a CIFAR config's 32 is taken literally).
    split: TFDS split, e.g. 'train', 'validation' or 'train[:10000]'.
    batch_size: Per-host batch size.
    seed: Seed of file order, shuffling and augmentation.
    process_index: This host's index; each host reads a disjoint 1/count.
    process_count: Number of hosts.
    training: Augment and repeat; defaults to `split.startswith('train')`.

  Returns:
    An iterator of dicts with 'image' uint8 (B, S, S, 3), 'label' int32 (B,)
    and, for evaluation, 'mask' float32 (B,).

  Raises:
    DataError: if the dataset is not prepared (raised by this call, before
      any batch is requested).
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
        f"need 0 <= process_index ({process_index}) < "
        f"process_count ({process_count})"
    )
  data_dir = tfds_data_dir(config_data)
  tf = import_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  name = str(config_value(config_data, "name", "imagenet2012"))
  if not name.startswith("imagenet"):
    name = "imagenet2012"
  size = image_size(config_data)
  if training is None:
    training = split.startswith("train")

  builder = tfds.builder(name, data_dir=data_dir)
  subsplits = tfds.even_splits(split, n=process_count)
  host_seed = seed * 1_000_003 + process_index  # Distinct stream per host.
  dataset = _read_host_split(
      tfds, builder, name, subsplits[process_index], training, host_seed
  )
  # Per-example stateless seeds: augmentation stays reproducible even with
  # parallel, non-deterministic map scheduling.
  seeds = tf.data.Dataset.random(seed=host_seed).batch(2)
  dataset = tf.data.Dataset.zip((dataset, seeds))
  if training:
    dataset = _training_stream(tf, dataset, batch_size, size, host_seed)
  else:
    dataset = _evaluation_stream(
        tf, dataset, batch_size, size, _largest_shard(builder, subsplits)
    )
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  # Returned, not yielded from this function: a generator would postpone
  # the errors above until the first batch is requested.
  return iter(tfds.as_numpy(dataset))


def _read_host_split(
    tfds: Any,
    builder: Any,
    name: str,
    host_split: Any,
    training: bool,
    host_seed: int,
) -> Any:
  """This host's examples, JPEG bytes undecoded; DataError if unprepared."""
  try:
    return builder.as_dataset(
        split=host_split,
        shuffle_files=training,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=host_seed),
    )
  except Exception as e:  # TFDS raises AssertionError when not prepared.
    raise DataError(
        f"cannot read TFDS dataset {name!r} from {builder.data_dir} "
        f"({type(e).__name__}: {e}). ImageNet must be downloaded by hand "
        f"and prepared with `tfds build {name} --data_dir=DIR "
        "--manual_dir=...`; then set config.data.tfds_data_dir to DIR."
    ) from e


def _largest_shard(builder: Any, subsplits: list[Any]) -> int | None:
  """Examples in the largest host shard, or None if TFDS has no sizes."""
  try:
    return max(builder.info.splits[s].num_examples for s in subsplits)
  except KeyError:  # No split sizes recorded (e.g. tfds.testing.mock_data).
    return None


def _training_stream(
    tf: Any, dataset: Any, batch_size: int, size: int, host_seed: int
) -> Any:
  """Repeats, shuffles, random-resized-crops, flips and batches."""

  def crop(example, rng):
    image_bytes = example["image"]
    crop_rng, flip_rng = tf.unstack(
        tf.random.experimental.stateless_split(rng, 2)
    )
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.image.extract_jpeg_shape(image_bytes),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=crop_rng,
        min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
    image = tf.image.resize(image, [size, size], "bicubic")
    image = tf.image.stateless_random_flip_left_right(image, flip_rng)
    return _to_uint8(tf, image), tf.cast(example["label"], tf.int32)

  dataset = dataset.repeat().shuffle(16 * batch_size, seed=host_seed)
  dataset = dataset.map(crop, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  return dataset.map(lambda image, label: {"image": image, "label": label})


def _evaluation_stream(
    tf: Any, dataset: Any, batch_size: int, size: int, largest: int | None
) -> Any:
  """Centre crops in padded, masked batches; `largest` evens the hosts."""
  resize_size = int(round(size * 256 / 224))

  def crop(example, rng):
    del rng
    image = tf.io.decode_jpeg(example["image"], channels=3)
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    scale = resize_size / tf.minimum(height, width)
    new_size = tf.cast(tf.round(tf.stack([height, width]) * scale), tf.int32)
    image = tf.image.resize(image, new_size, "bilinear", antialias=True)
    top = (new_size[0] - size) // 2
    left = (new_size[1] - size) // 2
    image = image[top : top + size, left : left + size]
    image.set_shape([size, size, 3])
    return _to_uint8(tf, image), tf.cast(example["label"], tf.int32)

  def pad(image, label):
    count = tf.shape(label)[0]
    missing = batch_size - count
    image = tf.pad(image, [[0, missing], [0, 0], [0, 0], [0, 0]])
    image.set_shape([batch_size, size, size, 3])
    label = tf.ensure_shape(tf.pad(label, [[0, missing]]), [batch_size])
    mask = tf.ensure_shape(
        tf.pad(tf.ones([count], tf.float32), [[0, missing]]), [batch_size]
    )
    return {"image": image, "label": label, "mask": mask}

  dataset = dataset.map(crop, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(batch_size).map(pad)
  if largest is None:
    return dataset
  # Hosts whose shard is one example shorter may have one batch fewer; top
  # them up with all-padding batches so every host runs the same steps.
  filler = tf.data.Dataset.from_tensors(
      {
          "image": tf.zeros([batch_size, size, size, 3], tf.uint8),
          "label": tf.zeros([batch_size], tf.int32),
          "mask": tf.zeros([batch_size], tf.float32),
      }
  )
  return dataset.concatenate(filler.repeat()).take(-(-largest // batch_size))


def _to_uint8(tf: Any, image: Any) -> Any:
  """Rounds resized float pixels back to uint8 (bicubic can overshoot)."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
