"""Benchmark lines the project keeps as tests."""

import json
import os
import re
import subprocess
import sys

import pytest
from helpers import REPO

BENCH = os.path.join(REPO, "benchmarks")


def test_presets_cover_every_experiment_case():
  """memory.py/compile_time.py --presets see every case of experiments/."""
  sys.path.insert(0, BENCH)
  try:
    import abstract_step  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(BENCH)
  presets = abstract_step.presets()
  covered = {name for p in presets for name in p.covers}
  files = {
      n[:-3]
      for n in os.listdir(os.path.join(REPO, "experiments"))
      if n.endswith(".py") and n != "__init__.py"
  }
  assert {name.split(":")[0] for name in covered} == files
  assert "cifar_resnet:resnet1202" in covered
  assert "cifar_preact:preact_resnet1001_batch64" in covered
  assert "wide_resnet:wrn28_10" in covered
  assert len(covered) > len(presets)  # twins share one program


def _bench_module(name):
  sys.path.insert(0, BENCH)
  try:
    return __import__(name)
  finally:
    sys.path.remove(BENCH)


def test_tables_list_every_preset_and_resume(tmp_path, capsys):
  """--table lists every preset; a --jsonl preset is not measured again."""
  memory, compile_time = _bench_module("memory"), _bench_module("compile_time")
  presets = _bench_module("abstract_step").presets()
  gib = 2**30
  mem = {"argument": gib, "output": 0, "alias": 0, "temp": 9 * gib}
  mem["peak"] = 10 * gib
  row = {
      "preset": presets[0].name,
      "covers": presets[0].covers,
      "net": "n",
      "batch_per_device": 16,
      "memory": mem,
      "remat_memory": {**mem, "peak": 2 * gib},
  }
  path = tmp_path / "memory.jsonl"
  path.write_text(json.dumps(row) + "\n")
  assert memory.abstract_step.done_names(str(path)) == {presets[0].name}
  memory.table_main(str(path))
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == len(presets) + 2
  assert "| no | yes | model.remat=True: 2.00 GiB (yes | yes) |" in lines[2]
  assert sum("not measured" in line for line in lines) == len(presets) - 1
  cold = {
      "total_s": 9.0,
      "init_s": 1.0,
      "lower_s": 1.0,
      "compile_s": 7.0,
      "init_to_compiled_cpu_s": 5.0,
  }
  path = tmp_path / "compile.jsonl"
  path.write_text(
      json.dumps(
          {
              "preset": presets[0].name,
              "cold": cold,
              "warm": {**cold, "total_s": 2.0, "init_to_compiled_cpu_s": 1.5},
              "load": 1.0,
          }
      )
      + "\n"
  )
  compile_time.table_main(str(path))
  lines = capsys.readouterr().out.splitlines()
  # Wall seconds (cold: total (init / lower / compile)), CPU seconds, load.
  assert "| 9.0 (1.0 / 1.0 / 7.0) | 5.0 | 2.0 | 1.5 | 1.0 |" in lines[2]
  assert sum("not measured" in line for line in lines) == len(presets) - 1


@pytest.mark.slow
def test_compile_1001_over_164_at_most_1_1():
  """Scanning keeps pre-act ResNet-1001's compile within 1.1x ResNet-164's."""
  proc = subprocess.run(
      [
          sys.executable,
          os.path.join(BENCH, "compile_time.py"),
          "--depths",
          "164,1001",
          "--no-unrolled",
          "--repeats",
          "2",
      ],
      capture_output=True,
      text=True,
      timeout=1800,
      check=True,
  )
  print(proc.stdout)  # the figures, for RESULTS.md (pytest -rP shows them)
  match = re.search(
      r"scanned ResNet-1001 / scanned ResNet-164 compile "
      r"\(same unit, minima\) = ([0-9.]+)x",
      proc.stdout,
  )
  assert match, proc.stdout[-2000:]
  assert float(match.group(1)) <= 1.1, proc.stdout[-2000:]
