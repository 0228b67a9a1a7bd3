#!/usr/bin/env python3
"""PyTorch baseline for bench/ (issue 8): the same configs and shapes as our benchmarks, in PyTorch,
to run beside them on the same GPU. Writes one JSON file; bench/compare.py puts it next to ours.

Models (a compact CLIP of its own: open_clip is not installed on the GPU machine): the configs in
weights/configs/*.json (open_clip's format). ViT: conv patch embedding, class token, pre-LN
transformer, ln_post, projection. ModifiedResNet (RN50): 3-conv stem, Bottlenecks with
anti-aliased (avg-pool) strides, attention pooling. Text: causal transformer, end-token pooling.
Attention is F.scaled_dot_product_attention (PyTorch >= 2.0; a plain softmax composition on older
versions, so this file also runs on the CPU with PyTorch 1.13 for testing).

Per model (batch 256, as bench_step's GPU benchmarks): training samples/s (bf16 autocast, fp32 weights, fused AdamW; eager and, in
--mode compile, torch.compile), peak memory (torch.cuda.max_memory_allocated), inference
images/s and texts/s (eager, bf16 autocast, no_grad).
Kernels (--mode eager): torch.matmul on our GEMM shapes (bf16; f32 squares with TF32 allowed,
as our f32 GEMMs use TF32), SDPA forward + backward on the attention shapes (the default
dispatch and each backend that accepts the shape), F.layer_norm forward / backward.
Names match bench_cuda_ops: <op>/<dtype>/<case>/<impl>, impl torch-*.

usage:
  /usr/bin/python3 bench/pytorch_baseline.py --out torch.json                      # GPU, eager
  /usr/bin/python3 bench/pytorch_baseline.py --mode compile --out torch_compile.json
  /usr/bin/python3 bench/pytorch_baseline.py --device cpu --configs clip-tiny-cpu --batch 4 --smoke --out t.json
"""
import argparse
import datetime
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BATCH = {"clip-tiny-cpu": 256, "ViT-B-32": 256, "RN50": 256}  # as bench_step's GPU benchmarks


# ----------------------------------------------------------------------------- config
def load_config(name):
    """An open_clip JSON config from weights/configs, with the engine's defaults filled in
    (engine/models/config.h): head_width 64, mlp_ratio 4, quick_gelu false."""
    path = name if name.endswith(".json") else os.path.join(REPO, "weights", "configs", name + ".json")
    with open(path) as f:
        c = json.load(f)
    v, t = c["vision_cfg"], c["text_cfg"]
    v.setdefault("head_width", 64)
    v.setdefault("mlp_ratio", 4.0)
    t.setdefault("mlp_ratio", 4.0)
    c.setdefault("quick_gelu", False)
    c["name"] = os.path.splitext(os.path.basename(path))[0]
    return c


# ----------------------------------------------------------------------------- model
class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


def attention(q, k, v, causal):
    """q, k, v [B, H, T, D]."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        T = q.shape[-2]
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        s = s.masked_fill(mask, float("-inf"))
    return s.softmax(-1) @ v


class SelfAttention(nn.Module):
    def __init__(self, width, heads, causal):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x):  # [B, T, C]
        B, T, C = x.shape
        qkv = self.in_proj(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        o = attention(qkv[0], qkv[1], qkv[2], self.causal)
        return self.out_proj(o.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, width, heads, mlp_width, act, causal, eps=1e-5):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = SelfAttention(width, heads, causal)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_width), act(), nn.Linear(mlp_width, width))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nn.Module):
    def __init__(self, v, embed_dim, act):
        super().__init__()
        w, p = v["width"], v["patch_size"]
        grid = v["image_size"] // p
        self.conv1 = nn.Conv2d(3, w, kernel_size=p, stride=p, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(w) * w ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, w) * w ** -0.5)
        self.ln_pre = nn.LayerNorm(w)
        heads = w // v["head_width"]
        self.blocks = nn.Sequential(*[Block(w, heads, int(w * v["mlp_ratio"]), act, False) for _ in range(v["layers"])])
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.randn(w, embed_dim) * w ** -0.5)

    def forward(self, x):  # [B, 3, R, R]
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [B, grid^2, w]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        if x.device.type != "cuda":
            x = x.float()  # CPU autocast (PyTorch 1.13) has no float32 layer_norm for bf16 input
        x = self.blocks(self.ln_pre(x))
        x = self.ln_post(x[:, 0])
        return x @ self.proj.to(x.dtype)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride > 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.AvgPool2d(stride) if stride > 1 else nn.Identity(),
                                            nn.Conv2d(inplanes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    def __init__(self, spacial_dim, embed_dim, heads, output_dim):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.heads = heads

    def forward(self, x):  # [B, C, H, W]
        B, C = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        T, Hh = x.shape[1], self.heads
        q = self.q_proj(x[:, :1]).view(B, 1, Hh, C // Hh).transpose(1, 2)
        k = self.k_proj(x).view(B, T, Hh, C // Hh).transpose(1, 2)
        v = self.v_proj(x).view(B, T, Hh, C // Hh).transpose(1, 2)
        o = attention(q, k, v, False)  # [B, H, 1, D]
        return self.c_proj(o.transpose(1, 2).reshape(B, C))


class ModifiedResNet(nn.Module):
    def __init__(self, v, embed_dim):
        super().__init__()
        w = v["width"]
        self.stem = nn.Sequential(
            nn.Conv2d(3, w // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w // 2), nn.ReLU(inplace=True),
            nn.Conv2d(w // 2, w // 2, 3, padding=1, bias=False), nn.BatchNorm2d(w // 2), nn.ReLU(inplace=True),
            nn.Conv2d(w // 2, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.AvgPool2d(2))
        layers, inplanes = [], w
        for i, n in enumerate(v["layers"]):
            planes, stride = w * 2 ** i, 1 if i == 0 else 2
            blocks = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * 4
            blocks += [Bottleneck(inplanes, planes, 1) for _ in range(1, n)]
            layers.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*layers)
        heads = w * 32 // v["head_width"]
        self.attnpool = AttentionPool2d(v["image_size"] // 32, w * 32, heads, embed_dim)

    def forward(self, x):
        return self.attnpool(self.layers(self.stem(x)))


class TextTransformer(nn.Module):
    def __init__(self, t, embed_dim, act):
        super().__init__()
        w = t["width"]
        self.token_embedding = nn.Embedding(t["vocab_size"], w)
        self.positional_embedding = nn.Parameter(torch.randn(t["context_length"], w) * 0.01)
        self.blocks = nn.Sequential(*[Block(w, t["heads"], int(w * t["mlp_ratio"]), act, True) for _ in range(t["layers"])])
        self.ln_final = nn.LayerNorm(w)
        self.text_projection = nn.Parameter(torch.randn(w, embed_dim) * w ** -0.5)

    def forward(self, ids):  # [B, T] int64; the end token has the largest id
        x = self.token_embedding(ids) + self.positional_embedding
        x = self.ln_final(self.blocks(x))
        x = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]
        return x @ self.text_projection.to(x.dtype)


class CLIP(nn.Module):
    def __init__(self, c):
        super().__init__()
        act = QuickGELU if c["quick_gelu"] else nn.GELU
        v = c["vision_cfg"]
        self.visual = (ModifiedResNet(v, c["embed_dim"]) if isinstance(v["layers"], (list, tuple))
                       else VisionTransformer(v, c["embed_dim"], act))
        self.text = TextTransformer(c["text_cfg"], c["embed_dim"], act)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, images, ids):
        return self.visual(images), self.text(ids)


def clip_loss(img, txt, logit_scale):
    img = F.normalize(img.float(), dim=-1)
    txt = F.normalize(txt.float(), dim=-1)
    logits = logit_scale.exp() * img @ txt.t()
    labels = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


# ----------------------------------------------------------------------------- timing
def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, dev, warmup=3, min_iters=5, max_iters=200, min_time=0.05):
    """Mean seconds per call of fn after warm-up: CUDA events on the GPU, wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    sync(dev)
    iters, total = 0, 0.0
    while iters < min_iters or (total < min_time and iters < max_iters):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            total += a.elapsed_time(b) * 1e-3
        else:
            t = time.perf_counter()
            fn()
            total += time.perf_counter() - t
        iters += 1
    return total / iters


def autocast(dev):
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)


# ----------------------------------------------------------------------------- model benchmarks
def make_inputs(c, B, dev, channels_last):
    R, t = c["vision_cfg"]["image_size"], c["text_cfg"]
    g = torch.Generator().manual_seed(0)
    images = torch.randn(B, 3, R, R, generator=g).to(dev)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    T, V = t["context_length"], t["vocab_size"]
    ids = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        n = 3 + b % (T - 3)
        ids[b, 0] = V - 2  # start token
        ids[b, 1:n] = torch.randint(1, V - 3, (n - 1,), generator=g)
        ids[b, n] = V - 1  # end token (the largest id: argmax pooling finds it)
    return images, ids.to(dev)


def make_optimizer(model, dev):
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.2}, {"params": rest, "weight_decay": 0.0}]
    kw = dict(lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
    if dev.type == "cuda":
        try:
            return torch.optim.AdamW(groups, fused=True, **kw), "fused"
        except (TypeError, RuntimeError):
            pass
    try:
        return torch.optim.AdamW(groups, foreach=True, **kw), "foreach"
    except (TypeError, RuntimeError):
        return torch.optim.AdamW(groups, **kw), "for-loop"


def bench_model(c, B, dev, compiled, args, emit):
    torch.manual_seed(0)
    channels_last = dev.type == "cuda" and isinstance(c["vision_cfg"]["layers"], list)
    model = CLIP(c).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    images, ids = make_inputs(c, B, dev, channels_last)
    opt, opt_kind = make_optimizer(model, dev)
    fwd = torch.compile(model) if compiled else model
    mode = ("compile" if compiled else "eager") + "-bf16-autocast"

    def train_step():
        with autocast(dev):
            img, txt = fwd(images, ids)
            loss = clip_loss(img, txt, model.logit_scale)
        loss.backward()
        if args.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model.train()
    t0 = time.perf_counter()
    train_step()  # the first step: compilation, cuDNN autotuning, optimizer state
    sync(dev)
    first = time.perf_counter() - t0
    step = time_fn(train_step, dev, warmup=2, min_iters=args.iters, max_iters=args.iters, min_time=0)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda" else None
    n_params = sum(p.numel() for p in model.parameters())
    rec = {"kind": "model", "name": "train/%s/B%d/torch-%s" % (c["name"], B, mode), "config": c["name"], "batch": B,
           "mode": mode, "optimizer": "AdamW " + opt_kind, "params": n_params,
           "train_step_ms": step * 1e3, "train_samples_per_s": B / step, "first_step_s": first, "peak_mem_gib": peak,
           "channels_last": channels_last}
    if not compiled:  # inference, eager
        model.eval()
        with torch.no_grad(), autocast(dev):
            ti = time_fn(lambda: model.visual(images), dev, warmup=2, min_iters=args.iters, max_iters=args.iters,
                         min_time=0)
            tt = time_fn(lambda: model.text(ids), dev, warmup=2, min_iters=args.iters, max_iters=args.iters, min_time=0)
        rec["infer_images_per_s"] = B / ti
        rec["infer_texts_per_s"] = B / tt
    emit(rec)
    del model, opt, fwd, images, ids
    if dev.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- kernel benchmarks
def gemm_cases(smoke):
    """(case, M, N, K, ta, tb) as bench_cuda_ops names them; A [M, K] ([K, M] when ta), B [K, N]
    ([N, K] when tb)."""
    out = []
    models = [("vitb32", 256 * 50, 768), ("vitb16", 256 * 197, 768), ("text", 256 * 77, 512)]
    if smoke:
        models = [("vitb32", 2 * 50, 768)]
    for name, M, W in models:
        for layer, N, K in [("qkv", 3 * W, W), ("proj", W, W), ("fc", 4 * W, W), ("fc2", W, 4 * W)]:
            base = "%s_%s" % (name, layer)
            out.append((base + "_fwd_NT", M, N, K, False, True))
            out.append((base + "_dX_NN", M, K, N, False, False))
            out.append((base + "_dW_TN", N, K, M, True, False))
    if not smoke:  # RN50's attention pooling: k / v projections over 7 x 7 + 1 tokens, width 2048
        M, W = 256 * 50, 2048
        out += [("rn50_attnpool_kv_fwd_NT", M, W, W, False, True), ("rn50_attnpool_kv_dX_NN", M, W, W, False, False),
                ("rn50_attnpool_kv_dW_TN", W, W, M, True, False)]
    for n in ([256] if smoke else [1024, 2048, 4096, 8192]):
        out.append(("square%d_NN" % n, n, n, n, False, False))
    return out


def bench_kernels(dev, args, emit):
    smoke = args.smoke
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # f32 GEMMs on TF32 tensor cores, as ours
        torch.backends.cudnn.allow_tf32 = True
    mt = 0.0 if smoke else args.kernel_min_time

    def rec(key, impl, t, flops=0.0, nbytes=0.0, **extra):
        r = {"kind": "kernel", "name": key + "/" + impl, "key": key, "impl": impl, "time_us": t * 1e6}
        if flops:
            r["tflops"] = flops / t * 1e-12
        if nbytes:
            r["gbps"] = nbytes / t * 1e-9
        r.update(extra)
        emit(r)

    for part in (kernels_gemm, kernels_sdpa, kernels_layernorm):
        try:
            part(dev, smoke, mt, rec)
        except Exception as e:  # one part failing (an API of another PyTorch version) keeps the others
            emit({"kind": "error", "name": part.__name__, "error": "%s: %s" % (type(e).__name__, str(e)[:300])})
            if cuda:
                torch.cuda.empty_cache()


def kernels_gemm(dev, smoke, mt, rec):
    """torch.matmul on transposed views (cuBLAS takes the transposes as flags, no copies)."""
    cases = gemm_cases(smoke)
    for dtype, tname in [(torch.bfloat16, "bf16"), (torch.float32, "f32")]:
        for case, M, N, K, ta, tb in cases:
            if dtype == torch.float32 and not case.startswith("square"):
                continue
            a = torch.randn(K, M, device=dev, dtype=dtype).t() if ta else torch.randn(M, K, device=dev, dtype=dtype)
            b = torch.randn(N, K, device=dev, dtype=dtype).t() if tb else torch.randn(K, N, device=dev, dtype=dtype)
            out = torch.empty(M, N, device=dev, dtype=dtype)
            t = time_fn(lambda: torch.matmul(a, b, out=out), dev, min_time=mt, max_iters=3 if smoke else 200)
            rec("gemm/%s/%s" % (tname, case), "torch-matmul", t, flops=2.0 * M * N * K)
            del a, b, out


def kernels_sdpa(dev, smoke, mt, rec):
    """SDPA forward + backward (torch.autograd.grad: no accumulation into .grad), by the default
    dispatch and by each backend that takes the shape."""
    cuda = dev.type == "cuda"
    shapes = [("vitb32_B256_H12_T50_D64", 256, 12, 50, 64, False), ("vitb16_B256_H12_T197_D64", 256, 12, 197, 64, False),
              ("text_B256_H8_T77_D64_causal", 256, 8, 77, 64, True)]
    backends = [("torch-sdpa", None)]
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        for nm in ["CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"]:
            if hasattr(SDPBackend, nm):
                backends.append(("torch-sdpa-" + nm.split("_")[0].lower(), (sdpa_kernel, getattr(SDPBackend, nm))))
    except ImportError:
        pass
    if not cuda:
        backends = backends[:1]
    for case, B, H, T, D, causal in shapes:
        if smoke:
            B = 2
        dt = torch.bfloat16 if cuda else torch.float32
        q, k, v = (torch.randn(B, H, T, D, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
        dout = torch.randn(B, H, T, D, device=dev, dtype=dt)

        def fb():
            o = attention(q, k, v, causal)
            return torch.autograd.grad(o, (q, k, v), dout)

        flops = 3.5 * 4.0 * B * H * T * T * D * (0.5 if causal else 1.0)
        for impl, ctx in backends:
            try:
                if ctx is None:
                    t = time_fn(fb, dev, min_time=mt, max_iters=3 if smoke else 200)
                else:
                    with ctx[0](ctx[1]):
                        t = time_fn(fb, dev, min_time=mt, max_iters=200)
            except RuntimeError as e:  # the backend does not take this shape / GPU
                print("  %s %s: not available (%s)" % (case, impl, (str(e).splitlines() or [""])[0][:100]),
                      file=sys.stderr)
                continue
            rec("attention_fwd_bwd/%s/%s" % ("bf16" if cuda else "f32", case), impl, t, flops=flops)
        del q, k, v, dout


def kernels_layernorm(dev, smoke, mt, rec):
    """F.layer_norm forward and backward on the shapes of bench_cuda_ops."""
    for case, N, C, dtype, tname in [("vitb32_12800x768", 12800, 768, torch.float32, "f32"),
                                     ("vitb32_12800x768", 12800, 768, torch.bfloat16, "bf16"),
                                     ("vitb16_50432x768", 50432, 768, torch.bfloat16, "bf16"),
                                     ("text_19712x512", 19712, 512, torch.bfloat16, "bf16")]:
        if smoke:
            N = 64
        esz = 4 if dtype == torch.float32 else 2
        x = torch.randn(N, C, device=dev, dtype=dtype, requires_grad=True)
        w = torch.randn(C, device=dev, dtype=dtype, requires_grad=True)
        bb = torch.randn(C, device=dev, dtype=dtype, requires_grad=True)
        dy = torch.randn(N, C, device=dev, dtype=dtype)
        with torch.no_grad():
            t = time_fn(lambda: F.layer_norm(x, (C,), w, bb), dev, min_time=mt, max_iters=3 if smoke else 200)
        rec("layernorm/%s/%s/fwd" % (tname, case), "torch", t, nbytes=2.0 * N * C * esz)
        y = F.layer_norm(x, (C,), w, bb)
        t = time_fn(lambda: torch.autograd.grad(y, (x, w, bb), dy, retain_graph=True), dev, min_time=mt,
                    max_iters=3 if smoke else 200)
        # torch writes dx (ours accumulates, +1 read): count dy, x, dx as ours counts dy, h, dx, dx
        rec("layernorm/%s/%s/bwd" % (tname, case), "torch", t, nbytes=3.0 * N * C * esz)
        del x, w, bb, dy, y


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file (rewritten after every result)")
    ap.add_argument("--device", default="cuda", help="cuda or cpu")
    ap.add_argument("--mode", default="eager", choices=["eager", "compile", "all"],
                    help="eager: kernels + eager models; compile: torch.compile training only; all: both")
    ap.add_argument("--configs", default="clip-tiny-cpu,ViT-B-32,RN50", help="comma-separated config names or paths")
    ap.add_argument("--batch", type=int, default=0, help="batch for every config (default 256, as bench_step's GPU runs)")
    ap.add_argument("--iters", type=int, default=10, help="timed training / inference steps per model")
    ap.add_argument("--kernel-min-time", type=float, default=0.03, help="seconds of timed calls per kernel shape")
    ap.add_argument("--no-kernels", action="store_true", help="skip the kernel-level benchmarks")
    ap.add_argument("--no-models", action="store_true", help="skip the model benchmarks")
    ap.add_argument("--clip-grad-norm", type=float, default=0.0, help="> 0: clip_grad_norm_ before the step")
    ap.add_argument("--smoke", action="store_true", help="tiny kernel shapes, few iterations (tests the code paths)")
    args = ap.parse_args()

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("pytorch_baseline: no CUDA device (use --device cpu)")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    meta = {"torch": torch.__version__, "device": str(dev), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "mode": args.mode, "argv": sys.argv[1:]}
    if dev.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(0)
        meta["cuda"] = torch.version.cuda
        meta["cudnn"] = torch.backends.cudnn.version()
    doc = {"meta": meta, "results": []}

    def emit(r):
        doc["results"].append(r)
        print(json.dumps(r), flush=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, args.out)

    emit({"kind": "meta", "name": "meta", **meta})
    t0 = time.perf_counter()
    if args.mode in ("eager", "all") and not args.no_kernels:
        bench_kernels(dev, args, emit)
    if not args.no_models:
        for name in [s for s in args.configs.split(",") if s]:
            c = load_config(name)
            B = args.batch or DEFAULT_BATCH.get(c["name"], 256)
            modes = {"eager": [False], "compile": [True], "all": [False, True]}[args.mode]
            for compiled in modes:
                if compiled and not hasattr(torch, "compile"):
                    print("pytorch_baseline: torch.compile needs PyTorch 2", file=sys.stderr)
                    continue
                try:
                    bench_model(c, B, dev, compiled, args, emit)
                except Exception as e:  # out of memory, a compile failure: record it and go on
                    emit({"kind": "model", "name": "train/%s/B%d/torch-%s" % (c["name"], B,
                          ("compile" if compiled else "eager") + "-bf16-autocast"), "config": c["name"], "batch": B,
                          "error": "%s: %s" % (type(e).__name__, (str(e).splitlines() or [""])[0][:300])})
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
    print("pytorch_baseline: %d results in %.1f s -> %s" % (len(doc["results"]), time.perf_counter() - t0, args.out))


if __name__ == "__main__":
    main()
