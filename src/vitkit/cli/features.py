"""`vitkit features SRC IMAGES --out feats.npy`: embeddings for retrieval and probing."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from ..utils.atomic import atomic_write_all, check_output_path
from ..utils.names import printable
from ..inference.features import POOLS
from ..inference.images import list_images
from .main import UserError
from .model_args import add_model_args, load_kwargs
from .predict import add_runtime_args, int8_options, int8_wanted


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="save image embeddings (.npy) for retrieval or probing",
                       description="Embed images with a model and save a float32 .npy: (N, D) for cls/gap, "
                                   "(N, T, D) for tokens. A sidecar OUT.json lists the images, in row order. "
                                   "Unreadable images are skipped and reported (exit status 1).")
    p.add_argument("src", help="the model: anything vitkit.load accepts")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders of images")
    p.add_argument("--out", required=True, help="the .npy file to write")
    p.add_argument("--pool", default=None, choices=list(POOLS),
                   help="cls: [CLS] token; gap: mean of patch tokens (+ the model's fc_norm); map: the attention "
                        "pool's output (SigLIP); tokens: all tokens "
                        "(default: what the model's own head reads: cls, gap or map)")
    p.add_argument("--layer", type=int, default=None,
                   help="block index (0-based, negative from the end), final norm applied; default: the last")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    add_runtime_args(p, int8=True, auto=True)
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.features import check_pool, extract_features, int8_embedding_problem, own_pool
    from ..inference.pipeline import ModelRunner
    from ..weights.api import load

    out = check_output_path(args.out, (".npy",))
    quantise = int8_wanted(args)
    paths, had_folder = list_images(args.images)
    model = load(args.src, **load_kwargs(args))
    pool = args.pool or own_pool(model)
    check_pool(model, pool)  # a ValueError: one line, exit 2, before any image is read
    int8_kw = {}
    problem = int8_embedding_problem(model, pool, args.layer) if quantise else None
    if problem:
        if args.dtype == "int8":
            raise UserError(f"{problem}; --pool {pool}{' --layer ' + str(args.layer) if args.layer is not None else ''}"
                            " needs --dtype fp32, bf16 or auto")
        print(f"vitkit: int8 not tried: {problem}; running auto without it", file=sys.stderr)
    elif quantise:
        if model.cfg.num_classes:
            model.reset_classifier(0)  # the int8 graph is the embedding's; this command owns the model
        int8_kw = int8_options(args, model)
    runner = ModelRunner(model, device="cpu" if args.dtype == "int8" else args.device, dtype=args.dtype,
                         batch_size=args.batch_size, max_pixels=args.max_pixels, cpu_kernels="auto", **int8_kw)
    if args.dtype == "int8":
        print(f"vitkit: {runner.int8.report.describe()}", file=sys.stderr)
    chunks, kept, skipped = [], [], []
    bar = None
    if had_folder:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), unit="img", disable=None, leave=False)
    # decode one batch at a time: only the features of earlier batches stay in memory
    for start in range(0, len(paths), args.batch_size):
        images = []
        for path in paths[start:start + args.batch_size]:
            try:
                images.append(runner.load_image(path))
                kept.append(printable(str(path)))
            except (ValueError, OSError) as e:
                skipped.append({"image": printable(str(path)), "error": printable(str(e))})
                print(f"vitkit: skipped {printable(str(e))}", file=sys.stderr)
        if images:
            chunks.append(extract_features(runner, images, pool=pool, layer=args.layer))
        if bar is not None:
            bar.update(len(paths[start:start + args.batch_size]))
    if bar is not None:
        bar.close()
    if not chunks:
        raise UserError(f"none of the {len(paths)} image(s) could be read (see the messages above)")
    feats = np.concatenate(chunks)
    sidecar = out.with_suffix(".json")
    text = json.dumps({"model": args.src, "pool": pool, "layer": args.layer, "precision": runner.precision,
                       "shape": list(feats.shape),
                       "images": kept, "skipped": skipped}, indent=2) + "\n"

    def write_sidecar(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    # both written before either is renamed: a full disk keeps the previous pair, not a mixed one
    atomic_write_all([(out, lambda tmp: np.save(tmp, feats)), (sidecar, write_sidecar)])
    print(f"wrote {out} {tuple(feats.shape)} float32 ({pool}, layer {'last' if args.layer is None else args.layer}, "
          f"{runner.precision_name}) "
          f"and {sidecar}")
    if skipped:
        print(f"vitkit: {len(skipped)} of {len(paths)} image(s) skipped", file=sys.stderr)
        return 1
    return 0
