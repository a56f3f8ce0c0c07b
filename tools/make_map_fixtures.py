#!/usr/bin/env python3
"""PyTorch reference for the map trainer (DESIGN.md §5): tests/fixtures/map/torch_ref.safetensors.

Trains both map kinds the way the paper does it in PyTorch -- nn.Linear layers (ReLU between
for the autoencoder), F.mse_loss, torch.optim.AdamW, micro-batches of `batch` rows with
`accum` accumulated backward passes of loss/k per optimizer step -- on a small planted problem,
and records everything the C++ test needs to replay it exactly:

  x [N, d_src], y [N, d_tgt]             the data (float32)
  order [epochs * N] (int32)             the row order, one torch.randperm per epoch: the test
                                         feeds rows in this explicit order, so no RNG is shared
  KIND.init.W1 / b1 / W2 / b2            initial weights (affine: KIND.init.W / b)
  KIND.final.*                           weights after `steps` optimizer steps
  KIND.step_losses [steps] (float64)     per optimizer step, the mean of its micro-batch losses
                                         (each taken before that step's update)

Semantics of the last step of an epoch: the epoch's micro-batches are grouped `accum` at a
time in order; a last group of k < accum micro-batches is a step of its own, with loss/k
per micro-batch (here 200 rows, batch 16: 12 full micro-batches + one of 8, so every fourth
step is a single half-size micro-batch).

Usage: tools/.venv/bin/python tools/make_map_fixtures.py
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "map"

D_SRC, D_TGT = 12, 20
HIDDEN = math.isqrt(D_SRC * D_TGT)  # floor(sqrt(d_src * d_tgt)) = 15, the paper's width
N = 200
BATCH, ACCUM = 16, 4
LR, WEIGHT_DECAY, BETAS, EPS = 3e-3, 0.01, (0.9, 0.999), 1e-8
STEPS = 50


def planted_data(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """y = B·relu(A·x + c) + d + noise, scaled so the targets have unit-ish variance."""
    x = torch.randn(N, D_SRC, generator=g)
    a = torch.randn(24, D_SRC, generator=g) / math.sqrt(D_SRC)
    c = torch.randn(24, generator=g) * 0.5
    b = torch.randn(D_TGT, 24, generator=g) / math.sqrt(24)
    d = torch.randn(D_TGT, generator=g)
    y = torch.relu(x @ a.T + c) @ b.T + d + 0.01 * torch.randn(N, D_TGT, generator=g)
    return x.contiguous(), y.contiguous()


def make_model(kind: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "affine":
        return torch.nn.Linear(D_SRC, D_TGT)
    return torch.nn.Sequential(torch.nn.Linear(D_SRC, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, D_TGT))


def named_weights(kind: str, model: torch.nn.Module, stage: str) -> dict[str, torch.Tensor]:
    if kind == "affine":
        return {f"affine.{stage}.W": model.weight.detach().clone(), f"affine.{stage}.b": model.bias.detach().clone()}
    l1, l2 = model[0], model[2]
    return {
        f"autoencoder.{stage}.W1": l1.weight.detach().clone(),
        f"autoencoder.{stage}.b1": l1.bias.detach().clone(),
        f"autoencoder.{stage}.W2": l2.weight.detach().clone(),
        f"autoencoder.{stage}.b2": l2.bias.detach().clone(),
    }


def train(kind: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, perms: list[torch.Tensor]) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    losses: list[float] = []
    for perm in perms:
        micro = [perm[i : i + BATCH] for i in range(0, N, BATCH)]
        for s in range(0, len(micro), ACCUM):
            group = micro[s : s + ACCUM]
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for idx in group:
                loss = F.mse_loss(model(x[idx]), y[idx])
                (loss / len(group)).backward()
                step_loss += loss.item() / len(group)
            opt.step()
            losses.append(step_loss)
            if len(losses) == STEPS:
                return losses
    raise RuntimeError("not enough epochs for the steps")


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1234)
    x, y = planted_data(g)
    steps_per_epoch = math.ceil(math.ceil(N / BATCH) / ACCUM)
    epochs = math.ceil(STEPS / steps_per_epoch)
    perms = [torch.randperm(N, generator=g) for _ in range(epochs)]
    tensors: dict[str, torch.Tensor] = {"x": x, "y": y, "order": torch.cat(perms).to(torch.int32)}
    for kind, seed in (("affine", 7), ("autoencoder", 8)):
        model = make_model(kind, seed)
        tensors.update(named_weights(kind, model, "init"))
        losses = train(kind, model, x, y, perms)
        tensors.update(named_weights(kind, model, "final"))
        tensors[f"{kind}.step_losses"] = torch.tensor(losses, dtype=torch.float64)
        print(f"{kind}: step losses {losses[0]:.5f} -> {losses[-1]:.5f}")
    meta = {
        "d_src": str(D_SRC), "d_tgt": str(D_TGT), "hidden": str(HIDDEN), "rows": str(N), "epochs": str(epochs),
        "batch": str(BATCH), "accum": str(ACCUM), "lr": repr(LR), "weight_decay": repr(WEIGHT_DECAY),
        "beta1": repr(BETAS[0]), "beta2": repr(BETAS[1]), "eps": repr(EPS), "steps": str(STEPS),
        "torch_version": torch.__version__,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "torch_ref.safetensors"), metadata=meta)
    print(f"wrote {OUT / 'torch_ref.safetensors'}")


if __name__ == "__main__":
    main()
