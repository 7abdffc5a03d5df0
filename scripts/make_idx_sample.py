#!/usr/bin/env python3
"""Writes the first N images and labels of an IDX (MNIST-format) split.

usage: scripts/make_idx_sample.py <images in> <labels in> <images out> <labels out> N
"""
import struct
import sys

images_in, labels_in, images_out, labels_out, n = sys.argv[1:6]
n = int(n)
with open(images_in, "rb") as f:
    magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
    assert magic == 0x803 and n <= count, (magic, count)
    pixels = f.read(n * rows * cols)
with open(labels_in, "rb") as f:
    magic, count = struct.unpack(">II", f.read(8))
    assert magic == 0x801 and n <= count, (magic, count)
    labels = f.read(n)
with open(images_out, "wb") as f:
    f.write(struct.pack(">IIII", 0x803, n, rows, cols) + pixels)
with open(labels_out, "wb") as f:
    f.write(struct.pack(">II", 0x801, n) + labels)
