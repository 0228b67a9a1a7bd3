#!/usr/bin/env python3
"""How far PyTorch's own bf16 computation of a golden model lands from the float64 reference:
the yardstick for clipcu's bf16 GPU checks (tests/test_cuda_models.cpp).

For a golden model (../shared/golden/TAG.{config.json,weights.safetensors,io.safetensors}) it
runs one training step twice with PyTorch: in float64, and with bf16 parameters and activations
(torch.bfloat16 tensors; the contrastive loss in float32 from the features, as clipcu's fused loss
does), BatchNorm in training mode (batch statistics) as in the golden training step. It writes
the norm-wise relative error of the bf16 run against the float64 run for the step-0 features,
logits, loss and every parameter gradient, as JSON:

  /usr/bin/python3 tests/reference/bf16_reference_errors.py GOLDEN_DIR TAG OUT.json

The float64 run must reproduce the golden gradients (checked, 1e-6): then the bf16 numbers
measure bf16 itself, not this script. Needs PyTorch with bfloat16 conv2d/batch_norm on the CPU
(1.13 works) and numpy. The model code is tests/reference/clip_reference.py's.
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_reference as R  # noqa: E402


def batch_norm_train(p, prefix, x):
    return F.batch_norm(x, None, None, p[prefix + ".weight"], p[prefix + ".bias"], training=True, eps=R.BN_EPS)


def step0(cfg, weights, io, dtype):
    """Features, logits, loss and every gradient of one training step, as float64 tensors."""
    p = R.Params(weights)
    for k in p.t:
        p.t[k] = p.t[k].to(dtype).requires_grad_(True)
    images = torch.as_tensor(np.asarray(io["input.images"], dtype=np.float64)).to(dtype)
    ids = torch.as_tensor(np.asarray(io["input.text"], dtype=np.int64))
    fi = R.encode_image_resnet(p, cfg, images) if cfg.resnet else R.encode_image_vit(p, cfg, images)
    T = ids.shape[1]
    x = p["token_embedding.weight"][ids] + p["positional_embedding"][:T]
    x = R.transformer(p, "transformer.", x, cfg.text_layers, cfg.text_heads, cfg.quick_gelu, True)
    x = R.layer_norm(p, "ln_final", x)
    ft = x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ p["text_projection"]
    loss_t = torch.float64 if dtype == torch.float64 else torch.float32
    fin, ftn = fi.to(loss_t), ft.to(loss_t)
    fin = fin / fin.norm(dim=1, keepdim=True)
    ftn = ftn / ftn.norm(dim=1, keepdim=True)
    logits = p["logit_scale"].to(loss_t).exp() * fin @ ftn.t()
    labels = torch.arange(logits.shape[0])
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    loss.backward()
    out = {"train.step0.image_features": fi, "train.step0.text_features": ft,
           "train.step0.logits_per_image": logits, "train.step0.loss": loss.reshape(1)}
    out = {k: v.detach().double() for k, v in out.items()}
    grads = {"grad." + k: v.grad.double() for k, v in p.t.items() if v.grad is not None}
    return out, grads


def rel(a, ref):
    d = float(ref.norm())
    return float((a - ref).norm()) / d if d > 0 else float((a - ref).norm())


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    golden, tag, out_path = sys.argv[1:]
    R.batch_norm_eval = batch_norm_train  # the golden training step uses batch statistics
    cfg = R.load_config(os.path.join(golden, tag + ".config.json"))
    weights = R.read_safetensors(os.path.join(golden, tag + ".weights.safetensors"))[0]
    io = R.read_safetensors(os.path.join(golden, tag + ".io.safetensors"))[0]
    o64, g64 = step0(cfg, weights, io, torch.float64)
    for k, g in g64.items():  # the float64 run is the golden one (key biases: exact gradient 0, skipped)
        if k in io and float(np.linalg.norm(io[k])) > 1e-6:
            e = rel(g, torch.as_tensor(np.asarray(io[k], dtype=np.float64)))
            if e > 1e-6:
                sys.exit(f"{tag}: the float64 run's {k} is {e:.2e} from the golden file")
    obf, gbf = step0(cfg, weights, io, torch.bfloat16)
    errs = {k: rel(obf[k], o64[k]) for k in o64}
    num = den = 0.0
    for k in g64:
        errs[k] = rel(gbf[k], g64[k])
        num += float((gbf[k] - g64[k]).norm()) ** 2
        den += float(g64[k].norm()) ** 2
    errs["grad.all"] = (num / den) ** 0.5
    doc = {"what": f"PyTorch {torch.__version__} bf16 (CPU) against float64, {tag}, one training step: "
                   "norm-wise relative errors", "errors": errs}
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    worst = sorted(((v, k) for k, v in errs.items() if k.startswith("grad.") and k != "grad.all"), reverse=True)[:5]
    print(f"{tag}: features {errs['train.step0.image_features']:.4f}, all gradients {errs['grad.all']:.4f}, "
          f"worst {', '.join(f'{k} {v:.3f}' for v, k in worst)}")


if __name__ == "__main__":
    main()
