"""How far apart a library's segment windows are, in mel frames (16 ms each; ``audio.HOP``).

Here, below both the models that encode at a hop and the store that records a library's own
(``meta.segment_hop_frames``), so that neither imports the other.
"""

#: frames between the segment windows of a library made before the hop was recorded (1.28 s)
LEGACY_SEGMENT_HOP = 80
#: frames between the segment windows of a new library (0.768 s): chosen over 80 and 32 on the
#: calibration split of issue 22's package-split evaluation (BENCHMARKS.md, "Library segment hop")
DEFAULT_SEGMENT_HOP = 48
#: a segment hop must be a multiple of this (the backbone's stride: windows share its conv maps)
SEGMENT_HOP_ALIGN = 16
