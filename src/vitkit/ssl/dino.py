"""DINO (Caron et al. 2021): self-distillation of a momentum teacher into a student over multi-crop views.

The pieces, one training step in the order DINO's ``train_one_epoch`` runs them
(facebookresearch/dino ``main_dino.py``; the crops come from :class:`~vitkit.ssl.multicrop.MultiCrop`)::

    student = MultiCropWrapper(allow_crop_sizes(vit, crops.sizes), DINOHead(vit.cfg.num_features, out_dim))
    teacher = make_teacher(student)                      # a copy: eval mode, no gradients
    t_out = teacher(crops[:2])                           # (2B, K): the global crops only
    s_out = student(crops)                               # (n_crops * B, K)
    loss = dino_loss(s_out, t_out, temps[epoch])         # centre and temperature applied inside
    loss.backward(); clip_gradients_per_parameter(student, 3.0)
    cancel_last_layer_gradients(student, epoch, 1); optimizer.step()
    ema_update(teacher, student, momentum[step])         # step = epoch * steps_per_epoch + iteration
    dino_loss.update_center(t_out)                       # after the loss, as DINO does

Schedules are numpy arrays indexed by the global step (or the epoch for the teacher temperature), and
the centre is a saved buffer of :class:`DINOLoss`, so a resumed run continues exactly.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

# --- the projection head -------------------------------------------------------------------------


class DINOHead(nn.Module):
    """MLP (Linear-GELU x (nlayers-1), Linear to ``bottleneck_dim``) -> L2-normalise -> weight-normalised
    Linear to ``out_dim`` without bias. (B, in_dim) -> (B, out_dim).

    The last layer's weight is g * v / ||v|| per output row (``torch.nn.utils.parametrizations.weight_norm``:
    g is ``last_layer.parametrizations.weight.original0`` (out_dim, 1), v is ``original1``); g starts
    at 1 and with ``norm_last_layer`` is not trained, so every row stays a unit vector and the
    outputs are cosines in [-1, 1]. DINO's checkpoints name the two ``last_layer.weight_g``/``weight_v``.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        for name, v in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim),
                        ("bottleneck_dim", bottleneck_dim), ("nlayers", nlayers)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"DINOHead {name} must be a positive integer, got {v!r}")
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():  # DINO: truncated normal std 0.02 (cut at ±2 std, vitkit's rule), zero bias
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
                nn.init.zeros_(m.bias)
        # as in DINO the last layer keeps PyTorch's default init of v (it is built after the init above)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        g.requires_grad_(not norm_last_layer)
        self.norm_last_layer = norm_last_layer
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)  # (B, bottleneck_dim), unit rows
        return self.last_layer(x)  # (B, out_dim)


def _heads(module: nn.Module) -> list[DINOHead]:
    heads = [m for m in module.modules() if isinstance(m, DINOHead)]
    if not heads:
        raise ValueError(f"no DINOHead inside the {type(module).__name__} given")
    return heads


def cancel_last_layer_gradients(module: nn.Module, epoch: int, freeze_last_layer_epochs: int = 1) -> bool:
    """Drop the gradients of every DINOHead's last layer inside ``module`` while ``epoch`` <
    ``freeze_last_layer_epochs`` (DINO freezes it for the first epoch: it stabilises the start).
    Call between backward and the optimizer step. The gradients are set to None, as DINO does, so
    AdamW skips those parameters altogether (a zero gradient would still move them through weight
    decay and its moment estimates). Returns True when it cancelled them."""
    if epoch >= freeze_last_layer_epochs:
        return False
    for head in _heads(module):
        for p in head.last_layer.parameters():
            p.grad = None
    return True


def clip_gradients_per_parameter(module: nn.Module, max_norm: float) -> list[float]:
    """DINO's ``clip_grad``: each parameter's gradient scaled to an L2 norm of at most ``max_norm``
    separately (not one global norm). Returns the norms before clipping."""
    if max_norm <= 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    return [float(nn.utils.clip_grad_norm_(p, max_norm)) for p in module.parameters() if p.grad is not None]


# --- the multi-crop wrapper ----------------------------------------------------------------------


def allow_crop_sizes(backbone: nn.Module, sizes: Sequence[int | Sequence[int]]) -> nn.Module:
    """Make a vitkit ViT take every crop size in ``sizes`` and return it.

    A vitkit model refuses inputs other than its built size unless ``dynamic_img_size`` is set; with
    it, the position embedding is resampled to each grid per call (``_pos_embed_for``: bicubic for a
    learned one, recomputed for sin-cos). This sets it on the model and its config (so a copy rebuilt
    from the config, or the saved encoder, takes other sizes too), and checks each size is a multiple
    of the token stride (unless the model pads)."""
    cfg = getattr(backbone, "cfg", None)
    if cfg is None or not hasattr(backbone, "patch_embed"):
        raise ValueError(f"allow_crop_sizes needs a vitkit VisionTransformer, got {type(backbone).__name__}")
    stride = cfg.token_stride
    for size in sizes:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        if not cfg.dynamic_img_pad and (h % stride or w % stride):
            raise ValueError(f"crop size {h}x{w} is not a multiple of the model's patch size {stride}; "
                             f"choose crop sizes that are multiples of {stride}")
        if h < stride or w < stride:
            raise ValueError(f"crop size {h}x{w} is smaller than one {stride}x{stride} patch")
    if not cfg.dynamic_img_size:
        backbone.cfg = cfg.replace(dynamic_img_size=True)
        backbone.patch_embed.dynamic_img_size = True
    return backbone


class MultiCropWrapper(nn.Module):
    """Backbone + DINOHead over a list of crops: ``forward([crop (B, C, h_i, w_i), ...]) -> (sum B, K)``.

    Consecutive crops of the same size are concatenated and go through the backbone in one batch
    (DINO's MultiCropWrapper); the features of all crops are concatenated in input order and the
    head runs once on them. Features: ``backbone.forward_head(backbone.forward_features(x),
    pre_logits=True)``, i.e. the [CLS] token or the mean of patch tokens as the model's config says;
    the backbone's classifier is not used.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, crops: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """The backbone's pooled features of every crop, (sum B_i, num_features), in input order."""
        crops = [crops] if isinstance(crops, torch.Tensor) else list(crops)
        if not crops:
            raise ValueError("MultiCropWrapper got no crops")
        out, start = [], 0
        while start < len(crops):  # groups of consecutive crops with one (h, w)
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            x = torch.cat(crops[start:end])  # (n * B, C, h, w)
            out.append(self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True))
            start = end
        return torch.cat(out)

    def forward(self, crops: torch.Tensor | Sequence[torch.Tensor],
                return_features: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The head's outputs (sum B_i, K); with ``return_features`` also the backbone's features they came from
        (through forward, so a DDP wrapper around this module still synchronises the gradients)."""
        feats = self.features(crops)
        out = self.head(feats)
        return (out, feats) if return_features else out


def make_teacher(student: nn.Module) -> nn.Module:
    """The teacher: a copy of the student (same weights, as DINO starts), in eval mode (no dropout or
    stochastic depth: DINO builds its teacher without drop-path) and without gradients."""
    teacher = copy.deepcopy(student).eval()
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, m: float) -> None:
    """In place, for every parameter: teacher = m * teacher + (1 - m) * student (buffers untouched:
    vitkit's ViT has only derived ones). The teacher must not require gradients."""
    m = float(m)
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {m}")
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        missing = sorted(set(s_params) ^ set(t_params))[:5]
        raise ValueError(f"teacher and student have different parameters (e.g. {missing})")
    for name, t in t_params.items():
        s = s_params[name]
        if t.requires_grad:
            raise ValueError(f"teacher parameter {name} requires gradients; build the teacher with make_teacher")
        if t.shape != s.shape:
            raise ValueError(f"parameter {name}: teacher {tuple(t.shape)} vs student {tuple(s.shape)}")
        t.mul_(m).add_(s.detach().to(t.dtype), alpha=1.0 - m)


# --- the loss ------------------------------------------------------------------------------------


class DINOLoss(nn.Module):
    """Cross-entropy between the teacher's centred, sharpened softmax of each global crop and the
    student's log-softmax of every other crop, averaged over the (teacher crop, student crop) pairs.

    ``forward(student_out (n_crops * B, K), teacher_out (n_global * B, K), teacher_temp)``: rows are
    crop-major (all images of crop 0, then crop 1, ...), the order :class:`MultiCropWrapper` returns;
    the first ``n_global`` student crops are the teacher's crops, so pair (i, i) is the same view and
    skipped. ``center`` (1, K) is a saved buffer, updated by :meth:`update_center` (call it after the
    loss, with the same teacher output). Computed in float32.
    """

    def __init__(self, out_dim: int, n_global: int = 2, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        if not isinstance(out_dim, int) or out_dim < 1:
            raise ValueError(f"DINOLoss out_dim must be a positive integer, got {out_dim!r}")
        if not isinstance(n_global, int) or n_global < 1:
            raise ValueError(f"DINOLoss n_global must be a positive integer, got {n_global!r}")
        if student_temp <= 0:
            raise ValueError(f"DINOLoss student_temp must be positive, got {student_temp}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"DINOLoss center_momentum must be in [0, 1], got {center_momentum}")
        self.out_dim, self.n_global = out_dim, n_global
        self.student_temp, self.center_momentum = float(student_temp), float(center_momentum)
        self.register_buffer("center", torch.zeros(1, out_dim))

    def _check(self, out: torch.Tensor, what: str) -> None:
        if out.ndim != 2 or out.shape[1] != self.out_dim:
            raise ValueError(f"DINOLoss {what} must be (rows, {self.out_dim}), got {tuple(out.shape)}")

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        self._check(student_out, "student output")
        self._check(teacher_out, "teacher output")
        if teacher_temp <= 0:
            raise ValueError(f"teacher_temp must be positive, got {teacher_temp}")
        if teacher_out.shape[0] % self.n_global:
            raise ValueError(f"teacher output has {teacher_out.shape[0]} rows, not a multiple of the "
                             f"{self.n_global} global crops")
        B = teacher_out.shape[0] // self.n_global
        if B == 0 or student_out.shape[0] % B:
            raise ValueError(f"student output has {student_out.shape[0]} rows, not a multiple of the batch {B}")
        n_crops = student_out.shape[0] // B
        if n_crops < self.n_global or self.n_global * (n_crops - 1) == 0:  # pairs of different views
            raise ValueError(f"{n_crops} student crop(s) for {self.n_global} global crop(s): no pair of "
                             "different views to compare")
        log_s = F.log_softmax(student_out.float() / self.student_temp, dim=-1).view(n_crops, B, -1)
        t = F.softmax((teacher_out.detach().float() - self.center) / teacher_temp, dim=-1).view(self.n_global, B, -1)
        ce = -torch.einsum("gbk,vbk->gv", t, log_s) / B  # (n_global, n_crops): mean over images per pair
        keep = ~torch.eye(self.n_global, n_crops, dtype=torch.bool, device=ce.device)  # skip the same view
        return ce[keep].mean()

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor, all_reduce: Callable[[torch.Tensor], object] | None = None,
                      world_size: int = 1) -> None:
        """center = m * center + (1 - m) * mean of ``teacher_out`` rows. With ``all_reduce`` (a callable
        that sums a tensor over the processes, in place like ``torch.distributed.all_reduce`` or by
        returning the sum) the mean is over every process's rows: sum / (rows * world_size)."""
        self._check(teacher_out, "teacher output")
        if all_reduce is None and world_size != 1:
            raise ValueError("update_center: world_size > 1 needs the all_reduce that sums over the processes")
        total = teacher_out.detach().float().sum(dim=0, keepdim=True)  # (1, K)
        if all_reduce is not None:
            summed = all_reduce(total)
            total = summed if isinstance(summed, torch.Tensor) else total
        batch_center = total / (teacher_out.shape[0] * world_size)
        m = self.center_momentum
        self.center.copy_(self.center * m + batch_center * (1 - m))


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The KoLeo regulariser (Kozachenko-Leonenko entropy estimator; Sablayrolles et al. 2019, used by DINOv2 on
    the student's [CLS] features of each global crop): rows L2-normalised, then -mean_i log(||x_i - x_nn(i)|| +
    eps), nn(i) the row nearest to i (the largest cosine, itself excluded). (B, D), B >= 2 -> a scalar.

    It grows as the features of different images come together, so adding it to DINO's loss spreads them over
    the sphere: it keeps a small encoder's [CLS] output from being the same for every image, the state in which
    DINO's teacher targets go uniform (benchmarks/self_supervised.md). The neighbour is found without gradients;
    the distance to it carries them."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"koleo_loss needs a batch of features (B >= 2, D), got {tuple(x.shape)}")
    x = F.normalize(x.float(), dim=-1, p=2)
    with torch.no_grad():
        sim = x @ x.T  # (B, B) cosines
        sim.fill_diagonal_(-2.0)  # below any cosine: a row is never its own neighbour
        nearest = sim.argmax(dim=1)  # (B,)
    return -torch.log((x - x[nearest]).norm(dim=-1) + eps).mean()


# --- schedules (numpy arrays indexed by step, or by epoch for the teacher temperature) -----------


def _check_counts(epochs: int, warmup_epochs: int, steps_per_epoch: int = 1) -> None:
    for name, v in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not isinstance(warmup_epochs, (int, np.integer)) or not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"warmup_epochs must be an integer in [0, epochs={epochs}], got {warmup_epochs!r}")


def cosine_schedule(base: float, final: float, epochs: int, steps_per_epoch: int, warmup_epochs: int = 0,
                    start_warmup_value: float = 0.0) -> np.ndarray:
    """DINO's ``cosine_scheduler``, one value per step (epochs * steps_per_epoch): a linear warm-up
    from ``start_warmup_value`` to ``base`` over ``warmup_epochs`` epochs (np.linspace, both ends
    included), then final + (base - final) * (1 + cos(pi * i / n)) / 2 for i = 0 .. n-1."""
    _check_counts(epochs, warmup_epochs, steps_per_epoch)
    warmup_steps = warmup_epochs * steps_per_epoch
    warmup = np.linspace(start_warmup_value, base, warmup_steps) if warmup_steps else np.array([])
    i = np.arange(epochs * steps_per_epoch - warmup_steps)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / max(len(i), 1)))
    return np.concatenate((warmup, cosine))


def momentum_schedule(momentum_teacher: float, epochs: int, steps_per_epoch: int) -> np.ndarray:
    """The teacher's EMA momentum per step: cosine from ``momentum_teacher`` (DINO: 0.996) to 1."""
    if not 0.0 <= momentum_teacher <= 1.0:
        raise ValueError(f"momentum_teacher must be in [0, 1], got {momentum_teacher}")
    return cosine_schedule(momentum_teacher, 1.0, epochs, steps_per_epoch)


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """The teacher temperature per epoch: np.linspace(warmup_temp, temp, warmup_epochs) (both ends
    included), then ``temp`` for the remaining epochs (DINO's ``teacher_temp_schedule``)."""
    _check_counts(epochs, warmup_epochs)
    if warmup_temp <= 0 or temp <= 0:
        raise ValueError(f"teacher temperatures must be positive, got {warmup_temp} and {temp}")
    return np.concatenate((np.linspace(warmup_temp, temp, warmup_epochs), np.full(epochs - warmup_epochs, temp)))


# --- collapse monitor ----------------------------------------------------------------------------

# Thresholds of collapse_warning, each a state that healthy training does not reach:
LOGIT_SPREAD_MIN = 0.01  # logits that differ by < 0.01 across images change each probability by < ~1 %
TOP_MASS_MAX = 0.9  # one of K outputs holding 90 % of the batch's probability mass: every image says the same
UNIFORM_KL_FRAC = 0.01  # KL to uniform < 1 % of log K: the targets carry almost no information


@torch.no_grad()
def collapse_stats(teacher_out: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> dict[str, float]:
    """Statistics of the teacher's targets softmax((teacher_out - center) / teacher_temp), (B, K), B >= 2:

    - ``entropy``: mean over images of the softmax's entropy (nats); ``entropy_max`` = log K;
    - ``kl_to_uniform``: mean KL(p_i || uniform) = log K - entropy;
    - ``spread``: mean over the K dimensions of the std across the batch of the RAW teacher outputs
      (not of the probabilities, whose scale is ~1/K): cosines in [-1, 1] with a normalised last
      layer, so comparable across ``out_dim``; 0 when every image gets the same output;
    - ``logit_spread`` = spread / teacher_temp: the same in the softmax's units;
    - ``top_mass``: the largest entry of the batch-mean distribution (1 = one dimension takes everything).
    """
    if teacher_out.ndim != 2 or teacher_out.shape[0] < 2:
        raise ValueError(f"collapse_stats needs teacher outputs (B >= 2, K), got {tuple(teacher_out.shape)}")
    if teacher_temp <= 0:
        raise ValueError(f"teacher_temp must be positive, got {teacher_temp}")
    t = teacher_out.detach().float()
    logp = F.log_softmax((t - center.to(t)) / teacher_temp, dim=-1)
    p = logp.exp()
    entropy = float(-(p * logp).sum(dim=-1).mean())
    entropy_max = math.log(t.shape[1])
    spread = float(t.std(dim=0, unbiased=False).mean())
    return dict(entropy=entropy, entropy_max=entropy_max, kl_to_uniform=entropy_max - entropy, spread=spread,
                logit_spread=spread / teacher_temp, top_mass=float(p.mean(dim=0).max()))


def collapse_warning(stats: dict[str, float]) -> str | None:
    """One line naming the collapse ``stats`` (from :func:`collapse_stats`) show, or None when healthy:
    one dimension dominates (``top_mass`` >= 0.9), uniform targets (``kl_to_uniform`` < 1 % of log K), or
    every image the same distribution (``logit_spread`` < 0.01)."""
    reasons = []
    if stats["top_mass"] >= TOP_MASS_MAX:
        reasons.append(f"one output dimension holds {stats['top_mass']:.0%} of the probability mass")
    if stats["kl_to_uniform"] < UNIFORM_KL_FRAC * stats["entropy_max"]:
        reasons.append("the teacher's distribution is uniform")
    if stats["logit_spread"] < LOGIT_SPREAD_MIN:
        reasons.append("every image gets the same output")
    if not reasons:
        return None
    return (f"DINO collapse: {'; '.join(reasons)} (entropy {stats['entropy']:.3g} of max {stats['entropy_max']:.3g}, "
            f"spread {stats['spread']:.3g}, top mass {stats['top_mass']:.3g})")


# --- the [CLS] attention PNG ---------------------------------------------------------------------


@torch.no_grad()
def cls_attention_maps(backbone: nn.Module, images: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """The [CLS] token's attention over the patches in block ``layer``, per head: (B, heads, gh, gw).
    Without a [CLS] token (mean pooling) the mean over patch queries (``vitkit.explain.cls_attention``)."""
    from ..explain.attention import cls_attention, to_grid

    model = getattr(backbone, "backbone", backbone)  # a MultiCropWrapper: its backbone
    if not hasattr(model, "get_attention_maps"):
        raise ValueError(f"{type(model).__name__} has no get_attention_maps: give a vitkit VisionTransformer")
    if images.ndim != 4:
        raise ValueError(f"images must be a batch (B, C, H, W), got {tuple(images.shape)}")
    was_training = model.training
    model.eval()
    try:
        maps = model.get_attention_maps(images)  # each (B, heads, T, T)
    finally:
        model.train(was_training)
    if not -len(maps) <= layer < len(maps):
        raise ValueError(f"layer {layer} is out of range for a model of depth {len(maps)}")
    p = model.cfg.token_stride
    h, w = images.shape[-2:]
    grid = (math.ceil(h / p), math.ceil(w / p)) if model.cfg.dynamic_img_pad else (h // p, w // p)
    # a mean-pooled model with a [CLS] token does not use it: show what it pools, the patch queries
    # (pooling "cls" implies a class token: ViTConfig refuses it without one)
    return to_grid(cls_attention(maps[layer].float(), model.num_prefix_tokens, model.cfg.pooling == "cls"), grid)


def save_cls_attention_png(backbone: nn.Module, images: torch.Tensor, path: str | os.PathLike,
                           mean: float | Sequence[float], std: float | Sequence[float], layer: int = -1,
                           dpi: int = 100) -> Path:
    """Draw, for each of the (normalised) ``images`` (B, C, H, W), the image and the last block's [CLS]
    attention of every head and their mean over it (one row per image), into one PNG written
    atomically (temporary file, then rename). A model without [CLS] shows the mean patch-query
    attention, and says so in the titles."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..explain.render import ALPHA, CMAP, upsample
    from ..utils.atomic import atomic_write

    maps = cls_attention_maps(backbone, images, layer).cpu().numpy()  # (B, heads, gh, gw)
    model = getattr(backbone, "backbone", backbone)
    query = "[CLS]" if model.cfg.pooling == "cls" else "mean query"
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    pics = (images.detach().float().cpu() * s + m).clamp(0, 1)  # (B, C, H, W) in [0, 1]
    pics = pics.expand(-1, 3, -1, -1) if pics.shape[1] == 1 else pics
    pics = pics.permute(0, 2, 3, 1).numpy()
    B, heads = maps.shape[:2]
    cols = heads + 2  # image, each head, mean of heads
    fig = Figure(figsize=(1.6 * cols, 1.6 * B))
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(B, cols, squeeze=False))
    for i in range(B):
        for j, ax in enumerate(axes[i]):
            ax.imshow(pics[i])
            ax.axis("off")
            if j == 0:
                ax.set_title("image" if i == 0 else "", fontsize=7)
                continue
            heat = maps[i, j - 1] if j <= heads else maps[i].mean(axis=0)
            ax.imshow(upsample(heat, pics[i].shape[:2]), cmap=CMAP, alpha=ALPHA, vmin=0, vmax=1)
            if i == 0:
                ax.set_title(f"{query} head {j - 1}" if j <= heads else f"{query} mean", fontsize=7)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
