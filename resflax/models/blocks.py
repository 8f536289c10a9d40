"""Residual branches F: the convolutions of a unit, as data."""

import dataclasses

from resflax.registry import Registry

BLOCKS: Registry = Registry("model.block")


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  kernel: int
  features: int
  strides: int


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  convs: tuple[ConvSpec, ...]

  @property
  def out_features(self) -> int:
    return self.convs[-1].features


@BLOCKS.register("basic")
def basic(width: int, strides: int, stride_on: str = "1x1") -> BlockSpec:
  """3x3, 3x3 (He et al. 2016 Fig. 5 left)."""
  del stride_on
  return BlockSpec((ConvSpec(3, width, strides), ConvSpec(3, width, 1)))


@BLOCKS.register("bottleneck")
def bottleneck(width: int, strides: int, stride_on: str = "1x1") -> BlockSpec:
  """1x1, 3x3, 1x1 with 4x expansion.

  ``stride_on`` "1x1" strides the first 1x1 (the paper and
  resnet-1k-layers); "3x3" strides the 3x3 (fb.resnet.torch, torchvision).
  """
  if stride_on not in ("1x1", "3x3"):
    raise ValueError(f"model.stride_on={stride_on!r}; choose '1x1' or '3x3'")
  s1, s3 = (strides, 1) if stride_on == "1x1" else (1, strides)
  return BlockSpec(
      (
          ConvSpec(1, width, s1),
          ConvSpec(3, width, s3),
          ConvSpec(1, 4 * width, 1),
      )
  )


@BLOCKS.register("single")
def single(width: int, strides: int, stride_on: str = "1x1") -> BlockSpec:
  """One 3x3 conv: "ResNet-110 with 1-layer skips" (Id. Mappings Tab. 3)."""
  del stride_on
  return BlockSpec((ConvSpec(3, width, strides),))


EXPANSION = {"basic": 1, "bottleneck": 4, "single": 1}
CONVS_PER_UNIT = {"basic": 2, "bottleneck": 3, "single": 1}
