"""The README is executed: every shell and Python block runs here, or says
why not in an HTML comment right above it (``<!-- not run: REASON -->``).

Every block runs as a user runs it: with resflax installed from the built
wheel in a fresh venv without TensorFlow (``installed``, tests/wheel_env.py).
Shell blocks run line by line from a scratch directory outside the checkout
(where ``experiments/NAME.py`` names the files shipped with resflax and
``../shared`` is the project's shared folder when there is one). Commands of
``python -m resflax.main`` are full recipes, so each runs shrunk: the
experiment's own ``smoke`` token is added to its argument
(``cifar_resnet.py:110`` runs as ``cifar_resnet.py:110,smoke``). Python
blocks run in a fresh interpreter after the set-up their comment names
(``<!-- run after: NAME -->``, see ``PRELUDES``), with
``load_experiment`` adding the same ``smoke`` token.
"""

import os
import re
import shlex
import subprocess

import pytest
from conftest import REPO

README = REPO / "README.md"
SHARED = REPO.parent / "shared"
FENCE = re.compile(
    r"(?:<!--\s*(?P<directive>[^>]*?)\s*-->\s*\n)?```(?P<lang>bash|python)\n"
    r"(?P<body>.*?)```",
    re.S,
)

# Python set-up a block may name: what the surrounding prose assumes exists.
PRELUDES = {
    "images": """
import jax, jax.numpy as jnp
images = jnp.zeros((2, 32, 32, 3))
key = jax.random.key(1)
""",
    "trained_network": """
import jax, jax.numpy as jnp, numpy as np
import resflax
model = resflax.create_model("resnet20", widths=(4, 8, 8))
x = jnp.asarray(np.random.RandomState(0).rand(8, 32, 32, 3), jnp.float32)
y = jnp.arange(8) % 10
variables = model.init(jax.random.key(0), x)
rng = np.random.RandomState(1)
images = rng.randint(0, 255, (8, 32, 32, 3)).astype(np.uint8)
labels = np.arange(8) % 10
mean, std = np.full(3, 0.5), np.full(3, 0.25)
key = jax.random.key(1)
""",
}

# Python blocks: the experiment's smoke token is added to every load.
SMOKE_LOADS = """
import resflax.config as _config
_load = _config.load_experiment
def _smoke_load(path, arg=None):
  if arg is None and ":" in path.rsplit("/", 1)[-1]:
    path, arg = path.rsplit(":", 1)
  return _load(path, f"{arg},smoke" if arg else "smoke")
_config.load_experiment = _smoke_load
"""


def blocks():
  """(index, language, directive, body) of every fenced block."""
  text = README.read_text()
  return [
      (i, m["lang"], (m["directive"] or "").strip(), m["body"])
      for i, m in enumerate(FENCE.finditer(text))
  ]


def _ids(block):
  index, lang, _, body = block
  first = next((l for l in body.splitlines() if l.strip()), "")
  return f"{index}-{lang}-{first[:40]}"


RUNNABLE = [b for b in blocks() if not b[2].startswith("not run:")]


def test_every_block_runs_or_says_why():
  assert len(blocks()) >= 8, "the README lost its examples?"
  for index, lang, directive, body in blocks():
    if directive.startswith("not run:"):
      assert (
          len(directive) > len("not run:") + 10
      ), f"block {index} ({body[:60]!r}): say why it is not run"
    else:
      assert not directive or directive.startswith(
          "run after:"
      ), f"block {index}: unknown directive {directive!r}"


def commands(body):
  """The block's shell commands, continuation lines joined, no comments."""
  joined = re.sub(r"\\\n\s*", " ", body)
  out = []
  for line in joined.splitlines():
    line = line.split(" #", 1)[0].strip()
    if line and not line.startswith("#"):
      out.append(line)
  return out


def smoke_argv(line):
  """``python -m resflax.main ...`` with the experiment's smoke token."""
  argv = shlex.split(line)
  assert argv[:3] == ["python", "-m", "resflax.main"], (
      f"the README test runs only resflax.main commands: {line!r}; mark the "
      "block <!-- not run: REASON -->"
  )
  for i, a in enumerate(argv):
    if a == "--config":
      path, _, arg = argv[i + 1].partition(":")
      if "smoke" not in arg.split(","):
        argv[i + 1] = f"{path}:{arg},smoke" if arg else f"{path}:smoke"
  return argv[1:]


@pytest.fixture
def scratch(tmp_path):
  """A directory outside the checkout with ``../shared`` where the README
  expects it."""
  work = tmp_path / "work"
  work.mkdir()
  if SHARED.exists():
    (tmp_path / "shared").symlink_to(SHARED)
  return work


def _needs_shared(text):
  if "../shared/" in text and not SHARED.exists():
    pytest.skip(f"{SHARED} is absent")


def _run(argv, cwd, env):
  proc = subprocess.run(
      argv, cwd=cwd, capture_output=True, text=True, timeout=900, env=env
  )
  assert proc.returncode == 0, (
      f"{argv} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n"
      f"{proc.stderr[-4000:]}"
  )
  return proc


@pytest.mark.parametrize(
    "block", [b for b in RUNNABLE if b[1] == "bash"], ids=_ids
)
def test_shell_block_runs(block, scratch, installed):
  python, env, _ = installed
  _, _, _, body = block
  _needs_shared(body)
  for line in commands(body):
    _run([str(python)] + smoke_argv(line), scratch, env)


@pytest.mark.parametrize(
    "block", [b for b in RUNNABLE if b[1] == "python"], ids=_ids
)
def test_python_block_runs(block, scratch, installed):
  python, env, _ = installed
  _, _, directive, body = block
  _needs_shared(body)
  prelude = ""
  if directive.startswith("run after:"):
    prelude = PRELUDES[directive.split(":", 1)[1].strip()]
  source = SMOKE_LOADS + prelude + body
  # The CLI's compilation cache (``$RESFLAX_CACHE/jax``) for blocks that
  # compile outside train_and_evaluate: a rerun of the suite skips compiling.
  cache = os.path.join(env["RESFLAX_CACHE"], "jax")
  env = {
      **env,
      "JAX_COMPILATION_CACHE_DIR": cache,
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
  }
  _run([str(python), "-c", source], scratch, env)


@pytest.mark.parametrize(
    "command",
    [
        "--config experiments/cifar_resnet.py:smoke",
        "--config experiments/cifar_shortcuts.py:smoke",
        "--config experiments/cifar_lesion.py:smoke",
    ],
)
def test_the_smoke_commands_are_run_from_the_wheel(command):
  """CI runs a smoke run, a smoke sweep and the lesion smoke from the wheel:
  these README blocks."""
  assert any(command in b[3] for b in RUNNABLE if b[1] == "bash"), command
