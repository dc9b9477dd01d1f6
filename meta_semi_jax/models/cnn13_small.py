"""CNN-13 scaled to 28x28 grey images and a 2-core CPU, for Fashion-MNIST.

ICT's CNN-13 (``cnn13.py``) with the same layers in the same order: three 3x3
convolutions, max-pool, three 3x3 convolutions, max-pool, a valid 3x3 convolution and
two 1x1 convolutions, global average pooling and a dense classifier, every layer
weight-normalised and followed by BatchNorm and LeakyReLU(0.1), with the same optional
network noise. What is scaled, and why:

- the widths, by 1/16: 8, 16 and 32-16-8 channels instead of 128, 256 and 512-256-128
  (12,844 parameters instead of 3.1 million). A convolution's cost grows with the
  square of the width: a forward pass costs 2.2 million multiply-adds per image, 1/250
  of the full network's on the same images, so a Meta-Semi step of 25 + 75 images is
  3.0 GFLOP (XLA's count). That is what lets Tables 1 and 5 (about 50 runs, most of
  them Meta-Semi steps) run on a 2-core CPU in hours; at 1/8 (width 16) a step costs
  3.8 times as much (11.4 GFLOP), and the runs would have to be a quarter as long.
- the input: 28x28x1, so the two max-pools give 14x14 and 7x7 maps and the valid 3x3
  convolution 5x5 (CIFAR's 32x32 give 8x8 and 6x6). Nothing in the network depends on
  the size; the first convolution takes the data's one channel.
"""
from __future__ import annotations

from meta_semi_jax.models.cnn13 import CNN13


class CNN13Small(CNN13):
    """``CNN13`` with ``width`` 8 (channels 8, 16 and 32-16-8); see the module."""

    width: int = 8
