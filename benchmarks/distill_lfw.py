"""DeiT distillation (issue 11, part 4): a small ViT student alone vs. taught by a stronger teacher.

    python benchmarks/distill_lfw.py [--runs DIR] [--epochs E] [--seeds 0 1 2] [--variants alone hard soft]
                                     [--name NAME] [--extra "FLAGS"] [--json benchmarks/distill_lfw.json]
                                     [--data SRC --teacher SPEC]

By default on lfw-faces with a ResNet-18 teacher trained here (below). With --data FOLDER (train/, val/) and
no --teacher, the ResNet-18 is trained on that folder instead (no flips). With --teacher, the same student
runs taught by any `--teacher` spec (a vitkit model folder, say); the teacher is then taken as it is and
step 1 is skipped.

1. The teacher: torchvision's resnet18 (num_classes=2, random init) trained here with a plain PyTorch loop on
   lfw-faces' training split (vitkit's own split: ``BUILTIN["lfw-faces"]()``, 160 train / 40 val images), at
   32x32 (bilinear, as vitkit resizes), 3 channels, ImageNet mean/std, with random affine shifts / zoom /
   rotation and horizontal flips. Its state dict goes to RUNS/teacher/resnet18.pth and its accuracy on the 40
   validation images is recorded. Trained once (re-used when RUNS/teacher/teacher.json exists).
2. For each seed, `vitkit` commands as a user runs them: the student alone, and the student with DeiT's
   distillation token (distilled=true) taught by the teacher with --distill hard and --distill soft
   (``--teacher torchvision:resnet18=RUNS/teacher/resnet18.pth``). Every run has the same epochs and flags.
   The accuracy of the weights each run saved (ema_top1 when model_weights == "ema", else val_top1) and
   best_top1 are read from its summary.json; the wall and CPU seconds of each command are recorded.

Results are merged into --json under --name (one experiment per name: e.g. the first recipe and a documented
change). Runs already finished (RUNS/NAME/VARIANT-sSEED/bench.json) are read back, not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from commands import cpu_id, run

STUDENT = ["--model", "vit_tiny_patch4_32", "--model-set", "width=64,depth=4,heads=4,mlp_ratio=2"]
DISTILLED = ["--model", "vit_tiny_patch4_32", "--model-set", "width=64,depth=4,heads=4,mlp_ratio=2,distilled=true"]
VARIANTS = {  # name -> (model flags, distillation flags; {teacher} is the teacher spec)
    "alone": (STUDENT, []),
    "hard": (DISTILLED, ["--distill", "hard", "--teacher", "{teacher}"]),
    "soft": (DISTILLED, ["--distill", "soft", "--teacher", "{teacher}"]),
    "soft_tau3": (DISTILLED, ["--distill", "soft", "--teacher", "{teacher}", "--distill-tau", "3"]),
    "alone_distilled": (DISTILLED, []),  # the token without a teacher: the architecture alone
    # the very student of "alone" (no distillation token), taught through its one head: 0.5 CE + 0.5 D
    "hard_1head": (STUDENT, ["--distill", "hard", "--teacher", "{teacher}"]),
    "soft_1head": (STUDENT, ["--distill", "soft", "--teacher", "{teacher}"]),
}


# ---------------------------------------------------------------------------------------------- the teacher

def teacher_input(images, size: int = 32):
    """(N, 1, 25, 25) in [0, 1] -> (N, 3, size, size) in [0, 1], resized as vitkit resizes the built-ins."""
    import torch.nn.functional as F

    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x.expand(-1, 3, -1, -1).contiguous()


def folder_tensors(folder: Path, size: int = 32):
    """An image folder's train/ and val/ as vitkit's training reads them (`load_source`: its class order, grey,
    bilinear to size x size): (x_tr, y_tr, x_va, y_va, classes), images (N, 1, size, size) in [0, 1]."""
    import torch

    from vitkit.data.datasets import DataSpec, load_source

    tr, va = load_source(str(folder), DataSpec(image_size=(size, size), channels=1))
    stack = lambda ds: (torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor(ds.targets))
    return (*stack(tr), *stack(va), tr.classes)


def train_teacher(out: Path, epochs: int, seed: int, folder: Path | None = None) -> dict:
    """Train torchvision's resnet18 from scratch on lfw-faces' training split (or on ``folder``'s train/, without
    horizontal flips: digits are not mirror-symmetric); save its state dict."""
    import torch
    import torch.nn.functional as F
    import torchvision
    from torchvision.transforms import v2

    from vitkit.data.builtin import BUILTIN

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    if folder is None:
        tr, va = BUILTIN["lfw-faces"]()
        x_tr, y_tr = teacher_input(tr.images), tr.labels
        x_va, y_va = teacher_input(va.images), va.labels
        n_classes, flips = 2, [v2.RandomHorizontalFlip()]
    else:
        x_tr, y_tr, x_va, y_va, classes = folder_tensors(folder)
        x_tr, x_va = teacher_input(x_tr), teacher_input(x_va)
        n_classes, flips = len(classes), []
    from vitkit.tasks.distill import IMAGENET_MEAN, IMAGENET_STD  # what the torchvision teacher is fed with

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    # light augmentation, drawn per image: shifts up to 10 % of the side, zoom 0.9-1.1, rotation up to 10 deg
    # (what the student's default augmentation shows the teacher during distillation), horizontal flips
    aug = v2.Compose([v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)), *flips])
    net = torchvision.models.get_model("resnet18", weights=None, num_classes=n_classes)
    batch, steps_per_epoch = 32, (len(x_tr) + 31) // 32
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.1)

    def accuracy(x, y) -> float:
        net.eval()
        with torch.no_grad():
            return float((net((x - mean) / std).argmax(1) == y).float().mean())

    t0, c0 = time.time(), time.process_time()
    history = []
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x_tr))
        total = 0.0
        for i in range(0, len(x_tr), batch):
            idx = perm[i:i + batch]
            xb = torch.stack([aug(img) for img in x_tr[idx]])
            loss = F.cross_entropy(net((xb - mean) / std), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            history.append({"epoch": epoch + 1, "train_loss": round(total / len(x_tr), 4),
                            "val_top1": round(accuracy(x_va, y_va), 4)})
            print(f"teacher epoch {epoch + 1}: {history[-1]}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out / "resnet18.pth")  # the final weights: no selection on the val images
    rec = {"arch": "resnet18", "weights": str(out / "resnet18.pth"), "seed": seed, "epochs": epochs,
           "data": str(folder) if folder else "lfw-faces",
           "recipe": "AdamW lr 1e-3 (one-cycle, 10 % warm-up), weight decay 0.05, batch 32, cross-entropy; "
                     "RandomAffine(10 deg, translate 0.1, scale 0.9-1.1)"
                     + (" + RandomHorizontalFlip" if flips else "") + " per image; "
                     "input resized to 32 px bilinear, grey repeated to 3 channels, ImageNet mean/std",
           "train_top1": round(accuracy(x_tr, y_tr), 4), "val_top1": round(accuracy(x_va, y_va), 4),
           "val_images": len(x_va), "wall_s": round(time.time() - t0, 1),
           "cpu_s": round(time.process_time() - c0, 1), "history": history}
    (out / "teacher.json").write_text(json.dumps(rec, indent=1))
    return rec


def check_teacher_in_vitkit(weights: Path) -> float:
    """The teacher's val accuracy as vitkit's distillation sees it: loaded by vitkit's own torchvision loader,
    fed the student's (32 px, student-normalised) validation images through vitkit's TeacherInput."""
    import torch

    from vitkit.data.builtin import BUILTIN
    from vitkit.data.preprocess import PreprocessConfig
    from vitkit.tasks.distill import TeacherInput, load_torchvision_teacher
    from vitkit.train.augment import normalize

    _, va = BUILTIN["lfw-faces"]()
    teacher = load_torchvision_teacher(f"torchvision:resnet18={weights}", 2, (32, 32)).eval()
    student_pre = PreprocessConfig(size=32, mean=(0.5,), std=(0.5,), mode="L")
    x = torch.nn.functional.interpolate(va.images, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    x = normalize(x, student_pre.mean, student_pre.std)
    with torch.no_grad():
        pred = teacher(TeacherInput(student_pre, teacher.preprocess_cfg, teacher.cfg)(x)).argmax(1)
    return round(float((pred == va.labels).float().mean()), 4)


# ---------------------------------------------------------------------------------------------- the students

def student(variant: str, seed: int, epochs: int, extra: list[str], teacher: str, root: Path,
            data: str = "lfw-faces") -> dict:
    out = root / f"{variant}-s{seed}"
    done = out / "bench.json"
    if done.exists():
        return json.loads(done.read_text())
    model, distill = VARIANTS[variant]
    cmd = ["vitkit", "train", *model, "--data", data, "--epochs", str(epochs), "--seed", str(seed),
           *[a.format(teacher=teacher) for a in distill], *extra, "--threads", "1", "--no-progress",
           "--overwrite", "--out", str(out)]
    out.mkdir(parents=True, exist_ok=True)
    timing = run(cmd, root / f"{variant}-s{seed}.log")
    s = json.loads((out / "summary.json").read_text())
    saved = s["ema_top1"] if s.get("model_weights") == "ema" else s["val_top1"]
    rec = {"variant": variant, "seed": seed, "command": " ".join(cmd), **timing, "saved_top1": saved,
           "model_weights": s.get("model_weights"), "val_top1": s.get("val_top1"), "ema_top1": s.get("ema_top1"),
           "best_top1": s.get("best_top1"), "summary": s}
    done.write_text(json.dumps(rec, indent=1))
    return rec


def val_detail(model_dir: Path) -> dict:
    """The saved model on the 40 val images (resized and normalised as vitkit does): which it gets wrong, and for a
    student with the distillation token, the accuracy of each head alone beside their average (what is scored)."""
    import torch

    from vitkit import load
    from vitkit.data.builtin import BUILTIN
    from vitkit.train.augment import normalize

    _, va = BUILTIN["lfw-faces"]()
    model = load(model_dir).eval()
    pre = model.preprocess_cfg
    x = torch.nn.functional.interpolate(va.images, size=tuple(model.cfg.image_hw), mode="bilinear",
                                        align_corners=False).clamp(0, 1)
    x = normalize(x, pre.mean, pre.std)
    y = va.labels
    with torch.no_grad():
        pred = model(x).argmax(1)
        out = {"top1": round(float((pred == y).float().mean()), 4), "wrong": torch.nonzero(pred != y).flatten().tolist()}
        if model.cfg.distilled:
            cls, dist = model(x, distilled=True)
            out["cls_head_top1"] = round(float((cls.argmax(1) == y).float().mean()), 4)
            out["dist_head_top1"] = round(float((dist.argmax(1) == y).float().mean()), 4)
    return out


def mean_std(xs: list[float]) -> dict:
    return {"mean": round(statistics.mean(xs), 4), "std": round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="/tmp/distill_lfw", help="folder for the teacher and the run folders")
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["alone", "hard", "soft"], choices=list(VARIANTS))
    ap.add_argument("--name", default=None, help="experiment name in --json (default: e<EPOCHS>)")
    ap.add_argument("--extra", default="", help="more `vitkit train` flags for every run, space-separated")
    ap.add_argument("--teacher-epochs", type=int, default=100)
    ap.add_argument("--teacher-seed", type=int, default=0)
    ap.add_argument("--json", default=str(Path(__file__).with_name("distill_lfw.json")))
    ap.add_argument("--data", default="lfw-faces", help="the students' --data (default lfw-faces)")
    ap.add_argument("--teacher", default=None,
                    help="a --teacher spec to use as it is (default: the ResNet-18 trained on lfw-faces here)")
    ap.add_argument("--benchmark", default="DeiT distillation on lfw-faces (issue 11, part 4)")
    a = ap.parse_args()
    import torch

    runs = Path(a.runs)
    if a.teacher:
        teacher = {"spec": a.teacher}
        spec = a.teacher
    else:
        folder = None
        if a.data != "lfw-faces":
            if not (Path(a.data) / "train").is_dir():
                ap.error("--data other than lfw-faces needs --teacher, or a folder with train/ and val/")
            folder = Path(a.data)
        tdir = runs / "teacher"
        if (tdir / "teacher.json").exists():
            teacher = json.loads((tdir / "teacher.json").read_text())
        else:
            teacher = train_teacher(tdir, a.teacher_epochs, a.teacher_seed, folder)
        if folder is None:
            teacher["val_top1_through_vitkit"] = check_teacher_in_vitkit(Path(teacher["weights"]))
        spec = f"torchvision:resnet18={teacher['weights']}"
    name = a.name or f"e{a.epochs}"
    root = runs / name
    root.mkdir(parents=True, exist_ok=True)
    extra = a.extra.split()
    recs = []
    for seed in a.seeds:  # one run at a time
        for v in a.variants:
            r = student(v, seed, a.epochs, extra, spec, root, a.data)
            print(f"{name} {v} seed {seed}: saved {r['saved_top1']:.4f} ({r['model_weights']}), best "
                  f"{r['best_top1']:.4f}, {r['wall_s']} s wall, {r['cpu_s']} s CPU", flush=True)
            if a.data == "lfw-faces":
                r = {**r, "val_detail": val_detail(root / f"{v}-s{seed}" / "model")}
            recs.append(r)
    table = {v: {"saved_top1": mean_std([r["saved_top1"] for r in recs if r["variant"] == v]),
                 "best_top1": mean_std([r["best_top1"] for r in recs if r["variant"] == v])} for v in a.variants}
    path = Path(a.json)
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc.update({"benchmark": a.benchmark, "data": a.data,
                "machine": {"cpu_id": cpu_id(), "cores": os.cpu_count(), "python": platform.python_version(),
                            "torch": torch.__version__},
                "teacher": teacher})
    doc.setdefault("experiments", {})[name] = {
        "date": time.strftime("%Y-%m-%d"), "epochs": a.epochs, "seeds": a.seeds, "extra": a.extra,
        "mean_std": table, "runs": [{k: v for k, v in r.items() if k != "summary"} for r in recs]}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
