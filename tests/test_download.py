"""Tests for CIFAR from its canonical archive: download, resume, stop.

Everything runs against a local HTTP server on 127.0.0.1 serving small
archives in the canonical binary format built here; `cifar.ARCHIVES` is
pointed at it.
"""

import hashlib
import http.server
import io
import logging
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time

import ml_collections
import numpy as np
import pytest
from helpers import REPO

from resflax import data
from resflax.data import cifar, decode, download
from resflax.errors import Stopped
from resflax.training.preemption import StopSignal

CIFAR10_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


# ---------------------------------------------------------------------------
# Small archives in the canonical binary format.
# ---------------------------------------------------------------------------


class Split:

  def __init__(self, images, labels, coarse=None):
    self.images, self.labels, self.coarse = images, labels, coarse

  def records(self):
    """Label byte(s) then the CHW image, as in the real archives."""
    heads = [self.labels[:, None]]
    if self.coarse is not None:
      heads.insert(0, self.coarse[:, None])
    chw = self.images.transpose(0, 3, 1, 2).reshape(len(self.images), -1)
    return np.concatenate(heads + [chw], axis=1).astype(np.uint8).tobytes()


def _split(rng, count, num_classes, with_coarse=False):
  images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
  labels = (np.arange(count) * 7 % num_classes).astype(np.uint8)
  coarse = labels // 5 if with_coarse else None
  return Split(images, labels, coarse)


def _tar_gz(members):
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
    for name, blob in members:
      info = tarfile.TarInfo(name)
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  return buffer.getvalue()


def make_cifar10(seed=0):
  """(archive bytes, train Split, test Split): 20 train + 10 test images."""
  rng = np.random.default_rng(seed)
  train, test = _split(rng, 20, 10), _split(rng, 10, 10)
  blob = train.records()
  batch = len(blob) // 5
  folder = "cifar-10-batches-bin/"
  members = [
      (
          folder + "batches.meta.txt",
          ("\n".join(CIFAR10_NAMES) + "\n\n").encode(),
      )
  ]
  members += [
      (f"{folder}data_batch_{i + 1}.bin", blob[i * batch : (i + 1) * batch])
      for i in range(5)
  ]
  members += [
      (folder + "test_batch.bin", test.records()),
      (folder + "readme.html", b"<html></html>"),
  ]
  return _tar_gz(members), train, test


def make_cifar100(seed=1):
  rng = np.random.default_rng(seed)
  train, test = _split(rng, 20, 100, True), _split(rng, 10, 100, True)
  fine = [f"fine_{i}" for i in range(100)]
  coarse = [f"coarse_{i}" for i in range(20)]
  folder = "cifar-100-binary/"
  archive = _tar_gz(
      [
          (folder + "coarse_label_names.txt", "\n".join(coarse).encode()),
          (folder + "fine_label_names.txt", ("\n".join(fine) + "\n").encode()),
          (folder + "train.bin", train.records()),
          (folder + "test.bin", test.records()),
      ]
  )
  return archive, train, test, tuple(fine)


# ---------------------------------------------------------------------------
# A local HTTP server with Range support.
# ---------------------------------------------------------------------------


class Server:
  """Serves `files` on 127.0.0.1; records each request's path and Range.

  Attributes:
    ranges: answer a Range request with 206 (else 200 and the whole file).
    close_after: send only this many body bytes, then close.
    trickle: (bytes, seconds): send that many bytes per pause, for at most
      TRICKLE_LIMIT_S.
  """

  TRICKLE_LIMIT_S = 30

  def __init__(self):
    self.files, self.requests = {}, []
    self.ranges, self.close_after, self.trickle = True, None, None
    state = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def log_message(self, *args):
        del args

      def do_GET(self):  # pylint: disable=invalid-name
        state.requests.append((self.path, self.headers.get("Range")))
        body = state.files.get(self.path.lstrip("/"))
        if body is None:
          self.send_error(404)
          return
        start = 0
        asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if asked and state.ranges:
          start = int(asked.group(1))
          self.send_response(206)
          self.send_header(
              "Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}"
          )
        else:
          self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if state.close_after is not None:
          payload = payload[: state.close_after]
        try:
          self._send(payload)
        except (BrokenPipeError, ConnectionResetError):
          pass  # The client went away (a stopped download).

      def _send(self, payload):
        if not state.trickle:
          self.wfile.write(payload)
          return
        size, pause = state.trickle
        deadline = time.monotonic() + state.TRICKLE_LIMIT_S
        for at in range(0, len(payload), size):
          if time.monotonic() > deadline:
            return
          self.wfile.write(payload[at : at + size])
          self.wfile.flush()
          time.sleep(pause)

    class Threading(http.server.ThreadingHTTPServer):
      block_on_close = False  # Do not wait for a trickling handler.

    self.httpd = Threading(("127.0.0.1", 0), Handler)
    self.port = self.httpd.server_address[1]
    self.thread = threading.Thread(
        target=self.httpd.serve_forever,
        kwargs={"poll_interval": 0.05},
        daemon=True,
    )
    self.thread.start()

  def serve(self, name, blob):
    """Serves `blob` as /`name`; returns the matching Archive entry."""
    self.files[name] = blob
    return download.Archive(
        f"http://127.0.0.1:{self.port}/{name}",
        len(blob),
        hashlib.sha256(blob).hexdigest(),
    )

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server():
  s = Server()
  yield s
  s.close()


@pytest.fixture
def cifar10(server, monkeypatch):
  """(archive Entry, bytes, train, test) of a served CIFAR-10 archive."""
  blob, train, test = make_cifar10()
  entry = server.serve("cifar-10-binary.tar.gz", blob)
  monkeypatch.setitem(cifar.ARCHIVES, "cifar10", entry)
  return entry, blob, train, test


def cifar_config(tmp_path, name="cifar10", **overrides):
  config = ml_collections.ConfigDict(
      dict(
          name=name,
          path="",
          tfds_data_dir="",
          validation_split=0,
          normalization="pixel_mean",
          image_size=32,
          max_train_images=0,
          max_test_images=0,
          download_dir=str(tmp_path / "downloads"),
      )
  )
  config.update(overrides)
  return config


# ---------------------------------------------------------------------------
# The archive source.
# ---------------------------------------------------------------------------


def test_download_and_read_cifar10(server, cifar10, tmp_path):
  entry, blob, train, test = cifar10
  config = cifar_config(tmp_path)
  ds = data.load_dataset(config)
  np.testing.assert_array_equal(ds.train_images, train.images)
  np.testing.assert_array_equal(ds.train_labels, train.labels)
  np.testing.assert_array_equal(ds.test_images, test.images)
  np.testing.assert_array_equal(ds.test_labels, test.labels)
  assert ds.train_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32
  assert ds.class_names == CIFAR10_NAMES == data.CIFAR10_CLASSES
  assert (ds.name, ds.num_classes) == ("cifar10", 10)
  path = tmp_path / "downloads" / "cifar-10-binary.tar.gz"
  assert path.read_bytes() == blob
  assert not path.with_name(path.name + ".part").exists()
  assert ds.summary().startswith(f"cifar10 from archive {path}: 20 train")
  assert [r[0] for r in server.requests] == ["/cifar-10-binary.tar.gz"]
  # The cached archive is used without any request.
  again = data.load_dataset(config)
  np.testing.assert_array_equal(again.train_images, ds.train_images)
  assert len(server.requests) == 1
  # source_info stays cheap: no request, no file read.
  info = data.source_info(cifar_config(tmp_path / "elsewhere"))
  assert (info.num_classes, info.image_shape) == (10, (32, 32, 3))
  assert len(server.requests) == 1 and not (tmp_path / "elsewhere").exists()


def test_download_and_read_cifar100_fine_labels(server, monkeypatch, tmp_path):
  blob, train, test, names = make_cifar100()
  monkeypatch.setitem(
      cifar.ARCHIVES, "cifar100", server.serve("cifar-100-binary.tar.gz", blob)
  )
  ds = data.load_dataset(cifar_config(tmp_path, "cifar100", validation_split=4))
  assert (ds.num_classes, ds.class_names) == (100, names)
  assert (ds.num_train, ds.num_eval, ds.num_test) == (16, 4, 10)
  np.testing.assert_array_equal(ds.test_images, test.images)
  # The fine labels, not the coarse ones.
  np.testing.assert_array_equal(ds.test_labels, test.labels)
  assert ds.test_labels.max() > 20
  assert sorted(ds.train_labels.tolist() + ds.eval_labels.tolist()) == sorted(
      train.labels.tolist()
  )


def test_default_download_dir_and_mirror(monkeypatch, tmp_path):
  monkeypatch.setenv("RESFLAX_CACHE", str(tmp_path / "cache"))
  assert download.download_dir({"download_dir": ""}) == (
      tmp_path / "cache" / "downloads"
  )
  # config.data.cache_dir moves decoded arrays, not downloads.
  assert download.download_dir({"cache_dir": "/x"}) == (
      tmp_path / "cache" / "downloads"
  )
  assert download.download_dir({"download_dir": str(tmp_path / "d")}) == (
      tmp_path / "d"
  )
  monkeypatch.delenv("RESFLAX_CACHE")
  assert download.download_dir({}) == (
      pathlib.Path("~/.cache/resflax/downloads").expanduser()
  )
  assert cifar.archive("cifar10").url == (
      "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
  )
  monkeypatch.setenv("RESFLAX_CIFAR_URL_BASE", "http://mirror.local/cifar/")
  entry = cifar.archive("cifar100")
  assert entry.url == "http://mirror.local/cifar/cifar-100-binary.tar.gz"
  assert (entry.size, entry.filename) == (168513733, "cifar-100-binary.tar.gz")


def test_archive_put_in_place_by_hand_needs_no_network(monkeypatch, tmp_path):
  blob, train, _ = make_cifar10()
  # A closed port: any request would fail.
  monkeypatch.setitem(
      cifar.ARCHIVES,
      "cifar10",
      download.Archive(
          f"http://127.0.0.1:{closed_port()}/cifar-10-binary.tar.gz",
          len(blob),
          hashlib.sha256(blob).hexdigest(),
      ),
  )
  (tmp_path / "downloads").mkdir()
  (tmp_path / "downloads" / "cifar-10-binary.tar.gz").write_bytes(blob)
  ds = data.load_dataset(cifar_config(tmp_path))
  np.testing.assert_array_equal(ds.train_images, train.images)
  # The wrong file in its place is named, not overwritten.
  (tmp_path / "downloads" / "cifar-10-binary.tar.gz").write_bytes(blob[:-1])
  with pytest.raises(data.DataError, match="is not the file of .* delete it"):
    data.load_dataset(cifar_config(tmp_path))


def test_tfds_data_dir_still_goes_to_tfds(server, cifar10, tmp_path):
  missing = tmp_path / "no_tfds"
  with pytest.raises(data.DataError, match="config.data.tfds_data_dir"):
    data.load_dataset(cifar_config(tmp_path, tfds_data_dir=str(missing)))
  assert not server.requests


def test_not_an_archive_is_named(server, monkeypatch, tmp_path):
  blob = _tar_gz([("cifar-10-batches-bin/batches.meta.txt", b"a\nb\n")])
  monkeypatch.setitem(
      cifar.ARCHIVES, "cifar10", server.serve("cifar-10-binary.tar.gz", blob)
  )
  with pytest.raises(data.DataError, match="has no cifar-10-batches-bin/data"):
    data.load_dataset(cifar_config(tmp_path))


# ---------------------------------------------------------------------------
# Failures, resuming.
# ---------------------------------------------------------------------------


def test_checksum_mismatch_deletes_part(server, cifar10, monkeypatch, tmp_path):
  entry, blob, _, _ = cifar10
  wrong = "f" * 64
  monkeypatch.setitem(
      cifar.ARCHIVES, "cifar10", download.Archive(entry.url, entry.size, wrong)
  )
  with pytest.raises(data.DataError) as info:
    data.load_dataset(cifar_config(tmp_path))
  message = str(info.value)
  assert entry.url in message and wrong in message
  assert hashlib.sha256(blob).hexdigest() in message
  assert "\n" not in message
  assert list((tmp_path / "downloads").iterdir()) == []


def test_server_gone_mid_file_keeps_part(server, cifar10, tmp_path):
  entry, blob, _, _ = cifar10
  server.close_after = 5000
  with pytest.raises(data.DataError) as info:
    data.load_dataset(cifar_config(tmp_path))
  path = tmp_path / "downloads" / "cifar-10-binary.tar.gz"
  part = path.with_name(path.name + ".part")
  message = str(info.value)
  assert entry.url in message and str(part) in message and "5000" in message
  assert not path.exists()
  assert part.read_bytes() == blob[:5000]


def test_resume_with_range(server, cifar10, tmp_path):
  entry, blob, train, _ = cifar10
  downloads = tmp_path / "downloads"
  downloads.mkdir()
  part = downloads / "cifar-10-binary.tar.gz.part"
  part.write_bytes(blob[:7777])
  ds = data.load_dataset(cifar_config(tmp_path))
  assert server.requests == [("/cifar-10-binary.tar.gz", "bytes=7777-")]
  np.testing.assert_array_equal(ds.train_images, train.images)
  assert (downloads / "cifar-10-binary.tar.gz").read_bytes() == blob
  assert not part.exists()


def test_resume_refused_restarts_from_zero(server, cifar10, tmp_path):
  entry, blob, _, _ = cifar10
  server.ranges = False  # Answers 200 with the whole file.
  downloads = tmp_path / "downloads"
  downloads.mkdir()
  (downloads / "cifar-10-binary.tar.gz.part").write_bytes(b"x" * 100)
  path = download.fetch(entry, downloads)
  assert path.read_bytes() == blob
  assert server.requests == [("/cifar-10-binary.tar.gz", "bytes=100-")]


def test_concurrent_fetches_download_once(server, cifar10, tmp_path, caplog):
  caplog.set_level(logging.INFO)
  entry, blob, _, _ = cifar10
  server.trickle = (8192, 0.02)  # Slow enough for the second to wait.
  results, errors = [], []

  def fetch():
    try:
      results.append(download.fetch(entry, tmp_path))
    except BaseException as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=fetch) for _ in range(2)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(30)
  assert not errors and len(results) == 2
  assert results[0] == results[1] and results[0].read_bytes() == blob
  assert len(server.requests) == 1
  assert "waiting for another process downloading" in caplog.text
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "cifar-10-binary.tar.gz"
  ]


def closed_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_no_network_fails_fast_naming_both_ways_out(monkeypatch, tmp_path):
  url = f"http://127.0.0.1:{closed_port()}/cifar-10-binary.tar.gz"
  monkeypatch.setitem(
      cifar.ARCHIVES, "cifar10", download.Archive(url, 1000, "a" * 64)
  )
  started = time.monotonic()
  with pytest.raises(data.DataError) as info:
    data.load_dataset(cifar_config(tmp_path))
  assert time.monotonic() - started < 10
  message = str(info.value)
  assert "\n" not in message
  assert url in message and "refused" in message
  assert str(tmp_path / "downloads" / "cifar-10-binary.tar.gz") in message
  assert "config.data.path" in message
  assert "config.data.download_dir" in message
  assert list((tmp_path / "downloads").iterdir()) == []  # No empty .part.


def test_unanswered_request_fails_within_the_deadline(monkeypatch, tmp_path):
  # A server that accepts but never answers: the open deadline applies.
  with socket.socket() as listener:
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    monkeypatch.setattr(download, "OPEN_DEADLINE_S", 0.5)
    entry = download.Archive(
        f"http://127.0.0.1:{listener.getsockname()[1]}/x.bin", 10, "a" * 64
    )
    started = time.monotonic()
    with pytest.raises(data.DataError, match="no answer within 0.5 s"):
      download.fetch(entry, tmp_path)
    assert time.monotonic() - started < 3


# ---------------------------------------------------------------------------
# Stopping: SIGTERM during a download or a decode.
# ---------------------------------------------------------------------------


def test_interrupting_raises_stopped_only_inside():
  with StopSignal() as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)
    assert stop.received == signal.SIGTERM  # Outside: only the flag.
    stop.received = None
    started = time.monotonic()
    with pytest.raises(Stopped) as info:
      with stop.interrupting():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert time.monotonic() - started < 1
    assert info.value.signum == signal.SIGTERM
    assert not isinstance(info.value, Exception)  # No broad except eats it.
    # A signal received before entering stops on entry.
    with pytest.raises(Stopped):
      with stop.interrupting():
        pass


def test_abandon_kills_busy_decoder_processes():
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  import multiprocessing  # pylint: disable=g-import-not-at-top

  pool = concurrent.futures.ProcessPoolExecutor(
      1, mp_context=multiprocessing.get_context("spawn")
  )
  futures = [pool.submit(time.sleep, 60) for _ in range(4)]
  deadline = time.monotonic() + 20
  while not futures[0].running() and time.monotonic() < deadline:
    time.sleep(0.05)
  pids = list(pool._processes)  # pylint: disable=protected-access
  started = time.monotonic()
  decode.abandon(pool)
  assert time.monotonic() - started < 1
  # The pool's own thread reaps the workers too, so Process.join can lose
  # that race; ask the OS instead.
  while pids and time.monotonic() < started + 5:
    pids = [pid for pid in pids if _exists(pid)]
    time.sleep(0.02)
  assert not pids, "decoder processes still run"
  # Nothing waits on the sleeps: queued ones are cancelled, running ones
  # fail with the pool. (A cancelled future does not wake wait().)
  while not all(f.done() for f in futures) and time.monotonic() < started + 5:
    time.sleep(0.02)
  assert all(f.done() for f in futures)
  assert time.monotonic() - started < 2


def _exists(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


STOP_SCRIPT = """
import atexit, sys
from absl import app
from resflax.data import cifar, download
cifar.ARCHIVES['cifar10'] = download.Archive({url!r}, {size}, {sha!r})
atexit.register(lambda: print(
    'TFDS imported:', 'tensorflow_datasets' in sys.modules, file=sys.stderr))
from resflax import main
if __name__ == '__main__':
  app.run(main.main)
"""


def test_sigterm_during_download_stops_within_2s(server, cifar10, tmp_path):
  entry, blob, _, _ = cifar10
  server.trickle = (256, 0.05)  # ~5 KB/s: the download takes ~20 s.
  script = tmp_path / "run.py"
  script.write_text(
      textwrap.dedent(
          STOP_SCRIPT.format(url=entry.url, size=entry.size, sha=entry.sha256)
      )
  )
  downloads = tmp_path / "downloads"
  command = [
      sys.executable,
      str(script),
      f"--config={REPO}/experiments/cifar_resnet.py:smoke",
      f'--workdir={tmp_path / "run"}',
      "--config.data.name=cifar10",
      f"--config.data.download_dir={downloads}",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  process = subprocess.Popen(
      command,
      cwd=tmp_path,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  try:
    deadline = time.monotonic() + 120
    while not server.requests and time.monotonic() < deadline:
      assert process.poll() is None, process.communicate()
      time.sleep(0.05)
    assert server.requests, "the run never asked for the archive"
    time.sleep(1.0)  # Some bytes arrive.
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    elapsed = time.monotonic() - signalled
  finally:
    if process.poll() is None:
      process.kill()
      process.communicate()
  assert "stopped before training" in stderr, stderr
  assert process.returncode == 143, stderr
  assert elapsed < 2, (elapsed, stderr)
  assert "TFDS imported: False" in stderr
  part = downloads / "cifar-10-binary.tar.gz.part"
  assert not (downloads / "cifar-10-binary.tar.gz").exists()
  kept = part.read_bytes()
  assert 0 < len(kept) < len(blob) and blob.startswith(kept)
