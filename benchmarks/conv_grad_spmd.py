"""What the CPU convolution gradient adds to a step sharded over 8 devices.

Compiles one preset's training step (default ``cifar_resnet:resnet20``)
for ``--devices`` (8) fake CPU devices, once with ``model.cpu_conv_grad``
``auto`` (the chunked CPU weight gradient of ``models/cpu_conv.py``) and
once ``off`` (XLA's own gradient, the program a GPU or TPU compiles), with
``train.fast_compile``, and prints per variant the compiled HLO's size and
its counts of convolutions and collectives: one JSON line each.

  python benchmarks/conv_grad_spmd.py [--preset cifar_resnet:resnet20]
      [--devices 8]
"""

import argparse
import json
import re
import sys
import time

import abstract_step

OPS = (
    "convolution",
    "collective-permute",
    "all-reduce",
    "all-gather",
    "dynamic-slice",
)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="cifar_resnet:resnet20")
  parser.add_argument("--devices", type=int, default=8)
  args = parser.parse_args()
  (preset,) = [
      p for p in abstract_step.presets(args.preset) if p.name == args.preset
  ]
  for grad in ("auto", "off"):
    config = preset.config()
    config.train.fast_compile = True
    config.model.cpu_conv_grad = grad
    _, step, state, data = abstract_step.preset_step(config)
    start = time.perf_counter()
    text = step.lower(state, *data).compile().as_text()
    row = {
        "preset": preset.name,
        "cpu_conv_grad": grad,
        "compile_s": round(time.perf_counter() - start, 1),
        "hlo_lines": text.count("\n"),
    }
    for op in OPS:
      row[op] = len(re.findall(rf"\b{op}(-start)?\(", text))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  if "--devices" in sys.argv:
    abstract_step.fake_devices(int(sys.argv[sys.argv.index("--devices") + 1]))
  else:
    abstract_step.fake_devices(8)
  main()
