#!/usr/bin/env python3
"""An independent float64 reference of OpenAI's CLIP, written from the architecture as the
state-dict names describe it (it shares no code with clipcu or with OpenAI's clip/model.py).

It reads a model in open_clip's JSON config format plus a safetensors state dict in OpenAI's
layout (visual.*, transformer.resblocks.*, token_embedding, ...) and computes, in float64:
image features, text features (projected, before normalization) and logits_per_image.

  /usr/bin/python3 tests/reference/clip_reference.py CONFIG.json WEIGHTS.safetensors [IO.safetensors]

With an io file (the golden layout: input.images, input.text, eval.*) it prints the norm-wise
relative error of the reference against the stored outputs; this is how the reference itself is
validated against the golden fixtures of ../shared/golden (see validate_golden below):

  /usr/bin/python3 tests/reference/clip_reference.py --validate-golden [GOLDEN_DIR]

Needs PyTorch (any version with torch.nn.functional; used here as a float64 array library) and
numpy. Safetensors files are read and written by the small reader/writer below (no safetensors
package).

Architecture, as implemented here:
  ViT tower: conv1 (patch x patch, stride patch, no bias) -> [N, grid*grid, width];
    prepend class_embedding; + positional_embedding; ln_pre; transformer (pre-norm residual
    blocks: x += attn(ln_1(x)); x += mlp(ln_2(x)); mlp = c_proj(act(c_fc(x)))); ln_post on the
    class token; @ proj.  heads = width // head_width.
  ModifiedResNet tower: stem conv1 (3x3 s2, width/2) bn1 relu, conv2 (3x3, width/2) bn2 relu,
    conv3 (3x3, width) bn3 relu, avgpool 2; layer1..4 of Bottlenecks (planes width, 2w, 4w, 8w;
    stride 1, 2, 2, 2 on the first block; expansion 4): conv1 1x1 bn1 relu, conv2 3x3 bn2 relu,
    avgpool(stride) when stride > 1, conv3 1x1 bn3; shortcut avgpool(stride) then
    downsample.0 (conv 1x1) and downsample.1 (bn) -- OpenAI names its Sequential "-1" (the
    parameterless pool), "0", "1" -- when stride > 1 or the channel count changes; add, relu. attnpool: tokens
    [mean, x_0 .. x_HW-1] + positional_embedding; one query (the mean token) attends over all
    tokens with q_proj/k_proj/v_proj (biases), heads = width * 32 // head_width; c_proj.
    BatchNorm in eval mode (running statistics, eps 1e-5). All convs without bias.
  Text tower: token_embedding[ids] + positional_embedding; causal transformer; ln_final; the row
    at argmax(ids) (the end token has the highest id); @ text_projection.
  logits_per_image = exp(logit_scale) * normalize(image_features) @ normalize(text_features)^T.
  Activation: QuickGELU x * sigmoid(1.702 x) when quick_gelu is true, else exact (erf) GELU.
  LayerNorm eps 1e-5.
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------- safetensors
_NP = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def bf16_bits_to_f32(bits):
    """uint16 bfloat16 bit patterns -> float32 (exact: bf16 is the top half of an f32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x):
    """float32 -> bfloat16 bit patterns, round to nearest even (finite inputs)."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def read_safetensors(path):
    """{name: numpy array} (BF16 converted to float32, exactly) and the __metadata__ dict."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, e in header.items():
        dt, shape = e["dtype"], e["shape"]
        a, b = e["data_offsets"]
        raw = data[base + a:base + b]
        count = int(np.prod(shape)) if shape else 1
        if len(raw) != count * _SIZE[dt]:
            raise ValueError(f"{path}: {name}: {len(raw)} bytes for {dt} {shape}")
        if dt == "BF16":
            arr = bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2"))
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(_NP[dt]).newbyteorder("<")).astype(_NP[dt])
        out[name] = arr.reshape(shape)
    return out, meta


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: (numpy array, dtype string)}; F16 / BF16 are rounded from the array here.
    Names are written in sorted order, the header padded with spaces to 8 bytes."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        arr, dt = tensors[name]
        arr = np.asarray(arr)
        if dt == "BF16":
            raw = f32_to_bf16_bits(arr.astype(np.float32)).astype("<u2").tobytes()
        else:
            raw = np.ascontiguousarray(arr.astype(np.dtype(_NP[dt]).newbyteorder("<"))).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------- config
class Config:
    """The fields of open_clip's JSON that this reference understands (others must be absent)."""

    def __init__(self, j):
        self.embed_dim = int(j["embed_dim"])
        self.quick_gelu = bool(j.get("quick_gelu", False))
        v, t = j["vision_cfg"], j["text_cfg"]
        self.image_size = int(v["image_size"])
        self.resnet = isinstance(v["layers"], (list, tuple))
        self.vision_layers = list(v["layers"]) if self.resnet else int(v["layers"])
        self.vision_width = int(v["width"])
        self.patch_size = None if self.resnet else int(v["patch_size"])
        self.head_width = int(v.get("head_width", 64))
        self.vision_mlp = int(self.vision_width * float(v.get("mlp_ratio", 4.0)))
        if self.resnet:
            self.vision_heads = self.vision_width * 32 // self.head_width
        else:
            self.vision_heads = self.vision_width // self.head_width
        self.context_length = int(t["context_length"])
        self.vocab_size = int(t["vocab_size"])
        self.text_width = int(t["width"])
        self.text_heads = int(t["heads"])
        self.text_layers = int(t["layers"])
        self.text_mlp = int(self.text_width * float(t.get("mlp_ratio", 4.0)))
        known_v = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"}
        known_t = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
        for k in set(v) - known_v:
            raise ValueError(f"vision_cfg.{k}: not understood by this reference")
        for k in set(t) - known_t:
            raise ValueError(f"text_cfg.{k}: not understood by this reference")
        for k in set(j) - {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"}:
            raise ValueError(f"{k}: not understood by this reference")


def load_config(path):
    with open(path) as f:
        return Config(json.load(f))


def state_dict_shapes(cfg):
    """Every parameter and buffer of the OpenAI layout for cfg: {name: shape}."""
    s = {}

    def block(prefix, width, mlp):
        s[prefix + "ln_1.weight"] = [width]
        s[prefix + "ln_1.bias"] = [width]
        s[prefix + "attn.in_proj_weight"] = [3 * width, width]
        s[prefix + "attn.in_proj_bias"] = [3 * width]
        s[prefix + "attn.out_proj.weight"] = [width, width]
        s[prefix + "attn.out_proj.bias"] = [width]
        s[prefix + "ln_2.weight"] = [width]
        s[prefix + "ln_2.bias"] = [width]
        s[prefix + "mlp.c_fc.weight"] = [mlp, width]
        s[prefix + "mlp.c_fc.bias"] = [mlp]
        s[prefix + "mlp.c_proj.weight"] = [width, mlp]
        s[prefix + "mlp.c_proj.bias"] = [width]

    def bn(prefix, c):
        for k in ("weight", "bias", "running_mean", "running_var"):
            s[f"{prefix}.{k}"] = [c]

    W = cfg.vision_width
    if cfg.resnet:
        half = W // 2
        s["visual.conv1.weight"] = [half, 3, 3, 3]
        bn("visual.bn1", half)
        s["visual.conv2.weight"] = [half, half, 3, 3]
        bn("visual.bn2", half)
        s["visual.conv3.weight"] = [W, half, 3, 3]
        bn("visual.bn3", W)
        inplanes = W
        for li, depth in enumerate(cfg.vision_layers):
            planes = W * (2 ** li)
            stride = 1 if li == 0 else 2
            for bi in range(depth):
                p = f"visual.layer{li + 1}.{bi}."
                s[p + "conv1.weight"] = [planes, inplanes, 1, 1]
                bn(p + "bn1", planes)
                s[p + "conv2.weight"] = [planes, planes, 3, 3]
                bn(p + "bn2", planes)
                s[p + "conv3.weight"] = [planes * 4, planes, 1, 1]
                bn(p + "bn3", planes * 4)
                if bi == 0 and (stride > 1 or inplanes != planes * 4):
                    s[p + "downsample.0.weight"] = [planes * 4, inplanes, 1, 1]
                    bn(p + "downsample.1", planes * 4)
                inplanes = planes * 4
        D = W * 32
        grid = cfg.image_size // 32
        s["visual.attnpool.positional_embedding"] = [grid * grid + 1, D]
        for k in ("q_proj", "k_proj", "v_proj"):
            s[f"visual.attnpool.{k}.weight"] = [D, D]
            s[f"visual.attnpool.{k}.bias"] = [D]
        s["visual.attnpool.c_proj.weight"] = [cfg.embed_dim, D]
        s["visual.attnpool.c_proj.bias"] = [cfg.embed_dim]
    else:
        P = cfg.patch_size
        grid = cfg.image_size // P
        s["visual.conv1.weight"] = [W, 3, P, P]
        s["visual.class_embedding"] = [W]
        s["visual.positional_embedding"] = [grid * grid + 1, W]
        s["visual.ln_pre.weight"] = [W]
        s["visual.ln_pre.bias"] = [W]
        for i in range(cfg.vision_layers):
            block(f"visual.transformer.resblocks.{i}.", W, cfg.vision_mlp)
        s["visual.ln_post.weight"] = [W]
        s["visual.ln_post.bias"] = [W]
        s["visual.proj"] = [W, cfg.embed_dim]
    Wt = cfg.text_width
    s["token_embedding.weight"] = [cfg.vocab_size, Wt]
    s["positional_embedding"] = [cfg.context_length, Wt]
    for i in range(cfg.text_layers):
        block(f"transformer.resblocks.{i}.", Wt, cfg.text_mlp)
    s["ln_final.weight"] = [Wt]
    s["ln_final.bias"] = [Wt]
    s["text_projection"] = [Wt, cfg.embed_dim]
    s["logit_scale"] = []
    return s


# ---------------------------------------------------------------- the model, float64
LN_EPS = 1e-5
BN_EPS = 1e-5


class Params:
    """The state dict as float64 torch tensors; records which names were read, so that a layout
    mismatch (a tensor this reference never uses) is an error instead of silently ignored."""

    def __init__(self, arrays):
        self.t = {k: torch.from_numpy(np.asarray(v, dtype=np.float64).copy()) for k, v in arrays.items()
                  if not k.endswith("num_batches_tracked")}
        self.used = set()

    def __getitem__(self, k):
        if k not in self.t:
            raise KeyError(f"state dict has no '{k}'")
        self.used.add(k)
        return self.t[k]

    def __contains__(self, k):
        return k in self.t

    def unused(self):
        return sorted(set(self.t) - self.used)


def activation(x, quick):
    if quick:
        return x * torch.sigmoid(1.702 * x)
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def layer_norm(p, prefix, x):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased, as LayerNorm normalizes
    return (x - mu) / torch.sqrt(var + LN_EPS) * p[prefix + ".weight"] + p[prefix + ".bias"]


def linear(x, w, b=None):
    y = x @ w.t()
    return y if b is None else y + b


def attend(q, k, v, heads, causal):
    """q [N, Tq, C], k/v [N, Tk, C] -> [N, Tq, C]: heads of width C / heads, scaled dot products."""
    N, Tq, C = q.shape
    Tk = k.shape[1]
    D = C // heads
    assert D * heads == C, (C, heads)
    qh = q.reshape(N, Tq, heads, D).permute(0, 2, 1, 3)
    kh = k.reshape(N, Tk, heads, D).permute(0, 2, 1, 3)
    vh = v.reshape(N, Tk, heads, D).permute(0, 2, 1, 3)
    s = qh @ kh.transpose(-1, -2) / math.sqrt(D)  # [N, H, Tq, Tk]
    if causal:
        future = torch.ones(Tq, Tk, dtype=torch.bool).triu(1)
        s = s.masked_fill(future, float("-inf"))
    a = torch.softmax(s, dim=-1)
    return (a @ vh).permute(0, 2, 1, 3).reshape(N, Tq, C)


def residual_block(p, prefix, x, heads, quick, causal):
    """Pre-norm block: packed in_proj (q, k, v rows stacked), out_proj, 2-layer MLP."""
    C = x.shape[-1]
    h = layer_norm(p, prefix + "ln_1", x)
    qkv = linear(h, p[prefix + "attn.in_proj_weight"], p[prefix + "attn.in_proj_bias"])
    q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    a = attend(q, k, v, heads, causal)
    x = x + linear(a, p[prefix + "attn.out_proj.weight"], p[prefix + "attn.out_proj.bias"])
    h = layer_norm(p, prefix + "ln_2", x)
    h = activation(linear(h, p[prefix + "mlp.c_fc.weight"], p[prefix + "mlp.c_fc.bias"]), quick)
    return x + linear(h, p[prefix + "mlp.c_proj.weight"], p[prefix + "mlp.c_proj.bias"])


def transformer(p, prefix, x, layers, heads, quick, causal):
    for i in range(layers):
        x = residual_block(p, f"{prefix}resblocks.{i}.", x, heads, quick, causal)
    return x


def encode_image_vit(p, cfg, images):
    P = cfg.patch_size
    x = F.conv2d(images, p["visual.conv1.weight"], stride=P)  # [N, W, g, g]
    N, W = x.shape[0], x.shape[1]
    x = x.reshape(N, W, -1).transpose(1, 2)  # [N, g*g, W], row-major patches
    cls = p["visual.class_embedding"].reshape(1, 1, W).expand(N, 1, W)
    x = torch.cat([cls, x], dim=1) + p["visual.positional_embedding"]
    x = layer_norm(p, "visual.ln_pre", x)
    x = transformer(p, "visual.transformer.", x, cfg.vision_layers, cfg.vision_heads, cfg.quick_gelu, False)
    x = layer_norm(p, "visual.ln_post", x[:, 0])
    return x @ p["visual.proj"]


def batch_norm_eval(p, prefix, x):
    shape = (1, -1, 1, 1)
    mean = p[prefix + ".running_mean"].reshape(shape)
    var = p[prefix + ".running_var"].reshape(shape)
    return (x - mean) / torch.sqrt(var + BN_EPS) * p[prefix + ".weight"].reshape(shape) + \
        p[prefix + ".bias"].reshape(shape)


def bottleneck(p, prefix, x, stride):
    out = F.relu(batch_norm_eval(p, prefix + "bn1", F.conv2d(x, p[prefix + "conv1.weight"])))
    out = F.relu(batch_norm_eval(p, prefix + "bn2", F.conv2d(out, p[prefix + "conv2.weight"], padding=1)))
    if stride > 1:
        out = F.avg_pool2d(out, stride)
    out = batch_norm_eval(p, prefix + "bn3", F.conv2d(out, p[prefix + "conv3.weight"]))
    if prefix + "downsample.0.weight" in p:
        sc = F.avg_pool2d(x, stride) if stride > 1 else x
        sc = batch_norm_eval(p, prefix + "downsample.1", F.conv2d(sc, p[prefix + "downsample.0.weight"]))
    else:
        sc = x
    return F.relu(out + sc)


def encode_image_resnet(p, cfg, images):
    x = F.relu(batch_norm_eval(p, "visual.bn1", F.conv2d(images, p["visual.conv1.weight"], stride=2, padding=1)))
    x = F.relu(batch_norm_eval(p, "visual.bn2", F.conv2d(x, p["visual.conv2.weight"], padding=1)))
    x = F.relu(batch_norm_eval(p, "visual.bn3", F.conv2d(x, p["visual.conv3.weight"], padding=1)))
    x = F.avg_pool2d(x, 2)
    for li, depth in enumerate(cfg.vision_layers):
        for bi in range(depth):
            stride = 2 if (li > 0 and bi == 0) else 1
            x = bottleneck(p, f"visual.layer{li + 1}.{bi}.", x, stride)
    # attention pool: the mean token queries [mean, every position]
    N, C = x.shape[0], x.shape[1]
    t = x.reshape(N, C, -1).transpose(1, 2)  # [N, HW, C]
    t = torch.cat([t.mean(dim=1, keepdim=True), t], dim=1) + p["visual.attnpool.positional_embedding"]
    q = linear(t[:, :1], p["visual.attnpool.q_proj.weight"], p["visual.attnpool.q_proj.bias"])
    k = linear(t, p["visual.attnpool.k_proj.weight"], p["visual.attnpool.k_proj.bias"])
    v = linear(t, p["visual.attnpool.v_proj.weight"], p["visual.attnpool.v_proj.bias"])
    a = attend(q, k, v, cfg.vision_heads, False)[:, 0]
    return linear(a, p["visual.attnpool.c_proj.weight"], p["visual.attnpool.c_proj.bias"])


def encode_image(p, cfg, images):
    images = torch.as_tensor(np.asarray(images, dtype=np.float64))
    if cfg.resnet:
        return encode_image_resnet(p, cfg, images)
    return encode_image_vit(p, cfg, images)


def encode_text(p, cfg, ids):
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    T = ids.shape[1]
    x = p["token_embedding.weight"][ids] + p["positional_embedding"][:T]
    x = transformer(p, "transformer.", x, cfg.text_layers, cfg.text_heads, cfg.quick_gelu, True)
    x = layer_norm(p, "ln_final", x)
    pooled = x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)]
    return pooled @ p["text_projection"]


def logits_per_image(p, fi, ft):
    fi = fi / fi.norm(dim=1, keepdim=True)
    ft = ft / ft.norm(dim=1, keepdim=True)
    return p["logit_scale"].exp() * fi @ ft.t()


def run(cfg, weights, images, ids):
    """Float64 outputs {image_features, text_features, logits_per_image} as numpy arrays; the
    weights as stored (F16/BF16/F32 upcast exactly). Every stored tensor must be used."""
    p = Params(weights)
    expected = state_dict_shapes(cfg)
    for k, shape in expected.items():
        if k not in p:
            raise KeyError(f"missing '{k}'")
        if list(p.t[k].shape) != shape:
            raise ValueError(f"'{k}' is {list(p.t[k].shape)}, the config says {shape}")
    with torch.no_grad():
        fi = encode_image(p, cfg, images)
        ft = encode_text(p, cfg, ids)
        lpi = logits_per_image(p, fi, ft)
    unused = p.unused()
    if unused:
        raise ValueError(f"tensors the reference never read: {unused}")
    return {"image_features": fi.numpy(), "text_features": ft.numpy(), "logits_per_image": lpi.numpy()}


def rel_err(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def compare(cfg_path, weights_path, io_path, images_key="input.images", text_key="input.text", prefix="eval."):
    cfg = load_config(cfg_path)
    w, _ = read_safetensors(weights_path)
    io, _ = read_safetensors(io_path)
    out = run(cfg, w, io[images_key], io[text_key])
    errs = {k: rel_err(out[k], io[prefix + k]) for k in out}
    return errs


def validate_golden(golden_dir):
    worst = 0.0
    for tag in ("clip_vit_tiny", "clip_rn_tiny"):
        d = lambda s: os.path.join(golden_dir, tag + s)  # noqa: E731
        errs = compare(d(".config.json"), d(".weights.safetensors"), d(".io.safetensors"))
        for k, e in errs.items():
            print(f"{tag:14s} {k:17s} rel err {e:.3e}")
            worst = max(worst, e)
    print(f"worst {worst:.3e}")
    return worst


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    if len(sys.argv) >= 2 and sys.argv[1] == "--validate-golden":
        gd = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "..", "..", "..", "shared", "golden")
        # the golden outputs are float32 roundings of float64 values: ~1e-7 is the floor
        sys.exit(0 if validate_golden(gd) < 1e-6 else 1)
    if len(sys.argv) == 4:
        for k, e in compare(*sys.argv[1:4]).items():
            print(f"{k:17s} rel err {e:.3e}")
    else:
        print(__doc__)
        sys.exit(2)
