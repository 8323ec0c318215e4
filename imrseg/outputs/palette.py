"""The colours of classes: PASCAL VOC's palette, which an indexed mask carries
(so dataset tools and image viewers show it in the usual colours) and which the
overlay and the review page draw each class in."""
from __future__ import annotations


def voc_palette() -> list[int]:
    """PASCAL VOC's 256-colour palette as 768 values (r, g, b, r, g, b, ...): the
    bits of each index spread over the three channels, high bits first."""
    palette = []
    for index in range(256):
        rgb = [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
        palette += rgb
    return palette


PALETTE = voc_palette()


def class_colour(index: int) -> tuple[int, int, int]:
    """RGB of class `index` (1 = the first class) in the mask's palette."""
    return tuple(PALETTE[3 * index:3 * index + 3])
