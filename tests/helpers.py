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


def fit(model, images, labels, epochs: int, lr: float, batch: int = 32, weight_decay: float = 0.01,
        one_cycle: bool = False):
    """A plain AdamW loop (optionally one-cycle, 15 % warm-up) over shuffled mini-batches: tiny trained models."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * -(-len(labels) // batch),
                                                 pct_start=0.15) if one_cycle else None)
    for _ in range(epochs):
        perm = torch.randperm(len(labels))
        for i in range(0, len(perm), batch):
            idx = perm[i:i + batch]
            loss = torch.nn.functional.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
    return model.eval()


def digits_vit(epochs: int):
    """(a width-48, depth-2 ViT fitted for ``epochs`` on the built-in 8x8 digits, seed 0, with grey 0..1
    preprocessing; the digits' (train, val) splits): the small trained classifier of the precision tests."""
    import torch

    import vitkit
    from vitkit.data.builtin import load_digits

    torch.manual_seed(0)
    train, val = load_digits()
    cfg = vitkit.ViTConfig(image_size=8, patch_size=2, channels=1, width=48, depth=2, heads=4, num_classes=10,
                           labels=[str(c) for c in train.classes])
    model = fit(vitkit.create_model(cfg), train.images, train.labels, epochs=epochs, lr=3e-3)
    model.preprocess_cfg = vitkit.PreprocessConfig(size=(8, 8), mode="L", mean=(0.0,), std=(1.0,))
    return model, (train, val)
