"""The Vision Transformer (Dosovitskiy et al. 2020), with DeiT's distillation token, registers and BEiT's blocks.

Image (B, C, H, W) -> patches (B, N, D) -> [CLS] (+ dist, + registers) joined and
position embedding added -> L pre-norm blocks -> final norm -> head on [CLS] or
on the mean of patch tokens. BEiT (Bao et al. 2021) adds a relative position bias to every
block's attention logits (layers/rel_pos.py). Parameter names follow the timm layout, so a state
dict is readable by anyone who knows that one (DESIGN.md, "Checkpoint layouts").
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ViTConfig
from ..layers import (Attention, AttentionPool, DropPath, HybridEmbed, LayerScale, Mlp, PatchEmbed, RelPosBias,
                      resample_pos_embed, resize_rel_pos_table, sincos_2d_pos_embed)


class Block(nn.Module):
    """Pre-norm encoder block: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ls1 = LayerScale(cfg.width, cfg.layer_scale_init) if cfg.layer_scale_init is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)
        self.ls2 = LayerScale(cfg.width, cfg.layer_scale_init) if cfg.layer_scale_init is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, attn_impl: str = "fused", queries: int | None = None,
                bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, N, D) -> (B, Q, D): every token, or only the first ``queries`` (which still attend to all N).
        ``bias``: added to the attention logits, (heads, N, N) (BEiT's relative position bias)."""
        y, weights = self.attn(self.norm1(x), attn_impl, queries, bias)
        x = (x if queries is None else x[:, :queries]) + self.drop_path1(self.ls1(y))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, weights  # (B, Q, D), (B, heads, Q, N) or None


class PreLogits(nn.Module):
    """The representation layer of the original ViT's in21k models: Linear + tanh."""

    def __init__(self, width: int, size: int):
        super().__init__()
        self.fc = nn.Linear(width, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x))


class VisionTransformer(nn.Module):
    """A ViT built from a :class:`ViTConfig`.

    The interface every vitkit tool uses: ``forward_features`` (tokens after the
    final norm), ``forward_head`` (pool + head), ``forward_intermediates`` (per-block
    tokens) and ``get_attention_maps`` (per-layer attention probabilities).
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.width
        self.num_prefix_tokens = cfg.num_prefix_tokens
        # tokens the head reads: [CLS] (and the distillation token), or every token for "gap"
        self.head_tokens = (2 if cfg.distilled else 1) if cfg.pooling == "cls" else None
        self.patch_embed = HybridEmbed(cfg) if cfg.stem == "hybrid" else PatchEmbed(cfg)  # patches | CNN + patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.distilled else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, d)) if cfg.reg_tokens else None
        # rows of the position embedding that belong to prefix tokens (0 with timm's no_embed_class)
        # (fixed sin-cos covers patches only: the prefix tokens get no position, as in MAE/big_vision)
        self.pos_prefix = cfg.num_prefix_tokens if cfg.pos_embed_prefix and cfg.pos_embed == "learned" else 0
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.pos_prefix + cfg.num_patches, d))
        elif cfg.pos_embed == "sincos2d":  # fixed, recomputed for other grids; not saved
            self.register_buffer("pos_embed", sincos_2d_pos_embed(cfg.grid_size, d), persistent=False)
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(cfg.dropout)
        self.norm_pre = nn.LayerNorm(d, eps=cfg.norm_eps) if cfg.norm_pre else nn.Identity()  # CLIP
        # stochastic depth per block (on the CPU, so that the model can also be built on the meta device)
        rates = torch.linspace(0, cfg.drop_path, cfg.depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        # BEiT: the index of the relative position tables (and the table itself when the blocks share one)
        self.rel_pos_bias = RelPosBias(cfg) if cfg.rel_pos != "none" else None
        self.norm = nn.Identity() if cfg.use_fc_norm else nn.LayerNorm(d, eps=cfg.norm_eps)
        self.fc_norm = nn.LayerNorm(d, eps=cfg.norm_eps) if cfg.use_fc_norm else nn.Identity()
        self.attn_pool = AttentionPool(cfg) if cfg.pooling == "map" else None  # SigLIP
        self.pre_logits = PreLogits(d, cfg.representation_size) if cfg.representation_size else nn.Identity()
        self.head_drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.num_features, cfg.num_classes) if cfg.num_classes else nn.Identity()
        if cfg.distilled:
            self.head_dist = nn.Linear(cfg.num_features, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.grad_checkpointing = False
        self.preprocess_cfg = None  # a PreprocessConfig: how this model wants its pixels (set by loaders)
        if self.patch_embed.proj.weight.device.type != "meta":  # shapes only: nothing to initialise
            self.init_weights()

    # --- set-up ---------------------------------------------------------
    def init_weights(self) -> None:
        """A fresh model starts as timm's ViT does in its default mode, which DeiT's from-scratch recipes
        were tuned with: every Linear (head included) normal with std 0.02 and zero bias (timm's truncation
        bounds are ±2 absolute, so the normal is effectively uncut), LayerNorm at one and zero, the learned
        position embedding normal with std 0.02, the [CLS]/distillation/register tokens normal with std
        1e-6, and every convolution (the patch projection, the hybrid stem) left at PyTorch's default,
        which scales with its fan-in. A fixed std 0.02 for the patch convolution, which vitkit used before,
        is 4x smaller than that default for a 4x4 patch of 3 channels (fan-in 48): a width-96 ViT on
        32x32 digits then stayed at chance for 60 epochs where timm's init learns (benchmarks/init.md).
        Heads replaced for fine-tuning start at zero (``reset_classifier``), as the paper does."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv2d, nn.GroupNorm)):
                m.reset_parameters()  # also right after materialising a meta-device model
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for tok in (self.cls_token, self.reg_token):
            if tok is not None:
                nn.init.normal_(tok, std=1e-6)
        if self.dist_token is not None:  # DeiT's (and timm's deit.py) init: unlike [CLS], truncated normal 0.02
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        if self.attn_pool is not None:  # timm: truncated normal, std latent_dim^-0.5
            nn.init.trunc_normal_(self.attn_pool.latent, std=self.cfg.width ** -0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of keeping its activations."""
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, labels: list[str] | None = None) -> None:
        """Replace the head(s) with fresh zero-initialised ones for ``num_classes`` classes."""
        self.cfg = self.cfg.replace(num_classes=num_classes, labels=labels)
        p = next(self.parameters())
        for name in ("head", "head_dist") if self.cfg.distilled else ("head",):
            head = nn.Linear(self.cfg.num_features, num_classes) if num_classes else nn.Identity()
            if isinstance(head, nn.Linear):
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)
            setattr(self, name, head.to(device=p.device, dtype=p.dtype))

    def set_image_size(self, image_size: int | tuple[int, int]) -> None:
        """Rebuild for another input size, resampling the learned position embedding to the new grid
        (float32, bicubic, prefix rows kept) — what fine-tuning at a new resolution needs."""
        cfg = self.cfg.replace(image_size=image_size)
        old_grid = self.patch_embed.grid_size
        self.patch_embed.image_hw, self.patch_embed.grid_size = cfg.image_hw, cfg.grid_size
        if self.cfg.pos_embed == "learned":
            with torch.no_grad():
                new = resample_pos_embed(self.pos_embed.data, cfg.grid_size, old_grid, self.pos_prefix)
            self.pos_embed = nn.Parameter(new.contiguous())
        if cfg.rel_pos == "per_block":  # BEiT's tables, resampled as timm does (layers/rel_pos.py says why)
            for blk in self.blocks:
                with torch.no_grad():
                    new = resize_rel_pos_table(blk.attn.relative_position_bias_table.data, cfg.grid_size, old_grid)
                blk.attn.relative_position_bias_table = nn.Parameter(new.contiguous())
        if self.rel_pos_bias is not None:
            self.rel_pos_bias.set_grid(cfg.grid_size)
        self.cfg = cfg
        self.init_buffers()

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """Compute the tensors that are derived, not saved (fixed sin-cos embedding, relative position index):
        after a build on the meta device, on ``device`` (default: where the parameters are)."""
        device = device or next(self.parameters()).device
        if self.cfg.pos_embed == "sincos2d":
            dtype = next(self.parameters()).dtype
            self.pos_embed = sincos_2d_pos_embed(self.cfg.grid_size, self.cfg.width, device=device).to(dtype)
        if self.rel_pos_bias is not None:
            self.rel_pos_bias.init_buffers(device)

    @property
    def labels(self) -> list[str] | None:
        return self.cfg.labels

    # --- embedding --------------------------------------------------------
    def _pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """The position embedding for a patch grid, resampled when it differs from the built one."""
        if self.pos_embed is None:
            return None
        if grid == self.patch_embed.grid_size:
            return self.pos_embed
        if self.cfg.pos_embed == "sincos2d":
            return sincos_2d_pos_embed(grid, self.cfg.width, device=self.pos_embed.device).to(self.pos_embed.dtype)
        return resample_pos_embed(self.pos_embed, grid, self.patch_embed.grid_size, self.pos_prefix)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> tokens (B, prefix + gh*gw, D), position embedding added."""
        return self._embed(x)[0]

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x, grid = self.embed_patches(x)
        return self.join_prefix(x), grid

    def embed_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> patch tokens (B, gh*gw, D) with their rows of the position embedding added, and the
        grid (gh, gw); no prefix token yet. ``join_prefix(embed_patches(x)[0])`` is ``embed(x)``: a wrapper that
        keeps only some patches (MAE's masking) takes them in between."""
        x, grid = self.patch_embed(x)  # (B, N, D)
        pos = self._pos_embed_for(grid)
        if pos is not None:
            x = x + pos[:, self.pos_prefix:]  # the patch rows (all of them without prefix rows: no_embed_class)
        return x, grid

    def join_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, n, D), positions added (every patch, or any subset of them) -> (B, prefix + n, D):
        [CLS], the distillation token and registers joined in front (with their position rows where the
        embedding has them), then the embedding dropout and ``norm_pre``."""
        B = x.shape[0]
        prefix = [t.expand(B, -1, -1) for t in (self.cls_token, self.dist_token, self.reg_token) if t is not None]
        if prefix:
            p = torch.cat(prefix, dim=1)  # (B, prefix, D)
            if self.pos_prefix:  # prefix rows are never resampled: the built embedding's first rows
                p = p + self.pos_embed[:, : self.pos_prefix]
            x = torch.cat([p, x], dim=1)
        return self.norm_pre(self.pos_drop(x))

    def attn_bias(self, blk: Block, grid: tuple[int, int]) -> torch.Tensor | None:
        """The additive attention bias of ``blk`` for a patch grid: BEiT's relative position bias (heads, T, T)
        from the block's own table or the shared one; None without relative positions. A wrapper that runs
        the blocks itself passes it on: ``blk(x, bias=model.attn_bias(blk, model.patch_embed.grid_size))``."""
        if self.rel_pos_bias is None:
            return None
        return self.rel_pos_bias(grid, blk.attn.relative_position_bias_table)  # None: the shared table

    # --- the uniform interface ------------------------------------------
    def _run_block(self, blk: Block, x: torch.Tensor, attn_impl: str, grid: tuple[int, int],
                   queries: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = self.attn_bias(blk, grid)
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(blk, x, attn_impl, queries, bias, use_reentrant=False)
        return blk(x, attn_impl, queries, bias)

    def _encode(self, x: torch.Tensor, attn_impl: str, last_queries: int | None = None) -> torch.Tensor:
        """(B, C, H, W) -> tokens after the last block and the final norm: (B, T, D), or (B, Q, D) when
        the last block computes only its first ``last_queries`` tokens (they still attend to all T)."""
        x, grid = self._embed(x)
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            x, _ = self._run_block(blk, x, attn_impl, grid, last_queries if i == last else None)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor, attn_impl: str = "fused") -> torch.Tensor:
        """(B, C, H, W) -> final tokens (B, T, D) after the last norm."""
        return self._encode(x, attn_impl)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, D) -> (B, D): the [CLS] token, the mean of patch tokens, or the attention pool over them."""
        if self.attn_pool is not None:
            return self.attn_pool(x[:, self.num_prefix_tokens:])
        if self.cfg.pooling == "gap":
            return x[:, self.num_prefix_tokens:].mean(dim=1)
        return x[:, 0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, T, D) -> logits (B, classes), or the pooled features when ``pre_logits``."""
        feats = self.pre_logits(self.fc_norm(self.pool(x)))  # (B, num_features)
        if pre_logits:
            return feats
        logits = self.head(self.head_drop(feats))
        if self.cfg.distilled:  # DeiT: average of the class and distillation heads at inference
            dist = self.head_dist(self.head_drop(self.pre_logits(self.fc_norm(x[:, 1]))))
            logits = (logits + dist) / 2
        return logits

    def forward(self, x: torch.Tensor, attn_impl: str = "fused", distilled: bool = False) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, classes), the same function as ``forward_head(forward_features(x))``;
        with ``distilled`` (DeiT training, through a DDP wrapper too) the pair of :meth:`forward_distilled`.

        The last block computes only the tokens the head reads ([CLS], + the distillation token);
        they still attend to every token. The other N tokens' MLP, output projection and attention
        rows in that block are skipped: about 1/16 of a ViT-S/B forward, in inference and training.
        """
        if distilled:
            return self.forward_distilled(x)
        return self.forward_head(self._encode(x, attn_impl, self.head_tokens))

    def forward_distilled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DeiT training: (class-head logits, distillation-head logits), each (B, classes)."""
        if not self.cfg.distilled:
            raise ValueError("forward_distilled needs a model built with distilled=True")
        t = self._encode(x, "fused", self.head_tokens)  # (B, 2, D): [CLS] and the distillation token
        cls = self.head(self.head_drop(self.pre_logits(self.fc_norm(t[:, 0]))))
        dist = self.head_dist(self.head_drop(self.pre_logits(self.fc_norm(t[:, 1]))))
        return cls, dist

    def _block_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        depth = len(self.blocks)
        if indices is None:
            return list(range(depth))
        if isinstance(indices, int):
            if not 1 <= indices <= depth:
                raise ValueError(f"indices={indices}: ask for the last 1..{depth} blocks")
            return list(range(depth - indices, depth))
        out = []
        for i in indices:
            if not -depth <= i < depth:
                raise ValueError(f"block index {i} out of range for a model of depth {depth}")
            out.append(i % depth)
        return out

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None,
                              norm: bool = False, attn_impl: str = "fused") -> list[torch.Tensor]:
        """Per-block token outputs (B, T, D) for the chosen blocks.

        ``indices``: None = every block; an int n = the last n blocks; a list =
        those blocks (negative counts from the end). ``norm`` applies the final norm.
        """
        take = self._block_indices(indices)
        x, grid = self._embed(x)
        out = []
        for i, blk in enumerate(self.blocks[: max(take) + 1]):
            x, _ = self._run_block(blk, x, attn_impl, grid)
            if i in take:
                out.append(self.norm(x) if norm else x)
        return out

    @torch.no_grad()
    def get_attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention probabilities of every layer, each (B, heads, T, T), through the plain path."""
        x, grid = self._embed(x)
        maps = []
        for blk in self.blocks:
            x, w = blk(x, "plain", bias=self.attn_bias(blk, grid))
            maps.append(w)
        return maps

    def predict(self, images, topk: int = 5, **kwargs):
        """Classify image(s) (paths, bytes, PIL images, or a list of them) -> [(label, probability), ...]
        per image, through vitkit's decoder and this model's preprocessing, where the model is
        (``batch_size``, ``max_pixels``; ``vitkit.pipeline`` adds devices and precision)."""
        from .classify import predict

        return predict(self, images, topk=topk, **kwargs)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that weight decay should skip (embeddings, tokens, relative position tables)."""
        tables = {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}
        return {"pos_embed", "cls_token", "dist_token", "reg_token"} | tables

