"""Helpers for the checkpoint tests: random weights, comparing models."""

import torch


def randomise(model: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> torch.nn.Module:
    """Fill every parameter and buffer-free weight with N(0, scale²) so that no key can be mixed up unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def mae_same_outputs(ours, theirs, x, noise, atol=1e-5):
    """vitkit's MAE and transformers' ViTMAEForPreTraining on the same pixels and noise: same mask, same
    reconstruction and loss within ``atol``."""
    with torch.no_grad():
        ref = theirs(pixel_values=x, noise=noise)
        loss, pred, mask = ours(x, noise=noise)
    assert torch.equal(mask, ref.mask)
    assert max_diff(pred, ref.logits) <= atol
    assert abs(loss.item() - ref.loss.item()) <= atol
