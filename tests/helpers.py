"""Small configs shared by the tests (tiny widths so every variant runs in milliseconds)."""

from vitkit import ViTConfig


def tiny_cfg(**kw) -> ViTConfig:
    base = dict(image_size=32, patch_size=8, channels=3, num_classes=5, width=32, depth=2, heads=4)
    base.update(kw)
    return ViTConfig(**base)
