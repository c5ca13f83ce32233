"""Masked autoencoders (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners").

A wrapper around a vitkit :class:`~vitkit.models.vit.VisionTransformer` (DESIGN.md: wrap, don't subclass):

    image (B, C, H, W) -> patch tokens + positions (encoder.embed_patches)       (B, N, D)
      -> per-sample random masking: keep N_keep = int(N * (1 - mask_ratio))       (B, N_keep, D)
      -> prefix tokens joined ([CLS], registers... whatever the encoder has)      (B, P + N_keep, D)
      -> the encoder's blocks and final norm                                      (B, P + N_keep, D)
      -> decoder: Linear to the decoder width, a learned mask token in every masked place, the patches
         un-shuffled to image order, fixed 2-D sin-cos positions (zero rows for the prefix tokens),
         ViT blocks, LayerNorm, Linear to P*P*C pixels per patch                 (B, N, P*P*C)
      -> loss: mean squared error per patch, averaged over the MASKED patches only.

The encoder sees the visible patches only; it stays a plain vitkit model (``mae.encoder``) that is saved and
fine-tuned as any other. Numerics follow MAE's code and transformers' ``ViTMAEForPreTraining`` (which
vitkit reads and writes, ``vitkit.weights.hf_mae_format``): the same ``noise`` gives the same mask, loss and
prediction.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ViTConfig
from ..models.vit import Block, VisionTransformer
from ..utils.atomic import atomic_write

# MAE's decoder (Table 1 of the paper: 8 blocks of width 512, 16 heads, MLP ratio 4), sized for ViT-B/L/H.
# Small encoders (width 96-192 at 32 px) want a much smaller one: a width near the encoder's and 1-4 blocks.
DECODER_WIDTH, DECODER_DEPTH, DECODER_HEADS = 512, 8, 16
NORM_PIX_EPS = 1e-6  # MAE's (var + 1e-6) ** 0.5 in the per-patch normalisation of the target


def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by sorting noise (MAE's ``random_masking``).

    x (B, N, D) patch tokens; noise (B, N), uniform in [0, 1) when not given (drawn from ``generator`` when
    given, never from the global RNG in that case). The patches with the smallest noise are kept:
    len_keep = int(N * (1 - mask_ratio)) of them, the same count in every sample.

    Returns (x_kept (B, len_keep, D) in the order of rising noise, mask (B, N) float32 in image order with
    0 = keep, 1 = masked, ids_restore (B, N): ``gather(cat([x_kept, anything]), 1, ids_restore)`` puts every
    token back in its image place).
    """
    if x.ndim != 3:
        raise ValueError(f"random_masking takes tokens (B, N, D), got a tensor of shape {tuple(x.shape)}")
    if not (isinstance(mask_ratio, (int, float)) and not isinstance(mask_ratio, bool) and 0 <= mask_ratio < 1):
        raise ValueError(f"mask_ratio must be a number in [0, 1), got {mask_ratio!r}")
    B, N, D = x.shape
    len_keep = int(N * (1 - mask_ratio))
    if len_keep < 1:
        raise ValueError(f"mask_ratio {mask_ratio} keeps no patch of {N}; use a smaller ratio")
    if noise is None:
        where = generator.device if generator is not None else x.device
        noise = torch.rand(B, N, generator=generator, device=where).to(x.device)
    elif tuple(noise.shape) != (B, N):
        raise ValueError(f"noise must be (batch, patches) = ({B}, {N}), got {tuple(noise.shape)}")
    # stable: ties (which uniform noise almost never has) are broken by position, on every device alike
    ids_shuffle = torch.argsort(noise.to(x.device), dim=1, stable=True)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1, stable=True)
    ids_keep = ids_shuffle[:, :len_keep]  # (B, len_keep)
    x_kept = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, D))
    mask = torch.ones(B, N, device=x.device)  # 0 = keep, 1 = masked (in shuffled order, then un-shuffled)
    mask[:, :len_keep] = 0
    return x_kept, torch.gather(mask, 1, ids_restore), ids_restore


def mae_sincos_pos_embed(grid: tuple[int, int], dim: int, prefix: int = 0, temperature: float = 10000.0,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position embedding (``get_2d_sincos_pos_embed``), (1, prefix + gh*gw, dim) float32.

    Channels [sin(w·ω), cos(w·ω), sin(h·ω), cos(h·ω)], each dim/4 wide, with ω_i = temperature^(-i / (dim/4)),
    computed in float64 (MAE's numpy); w is the column and h the row of the patch, patches row by row.
    This is the layout of the released MAE weights and of transformers' ViTMAE (which swaps its halves into
    it). ``prefix`` zero rows come first: the [CLS] (and any other prefix token) gets no position.
    vitkit's ``sincos_2d_pos_embed`` (big_vision) divides by dim/4 - 1 instead: another embedding.
    """
    if dim % 4:
        raise ValueError(f"MAE's sin-cos position embedding needs a width divisible by 4, got {dim}")
    gh, gw = grid
    q = dim // 4
    omega = 1.0 / temperature ** (torch.arange(q, dtype=torch.float64, device=device) / q)  # (dim/4,)
    h, w = torch.meshgrid(torch.arange(gh, dtype=torch.float64, device=device),
                          torch.arange(gw, dtype=torch.float64, device=device), indexing="ij")
    w = w.flatten()[:, None] * omega[None]  # (gh*gw, dim/4)
    h = h.flatten()[:, None] * omega[None]
    emb = torch.cat([w.sin(), w.cos(), h.sin(), h.cos()], dim=1)
    emb = torch.cat([torch.zeros(prefix, dim, dtype=emb.dtype, device=device), emb])
    return emb.float()[None]


class MAE(nn.Module):
    """A masked autoencoder around ``encoder``; ``loss, pred, mask = mae(imgs, noise=noise)``.

    ``decoder_width``/``decoder_depth``/``decoder_heads``/``decoder_mlp_ratio``: the decoder's blocks (MAE's
    512/8/16/4 by default, for ViT-B and up; a ViT of width ~100 at 32 px wants ~its own width and 1-4
    blocks). ``mask_ratio``: the share of patches masked (0.75). ``norm_pix_loss``: the target is each patch
    normalised by its own mean and variance (MAE's better-representations option). ``decoder_norm_eps``:
    the decoder's LayerNorm eps (None: the encoder's ``norm_eps``; transformers uses ``layer_norm_eps``,
    1e-12 by default, for both). The decoder's attention biases and GELU follow the encoder's.

    Refused: BEiT's relative positions (the bias is per pair of grid places, and the visible places differ
    per sample), hybrid CNN stems (the CNN would see the masked patches) and ``dynamic_img_pad``.
    An encoder without a final norm (mean pooling with ``fc_norm``) gets one here (``latent_norm``): MAE
    normalises what the decoder reads.
    """

    def __init__(self, encoder: VisionTransformer, decoder_width: int = DECODER_WIDTH,
                 decoder_depth: int = DECODER_DEPTH, decoder_heads: int = DECODER_HEADS,
                 decoder_mlp_ratio: float = 4.0, mask_ratio: float = 0.75, norm_pix_loss: bool = False,
                 decoder_norm_eps: float | None = None):
        super().__init__()
        if not isinstance(encoder, VisionTransformer):
            raise ValueError(f"MAE wraps a vitkit VisionTransformer, got {type(encoder).__name__}")
        ecfg = encoder.cfg
        why = [w for bad, w in ((ecfg.rel_pos != "none", "BEiT's relative position bias (rel_pos)"),
                                (ecfg.stem == "hybrid", "a hybrid CNN stem (it would see the masked patches)"),
                                (ecfg.dynamic_img_pad, "dynamic_img_pad (the pixel target would need the padding)"))
               if bad]
        if why:
            raise ValueError(f"MAE cannot wrap an encoder with {'; '.join(why)}")
        _check_ratio(mask_ratio)
        if not isinstance(norm_pix_loss, bool):
            raise ValueError(f"norm_pix_loss must be true or false, got {norm_pix_loss!r}")
        eps = ecfg.norm_eps if decoder_norm_eps is None else decoder_norm_eps
        try:  # the decoder's blocks are vitkit Blocks: a ViTConfig says their width, heads, MLP, eps, GELU, biases
            self.decoder_cfg = ViTConfig(
                image_size=ecfg.image_size, patch_size=ecfg.patch_size, channels=ecfg.channels, num_classes=0,
                width=decoder_width, depth=decoder_depth, heads=decoder_heads, mlp_ratio=decoder_mlp_ratio,
                qkv_bias=ecfg.qkv_bias if isinstance(ecfg.qkv_bias, bool) else True, norm_eps=eps, act=ecfg.act,
                pos_embed="none", class_token=False, pooling="gap", fc_norm=False)
        except ValueError as e:
            raise ValueError(f"MAE decoder (decoder_width/decoder_depth/decoder_heads/decoder_mlp_ratio/"
                             f"decoder_norm_eps): {e}") from None
        if decoder_width % 4:
            raise ValueError(f"MAE decoder_width must be divisible by 4 (its sin-cos positions), got {decoder_width}")
        self.encoder = encoder
        self.mask_ratio = float(mask_ratio)
        self.norm_pix_loss = norm_pix_loss
        self.patch_size, self.channels = ecfg.patch_size, ecfg.channels
        self.num_prefix_tokens = ecfg.num_prefix_tokens
        d, dd = ecfg.width, decoder_width
        own_norm = isinstance(encoder.norm, nn.Identity)  # mean pooling with fc_norm: no norm after the blocks
        self.latent_norm = nn.LayerNorm(d, eps=ecfg.norm_eps) if own_norm else nn.Identity()
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        # fixed (not trained), saved with the MAE's state: a checkpoint's own values are kept when read
        self.register_buffer("decoder_pos_embed", mae_sincos_pos_embed(ecfg.grid_size, dd, self.num_prefix_tokens))
        self.decoder_blocks = nn.ModuleList(Block(self.decoder_cfg) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(dd, eps=eps)
        self.decoder_pred = nn.Linear(dd, self.patch_size ** 2 * self.channels)
        self.grad_checkpointing = False
        self.init_decoder()

    # --- set-up -------------------------------------------------------------------
    def init_decoder(self) -> None:
        """MAE's initialisation of the decoder: xavier-uniform Linear weights (the fused qkv as one matrix, as
        MAE's timm blocks have it), zero biases, unit LayerNorms, mask token N(0, 0.02²)."""
        for m in [self.latent_norm, self.decoder_embed, *self.decoder_blocks.modules(), self.decoder_norm,
                  self.decoder_pred]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    @torch.no_grad()
    def init_encoder(self, fixed_pos_embed: bool = True) -> None:
        """MAE's initialisation of a fresh encoder (optional: the wrapper keeps the encoder's weights unless
        asked): xavier-uniform Linear weights and patch kernel (as a Linear), zero biases, unit LayerNorms,
        prefix tokens N(0, 0.02²); with ``fixed_pos_embed`` a learned position embedding is set to MAE's
        sin-cos (zero prefix rows) and frozen (``requires_grad=False``), as MAE trains. The head is left."""
        enc = self.encoder
        for name, m in enc.named_modules():
            if name.startswith(("head", "attn_pool")):
                continue
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for tok in (enc.cls_token, enc.dist_token, enc.reg_token):
            if tok is not None:
                nn.init.normal_(tok, std=0.02)
        if fixed_pos_embed and isinstance(enc.pos_embed, nn.Parameter):
            enc.pos_embed.copy_(mae_sincos_pos_embed(enc.patch_embed.grid_size, enc.cfg.width, enc.pos_prefix))
            enc.pos_embed.requires_grad_(False)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the encoder's and the decoder's blocks in the backward pass."""
        self.grad_checkpointing = enable
        self.encoder.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        """Parameter names weight decay skips: the encoder's (tokens, position embedding) and the mask token
        (vitkit's convention; MAE's own code decays the [CLS] and mask tokens, which are 3-D)."""
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {"mask_token"}

    # --- pixels <-> patches ----------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, gh*gw, P*P*C), each patch's pixels row by row, channels last (MAE's order)."""
        p, c = self.patch_size, self.channels
        if imgs.ndim != 4 or imgs.shape[1] != c or imgs.shape[2] % p or imgs.shape[3] % p:
            raise ValueError(f"patchify takes images (B, {c}, H, W) with H and W multiples of {p}, "
                             f"got {tuple(imgs.shape)}")
        B, _, H, W = imgs.shape
        x = imgs.reshape(B, c, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, p, p, C)
        return x.reshape(B, (H // p) * (W // p), p * p * c)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, gh*gw, P*P*C) -> (B, C, gh*P, gw*P); ``grid`` (gh, gw) defaults to the encoder's (or a square)."""
        p, c = self.patch_size, self.channels
        if x.ndim != 3 or x.shape[2] != p * p * c:
            raise ValueError(f"unpatchify takes (B, patches, {p * p * c}), got {tuple(x.shape)}")
        grid = grid or self._grid_of(x.shape[1])
        if grid[0] * grid[1] != x.shape[1]:
            raise ValueError(f"unpatchify: {x.shape[1]} patches do not make a {grid[0]}x{grid[1]} grid")
        B = x.shape[0]
        x = x.reshape(B, grid[0], grid[1], p, p, c).permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, p)
        return x.reshape(B, c, grid[0] * p, grid[1] * p)

    def _grid_of(self, n: int) -> tuple[int, int]:
        built = self.encoder.patch_embed.grid_size
        if n == built[0] * built[1]:
            return built
        side = round(n ** 0.5)
        if side * side != n:
            raise ValueError(f"{n} patches: not the encoder's {built[0]}x{built[1]} grid nor a square; pass grid=")
        return (side, side)

    def noise_for(self, imgs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Masking noise (B, N) for ``imgs``, uniform in [0, 1), drawn from ``generator`` (on its device) and moved
        to the images' device: what ``forward(imgs, noise=...)`` takes for a masking that resumes exactly."""
        B, _, H, W = imgs.shape
        n = (H // self.patch_size) * (W // self.patch_size)
        where = generator.device if generator is not None else imgs.device
        return torch.rand(B, n, generator=generator, device=where).to(imgs.device)

    # --- the two halves ----------------------------------------------------------------
    def _blocks(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for blk in blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)[0]
            else:
                x = blk(x)[0]
        return x

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float | None = None,
                        noise: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> (latent (B, prefix + N_keep, D) after the final norm, mask (B, N), ids_restore (B, N),
        grid): the encoder's own stages, run on the visible patches only."""
        enc = self.encoder
        x, grid = enc.embed_patches(imgs)  # (B, N, D), positions added
        x, mask, ids_restore = random_masking(x, self.mask_ratio if mask_ratio is None else mask_ratio, noise)
        x = enc.join_prefix(x)  # (B, prefix + N_keep, D)
        x = enc.norm(self._blocks(enc.blocks, x))
        return self.latent_norm(x), mask, ids_restore, grid

    def _decoder_pos_for(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.encoder.patch_embed.grid_size:
            return self.decoder_pos_embed
        return mae_sincos_pos_embed(grid, self.decoder_embed.out_features, self.num_prefix_tokens,
                                    device=self.decoder_pos_embed.device).to(self.decoder_pos_embed.dtype)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """latent (B, prefix + N_keep, D), ids_restore (B, N) -> predicted pixels (B, N, P*P*C) for every patch."""
        x = self.decoder_embed(latent)  # (B, prefix + N_keep, Dd)
        B, N = ids_restore.shape
        k = self.num_prefix_tokens
        prefix, visible = x[:, :k], x[:, k:]
        tokens = torch.cat([visible, self.mask_token.to(x.dtype).expand(B, N - visible.shape[1], -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))  # image order
        x = torch.cat([prefix, tokens], dim=1) + self._decoder_pos_for(grid)  # (B, prefix + N, Dd)
        x = self.decoder_norm(self._blocks(self.decoder_blocks, x))
        return self.decoder_pred(x[:, k:])  # the prefix tokens predict nothing

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch (over its P*P*C values), averaged over the masked patches only; in
        float32. With ``norm_pix_loss`` the target patch is (x - mean) / sqrt(var + 1e-6), var unbiased (MAE)."""
        target = self.patchify(imgs).float()
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)  # (B, N)
        mask = mask.float()
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (loss (), pred (B, N, P*P*C), mask (B, N): 0 = keep, 1 = masked).

        ``mask_ratio``: this call's (default: the MAE's); it must mask at least one patch. ``noise`` (B, N):
        the masking's noise (the patches with the smallest noise are kept); None draws it from the global RNG.
        """
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        _check_ratio(ratio)
        n = (imgs.shape[-2] // self.patch_size) * (imgs.shape[-1] // self.patch_size)
        if int(n * (1 - ratio)) >= n:
            raise ValueError(f"mask_ratio {ratio} masks none of {n} patches: the loss (over masked patches) is "
                             "undefined")
        latent, mask, ids_restore, grid = self.forward_encoder(imgs, ratio, noise)
        pred = self.forward_decoder(latent, ids_restore, grid)
        return self.forward_loss(imgs, pred, mask), pred, mask

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, noise: torch.Tensor | None = None, mask_ratio: float | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For pictures: (masked images, reconstructions with the visible patches pasted back), both
        (B, C, H, W) in the space of ``imgs`` (normalised pixels); masked patches are 0 in the first.
        A ``norm_pix_loss`` model predicts normalised patches: they are put back on each true patch's mean and
        variance (what MAE's visualisations do; those two numbers per patch come from the original)."""
        latent, mask, ids_restore, grid = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore, grid).float()
        if self.norm_pix_loss:
            target = self.patchify(imgs).float()
            pred = pred * (target.var(dim=-1, keepdim=True) + NORM_PIX_EPS) ** 0.5 + target.mean(dim=-1, keepdim=True)
        m = self.unpatchify(mask[..., None].expand(-1, -1, pred.shape[-1]).to(pred.dtype), grid)  # 1 = masked
        imgs = imgs.float()
        return imgs * (1 - m), imgs * (1 - m) + self.unpatchify(pred, grid) * m


def _check_ratio(r) -> None:
    if not (isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r < 1):
        raise ValueError(f"mask_ratio must be a number in [0, 1), got {r!r}")


def save_reconstruction_png(mae: MAE, imgs: torch.Tensor, path: str | os.PathLike, mean: Sequence[float],
                            std: Sequence[float], noise: torch.Tensor | None = None, pad: int = 2,
                            zoom: int | None = None, labels: bool = True) -> str:
    """Write a PNG grid of ``imgs`` (B, C, H, W, normalised by ``mean``/``std``): row 1 the originals, row 2
    the masked inputs (masked patches grey: the mean colour), row 3 the reconstructions with the visible
    patches pasted back. Atomic (a temporary file beside ``path``, then renamed). The model runs in eval mode
    without gradients and is put back as it was. Without ``noise`` the mask comes from a fixed seed (0): the
    same patches every time it is refreshed, and the global RNG is left alone (exact resume).

    ``zoom``: each pixel drawn as a zoom x zoom block (default: tiles at least 96 px, small images readable);
    ``labels``: the rows named on the left."""
    from PIL import Image

    c = mae.channels
    if c not in (1, 3):
        raise ValueError(f"save_reconstruction_png draws 1- or 3-channel images, the model takes {c}")
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
    if mean_t.numel() not in (1, c) or std_t.numel() not in (1, c):
        raise ValueError(f"mean and std need 1 or {c} values, got {mean_t.numel()} and {std_t.numel()}")
    device = next(mae.parameters()).device
    imgs = imgs.to(device)
    if noise is None:
        noise = mae.noise_for(imgs.cpu(), torch.Generator().manual_seed(0))
    was_training = mae.training
    mae.eval()
    try:
        masked, recon = mae.reconstruct(imgs, noise=noise.to(device))
    finally:
        mae.train(was_training)
    rows = [imgs.float().cpu(), masked.cpu(), recon.cpu()]
    B, _, H, W = rows[0].shape
    canvas = torch.ones(c, 3 * H + 4 * pad, B * W + (B + 1) * pad)  # white gaps
    for r, row in enumerate(rows):
        pix = (row * std_t.reshape(1, -1, 1, 1) + mean_t.reshape(1, -1, 1, 1)).clamp(0, 1)
        for b in range(B):
            y, x = pad + r * (H + pad), pad + b * (W + pad)
            canvas[:, y:y + H, x:x + W] = pix[b]
    arr = (canvas * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(arr[..., 0] if c == 1 else arr)  # (H, W) uint8: "L"; (H, W, 3): "RGB"
    zoom = max(1, -(-96 // max(H, W))) if zoom is None else int(zoom)
    if zoom > 1:
        image = image.resize((image.width * zoom, image.height * zoom), Image.NEAREST)
    if labels:
        from PIL import ImageDraw

        names = ("original", "masked", "reconstruction")
        left = 8 + 7 * max(len(n) for n in names)
        white, black = (255, 0) if image.mode == "L" else ((255, 255, 255), (0, 0, 0))
        framed = Image.new(image.mode, (image.width + left, image.height), white)
        framed.paste(image, (left, 0))
        draw = ImageDraw.Draw(framed)
        for r, name in enumerate(names):
            draw.text((4, (pad + r * (H + pad) + H // 2) * zoom - 5), name, fill=black)
        image = framed
    return str(atomic_write(path, lambda tmp: image.save(tmp, format="PNG")))
