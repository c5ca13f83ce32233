"""Max |logit difference| between vitkit and the peer libraries at full size (B/16, 224²), random weights.

Each peer model is randomly initialised, saved in its own format, loaded with ``vitkit.load`` and both
forward passes are compared on the same random batch. No downloads.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/weights_parity.py
"""

import tempfile
import time
from pathlib import Path

import torch

import vitkit


def randomise(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def report(name, ours, ref, t_load):
    print(f"{name:48s} max|diff| {(ours - ref).abs().max().item():.2e}   vitkit.load {t_load:5.2f}s")


def main():
    import timm
    import transformers
    from safetensors.torch import save_file
    from timm.models.vision_transformer import _load_weights

    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    tmp = Path(tempfile.mkdtemp())
    b16 = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)

    def load(path, **kw):
        t = time.perf_counter()
        m = vitkit.load(path, **kw)
        return m, time.perf_counter() - t

    with torch.no_grad():
        hf = randomise(transformers.ViTForImageClassification(transformers.ViTConfig(**b16, num_labels=1000)))
        hf.save_pretrained(tmp / "hf")
        ours, t = load(tmp / "hf")
        report("HF ViTForImageClassification B/16 (eps 1e-12)", ours(x), hf(pixel_values=x).logits, t)

        deit = randomise(transformers.DeiTForImageClassificationWithTeacher(
            transformers.DeiTConfig(**b16, num_labels=1000, layer_norm_eps=1e-6)))
        deit.save_pretrained(tmp / "deit")
        ours, t = load(tmp / "deit")
        report("HF DeiTForImageClassificationWithTeacher B/16", ours(x), deit(pixel_values=x).logits, t)

        for name in ("vit_base_patch16_224", "vit_small_patch16_224", "deit_base_distilled_patch16_224",
                     "vit_base_patch16_reg4_gap_256"):
            tm = randomise(timm.create_model(name))
            save_file(tm.state_dict(), tmp / f"{name}.safetensors")
            ours, t = load(tmp / f"{name}.safetensors")
            xi = x if "256" not in name else torch.randn(2, 3, 256, 256)
            report(f"timm {name}", ours(xi), tm(xi), t)

        beit = randomise(transformers.BeitForImageClassification(transformers.BeitConfig(
            **b16, num_labels=1000, use_relative_position_bias=True, use_mean_pooling=True)))
        beit.save_pretrained(tmp / "beit")
        ours, t = load(tmp / "beit")
        report("HF BeitForImageClassification B/16 (mean pool)", ours(x), beit(pixel_values=x).logits, t)

        tm = randomise(timm.create_model("beit_base_patch16_224"))
        save_file(tm.state_dict(), tmp / "beit.safetensors")
        ours, t = load(tmp / "beit.safetensors")
        report("timm beit_base_patch16_224", ours(x), tm(x), t)
        big = timm.create_model("beit_base_patch16_384").eval()  # the same file at 384: tables resampled alike
        big.load_state_dict(timm.models.beit.checkpoint_filter_fn(tm.state_dict(), big))
        ours, t = load(tmp / "beit.safetensors", image_size=384)
        x384 = torch.randn(2, 3, 384, 384)
        report("timm beit_base_patch16_224 loaded at 384", ours(x384), big(x384), t)

        ours = randomise(vitkit.create_model("vit_base_patch16_224"))
        vitkit.save(ours, tmp / "b16.npz", format="npz")
        tm = timm.create_model("vit_base_patch16_224").eval()
        _load_weights(tm, str(tmp / "b16.npz"))
        report("vitkit -> .npz -> timm _load_weights, B/16", ours(x), tm(x), 0.0)


if __name__ == "__main__":
    main()
