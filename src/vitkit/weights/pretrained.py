"""Well-known pretrained ViT checkpoints: where they live, their preprocessing and their licence.

``vitkit.load(name)`` accepts the hub id (``google/vit-base-patch16-224``) or an alias
(``vit_base_patch16_224.augreg2_in21k_ft_in1k``). The preprocessing listed here is
used only when the downloaded repository carries none of its own
(``preprocessor_config.json`` or timm's ``pretrained_cfg`` win). Licences are as
stated on each model card; check them before use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.preprocess import PreprocessConfig

# HF ViTImageProcessor of google/vit-*: squash to 224, bilinear, [-1, 1]
_GOOGLE = dict(size=224, resize="squash", crop_pct=1.0, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
# HF DeiTImageProcessor: squash to 256, centre crop 224, bicubic, ImageNet mean/std
_DEIT = dict(size=224, resize="squash", crop_pct=224 / 256, interpolation="bicubic",
             mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
# ImageNet mean/std at 224, bicubic, no crop (facebook/vit-mae-base, facebook/dino-vitb16 processors)
_FB = dict(size=224, resize="squash", crop_pct=1.0, interpolation="bicubic",
           mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
# timm augreg: shortest edge to 248, centre crop 224 (crop_pct 0.9), bicubic, [-1, 1]
_AUGREG = dict(size=224, resize="shortest", crop_pct=0.9, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)


@dataclass(frozen=True)
class Pretrained:
    repo_id: str  # Hugging Face hub repository
    library: str  # "hf" (transformers folder) or "timm" (timm hub folder)
    license: str
    description: str
    preprocess: dict = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    def preprocess_cfg(self) -> PreprocessConfig:
        return PreprocessConfig(**self.preprocess)


PRETRAINED: dict[str, Pretrained] = {p.repo_id: p for p in [
    Pretrained("google/vit-base-patch16-224", "hf", "apache-2.0",
               "ViT-B/16, ImageNet-21k pre-trained, ImageNet-1k fine-tuned at 224 (Dosovitskiy et al.)", _GOOGLE),
    Pretrained("google/vit-base-patch16-224-in21k", "hf", "apache-2.0",
               "ViT-B/16, ImageNet-21k pre-trained, no classifier (pooler = pre-logits)", _GOOGLE),
    Pretrained("google/vit-large-patch16-224", "hf", "apache-2.0",
               "ViT-L/16, ImageNet-21k pre-trained, ImageNet-1k fine-tuned at 224", _GOOGLE),
    *[Pretrained(f"facebook/deit-{s}-patch16-224", "hf", "apache-2.0",
                 f"DeiT-{s[0].upper()}, ImageNet-1k (Touvron et al. 2021)", _DEIT, (f"deit_{s}_patch16_224",))
      for s in ("tiny", "small", "base")],
    *[Pretrained(f"facebook/deit-{s}-distilled-patch16-224", "hf", "apache-2.0",
                 f"DeiT-{s[0].upper()} with distillation token, ImageNet-1k", _DEIT, (f"deit_{s}_distilled_patch16_224",))
      for s in ("tiny", "small", "base")],
    Pretrained("facebook/vit-mae-base", "hf", "apache-2.0 (model card; the MAE repository's own weights are "
               "CC-BY-NC 4.0)", "MAE pre-trained ViT-B/16 encoder (decoder ignored)", _FB),
    Pretrained("facebook/dino-vitb16", "hf", "apache-2.0", "DINO self-supervised ViT-B/16 (no classifier)", _FB),
    Pretrained("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", "timm", "apache-2.0",
               "timm AugReg ViT-B/16, ImageNet-21k then 1k (Steiner et al. 2021)", _AUGREG,
               ("vit_base_patch16_224.augreg2_in21k_ft_in1k",)),
    Pretrained("timm/vit_base_patch16_224.augreg_in21k_ft_in1k", "timm", "apache-2.0",
               "timm AugReg ViT-B/16, ImageNet-21k then 1k", _AUGREG, ("vit_base_patch16_224.augreg_in21k_ft_in1k",)),
    Pretrained("timm/vit_small_patch16_224.augreg_in21k_ft_in1k", "timm", "apache-2.0",
               "timm AugReg ViT-S/16, ImageNet-21k then 1k", _AUGREG, ("vit_small_patch16_224.augreg_in21k_ft_in1k",)),
]}
_ALIASES = {a: p.repo_id for p in PRETRAINED.values() for a in p.aliases}


def find_pretrained(name: str) -> Pretrained | None:
    """The table entry for a hub id or alias, or None."""
    return PRETRAINED.get(name) or PRETRAINED.get(_ALIASES.get(name, ""))


def list_pretrained() -> list[str]:
    """The hub ids of the known checkpoints."""
    return sorted(PRETRAINED)
