"""Scale-out: `vitkit train` under torchrun with two CPU processes on gloo (DDP and FSDP)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import vitkit
from vitkit.cli.main import main
from vitkit.train import TrainConfig, train
from vitkit.train.checkpoint import load_checkpoint

SRC = str(Path(__file__).resolve().parents[1] / "src")
ARGS = ["--model", "vit_tiny_patch4_16", "--model-set", "width=32,depth=2,heads=4", "--data", "digits",
        "--steps", "6", "--batch-size", "32", "--lr", "3e-3", "--warmup-epochs", "0", "--drop-path", "0",
        "--ema", "none", "--log-every", "1", "--no-progress", "--seed", "1"]


def _torchrun(out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vitkit.cli.main", "train", *ARGS, "--out", str(out), *extra]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def _losses(run):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def test_ddp_two_processes_match_one_process_and_fsdp_checkpoint_loads_in_one(tmp_path, capsys):
    assert main(["train", *ARGS, "--out", str(tmp_path / "one")]) == 0
    one = _losses(tmp_path / "one")
    assert len(one) == 6 and max(one) - min(one) > 0.01  # the curve moves, so matching it means something

    out = _torchrun(tmp_path / "ddp")
    assert "2 process(es) on cpu (DDP)" in out and out.count("vitkit train: done") == 1  # rank 0 logs alone
    ddp = _losses(tmp_path / "ddp")
    assert torch.allclose(torch.tensor(ddp), torch.tensor(one), rtol=1e-5, atol=1e-6), (ddp, one)
    a = load_checkpoint(tmp_path / "one")["model"]
    b = load_checkpoint(tmp_path / "ddp")["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)

    out = _torchrun(tmp_path / "fsdp", "--fsdp")
    assert "(FSDP)" in out
    fsdp = _losses(tmp_path / "fsdp")
    assert torch.allclose(torch.tensor(fsdp), torch.tensor(one), rtol=1e-5, atol=1e-6), (fsdp, one)
    # the FSDP run's files are the ordinary single-process ones: vitkit.load reads the model,
    # and one process resumes from its checkpoint (model, optimizer keyed by parameter name)
    model = vitkit.load(tmp_path / "fsdp" / "model")
    ck = load_checkpoint(tmp_path / "fsdp")
    assert all(torch.equal(model.state_dict()[k], ck["model"][k]) for k in ck["model"])
    assert "blocks.0.attn.qkv.weight" in ck["optimizer"]["state"]
    cfg = TrainConfig(model="vit_tiny_patch4_16", model_overrides=dict(width=32, depth=2, heads=4), data="digits",
                      steps=8, batch_size=32, lr=3e-3, warmup_epochs=0, drop_path=0, ema=None, log_every=1,
                      progress=False, seed=1, out=str(tmp_path / "fsdp"), resume="auto")
    assert train(cfg)["steps"] == 8
    assert _losses(tmp_path / "fsdp")[:6] == fsdp
