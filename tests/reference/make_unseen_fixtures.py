#!/usr/bin/env python3
"""Writes tests/data/unseen/: small random CLIP models in OpenAI's checkpoint layout whose shapes
the golden fixtures (../shared/golden: one tiny ViT, one tiny ResNet, F32 weights) do not have,
with reference outputs from tests/reference/clip_reference.py in float64.

Regenerate (from the repository root; needs PyTorch and numpy, e.g. Debian's python3):

  /usr/bin/python3 tests/reference/make_unseen_fixtures.py [OUT_DIR]   # default tests/data/unseen

The script first checks the reference against the golden whole-model outputs (it refuses to
write fixtures from a reference that does not reproduce them), then for each model <name>:
  <name>.config.json         open_clip's config format
  <name>.weights.safetensors every parameter and buffer under OpenAI's state-dict names, stored
                             as F16 / BF16 (rounded to nearest even from float32)
  <name>.io.safetensors      pixels [N, 3, R, R] F32 (already normalized; see make_images), tokens [M, T] I64
                             (start id vocab-2, end id vocab-1 = the highest id, zeros after;
                             one row fills the context), and image_features [N, E],
                             text_features [M, E] (projected, before normalization),
                             logits_per_image [N, M]: float64 computed from the weights AS
                             STORED (read back from the written file, so F16/BF16 rounding is
                             part of the model), rounded to F32.
Everything is seeded (torch.Generator per model), so a rerun rewrites the same bytes.
"""
import json
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import clip_reference as ref  # noqa: E402

# Shapes chosen to differ from the goldens (ViT: width 128, 2 heads of 64, 2 layers, 32 px /
# patch 8, QuickGELU; ResNet: [1, 2, 1, 1], width 8, 64 px, 4 heads of 64; text: width 64,
# 2 heads, 2 layers, context 16, vocab 64; all F32) while staying a few hundred KB in all.
MODELS = {
    # odd patch grid (5 x 5 = 25 patches), 3 heads of 12, depth 3; 1-layer text with 3 heads of 8
    "vit_g5_w36_h3_f16": dict(
        config={"embed_dim": 20, "quick_gelu": True,
                "vision_cfg": {"image_size": 40, "layers": 3, "width": 36, "patch_size": 8, "head_width": 12},
                "text_cfg": {"context_length": 12, "vocab_size": 100, "width": 24, "heads": 3, "layers": 1}},
        dtype="F16", images=3, texts=4, logit_scale=math.log(1 / 0.07) + 0.25, seed=11),
    # exact (erf) GELU in both towers, 4 heads of 8, vision MLP ratio 2.5 (open_clip's
    # int(width * mlp_ratio) = 80), prime embed_dim; text context 9, 4 heads, 2 layers
    "vit_gelu_w32_h4_bf16": dict(
        config={"embed_dim": 13, "quick_gelu": False,
                "vision_cfg": {"image_size": 24, "layers": 2, "width": 32, "patch_size": 6, "head_width": 8,
                               "mlp_ratio": 2.5},
                "text_cfg": {"context_length": 9, "vocab_size": 50, "width": 32, "heads": 4, "layers": 2}},
        dtype="BF16", images=3, texts=5, logit_scale=3.9, seed=22),
    # ResNet [1, 1, 2, 1] of stem width 4 (attention pool at 128 = 8 heads of 16) at 96 px: an odd
    # 3 x 3 final feature map (10 pool tokens); single-head text; num_batches_tracked stored as
    # I64 as PyTorch checkpoints have it
    "rn_1121_w4_px96_f16": dict(
        config={"embed_dim": 16, "quick_gelu": True,
                "vision_cfg": {"image_size": 96, "layers": [1, 1, 2, 1], "width": 4, "head_width": 16},
                "text_cfg": {"context_length": 7, "vocab_size": 30, "width": 16, "heads": 1, "layers": 2}},
        dtype="F16", images=2, texts=3, logit_scale=2.0, seed=33),
}


def random_weights(cfg, logit_scale, g):
    """float32 weights at sensible scales for every name of the layout: matrices and convs
    ~ N(0, 1/fan_in), gains near 1 (BatchNorm bn3 near 0.5, as zero-init residual gains would be
    trained away from 0), small biases; BatchNorm running statistics come from
    calibrate_batchnorm."""
    out = {}
    for name, shape in ref.state_dict_shapes(cfg).items():
        leaf = name.rsplit(".", 1)[-1]

        def randn(std, mean=0.0):
            return (mean + std * torch.randn(shape, generator=g, dtype=torch.float64)).float().numpy()

        if name == "logit_scale":
            w = np.array(logit_scale, dtype=np.float32)
        elif leaf == "running_mean":  # placeholders: calibrate_batchnorm sets them
            w = np.zeros(shape, np.float32)
        elif leaf == "running_var":
            w = np.ones(shape, np.float32)
        elif name.endswith("bn3.weight"):
            w = randn(0.1, 0.5)
        elif leaf == "weight" and len(shape) == 1:  # LayerNorm and BatchNorm gains
            w = randn(0.1, 1.0)
        elif leaf in ("bias", "in_proj_bias"):
            w = randn(0.05)
        elif name == "visual.attnpool.positional_embedding":
            w = randn(0.2)  # comparable with the pooled features, so positions matter
        elif "embedding" in name:  # class, positional, token embeddings
            w = randn(0.1 if name.startswith("token") or "class" in name else 0.05)
        elif name in ("visual.proj", "text_projection"):  # used as x @ proj: fan-in is dim 0
            w = randn(1.0 / math.sqrt(shape[0]))
        else:  # linear [out, in] and conv [out, in, k, k]
            w = randn(1.0 / math.sqrt(int(np.prod(shape[1:]))))
        out[name] = w
    return out


def calibrate_batchnorm(cfg, weights, images, g):
    """Running statistics near the true ones, as a trained network has them: one forward pass
    over a calibration batch in which every BatchNorm, in order, first sets its running mean /
    variance from its input's batch statistics (mean + 0.1 std noise, variance x U(0.7, 1.3)).
    With arbitrary statistics instead, the tiny ResNet's output is dominated by BatchNorm shifts
    and barely depends on the image (features of two images then differ by ~1e-3 only)."""
    p = ref.Params(weights)
    plain = ref.batch_norm_eval

    def calibrating(p_, prefix, x):
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        C = mean.numel()
        p_.t[prefix + ".running_mean"] = mean + 0.1 * var.sqrt() * torch.randn(C, generator=g, dtype=torch.float64)
        p_.t[prefix + ".running_var"] = var * (0.7 + 0.6 * torch.rand(C, generator=g, dtype=torch.float64))
        return plain(p_, prefix, x)

    ref.batch_norm_eval = calibrating  # looked up at call time by the ResNet's layers
    try:
        with torch.no_grad():
            ref.encode_image(p, cfg, images)
    finally:
        ref.batch_norm_eval = plain
    for k in weights:
        if k.endswith("running_mean") or k.endswith("running_var"):
            weights[k] = p.t[k].float().numpy()


def make_images(N, R, g):
    """Image-like inputs: smooth per-image structure (6 x 6 noise, bilinearly upsampled) plus
    pixel noise; iid noise alone averages out in the ResNet's pooling, so every image would look
    alike to it."""
    coarse = torch.randn(N, 3, 6, 6, generator=g, dtype=torch.float64)
    smooth = torch.nn.functional.interpolate(coarse, size=(R, R), mode="bilinear", align_corners=False)
    return (smooth + 0.3 * torch.randn(N, 3, R, R, generator=g, dtype=torch.float64)).float().numpy()


def make_tokens(cfg, M, g):
    V, T = cfg.vocab_size, cfg.context_length
    ids = torch.zeros(M, T, dtype=torch.int64)
    for i in range(M):
        n = T - 1 if i == M - 1 else 1 + (i * 3) % (T - 2)  # end position; the last row is full
        ids[i, 0] = V - 2
        ids[i, 1:n] = torch.randint(1, V - 2, (n - 1,), generator=g)
        ids[i, n] = V - 1
    return ids.numpy()


def make_model(out_dir, name, spec):
    cfg_json = spec["config"]
    cfg = ref.Config(cfg_json)
    g = torch.Generator().manual_seed(spec["seed"])
    weights = random_weights(cfg, spec["logit_scale"], g)
    R = cfg.image_size
    pixels = make_images(spec["images"], R, g)
    if cfg.resnet:
        calibrate_batchnorm(cfg, weights, make_images(4, R, g), g)
    tokens = make_tokens(cfg, spec["texts"], g)

    base = os.path.join(out_dir, name)
    with open(base + ".config.json", "w") as f:
        json.dump(cfg_json, f, indent=1)
        f.write("\n")
    stored = {k: (v, spec["dtype"]) for k, v in weights.items()}
    if cfg.resnet:  # PyTorch's BatchNorm counter: an I64 scalar every loader must tolerate
        for k in weights:
            if k.endswith("running_mean"):
                stored[k.replace("running_mean", "num_batches_tracked")] = (np.array(1000, np.int64), "I64")
    ref.write_safetensors(base + ".weights.safetensors", stored,
                          {"format": "pt", "made_by": "tests/reference/make_unseen_fixtures.py"})

    # the reference runs on the weights read back from the file: the model as stored
    back, _ = ref.read_safetensors(base + ".weights.safetensors")
    out = ref.run(cfg, back, pixels, tokens)
    rounding = max(ref.rel_err(back[k], weights[k]) for k in weights if weights[k].size > 1)
    io = {"pixels": (pixels, "F32"), "tokens": (tokens, "I64")}
    for k, v in out.items():
        io[k] = (v.astype(np.float32), "F32")
    ref.write_safetensors(base + ".io.safetensors", io,
                          {"config": json.dumps(cfg_json), "weights_dtype": spec["dtype"],
                           "reference": "tests/reference/clip_reference.py, float64 from the stored weights"})
    size = sum(os.path.getsize(base + s) for s in (".config.json", ".weights.safetensors", ".io.safetensors"))
    nparams = sum(v.size for v in weights.values())
    print(f"{name}: {nparams} params ({spec['dtype']}, worst per-tensor rounding {rounding:.1e}), "
          f"heads vision {cfg.vision_heads} text {cfg.text_heads}, {size} bytes; "
          f"|image_features| {np.linalg.norm(out['image_features']):.3f}, logits range "
          f"[{out['logits_per_image'].min():.3f}, {out['logits_per_image'].max():.3f}]")
    return size


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "data", "unseen")
    golden = os.environ.get("CLIPCU_GOLDEN", os.path.join(HERE, "..", "..", "..", "shared", "golden"))
    worst = ref.validate_golden(golden)
    if worst > 1e-6:
        sys.exit(f"the reference misses the golden outputs (worst rel err {worst:.3e}): not writing fixtures")
    os.makedirs(out_dir, exist_ok=True)
    total = sum(make_model(out_dir, name, spec) for name, spec in MODELS.items())
    print(f"total {total} bytes in {os.path.normpath(out_dir)}")


if __name__ == "__main__":
    main()
