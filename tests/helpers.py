"""Small configs shared by the tests (tiny widths so every variant runs in milliseconds)."""

from vitkit import ViTConfig


def tiny_cfg(**kw) -> ViTConfig:
    base = dict(image_size=32, patch_size=8, channels=3, num_classes=5, width=32, depth=2, heads=4)
    base.update(kw)
    return ViTConfig(**base)


def disk_full_on(monkeypatch, module, name_part: str) -> None:
    """Make ``module.os.fsync`` fail with ENOSPC for files whose path holds ``name_part``: a full disk, mid-write."""
    import errno
    import os

    real = os.fsync

    def fsync(fd):
        if name_part in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(module.os, "fsync", fsync)
