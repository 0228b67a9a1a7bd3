#!/usr/bin/env python3
"""Dump a PyTorch CLIP's activations and gradients under clipcu's names, for `clipcu compare`.

    python3 tools/torch_dump.py --config C.json --weights W.safetensors \
        --pixels P.safetensors --tokens T.safetensors [--train-step] [--impl openai|open_clip] \
        [--match GLOB]... [--dtype float64|float32] [--device cpu|cuda] --out torch.safetensors
    clipcu inspect --config C.json --weights W.safetensors --pixels P.safetensors \
        --tokens T.safetensors [--train-step] --out ours.safetensors
    clipcu compare ours.safetensors torch.safetensors --rtol 1e-4

NOT RUN HERE: this project's build machines have no PyTorch. It needs torch and numpy, plus
OpenAI's `clip` package (github.com/openai/CLIP, --impl openai, the default) or `open_clip`
(--impl open_clip). It was written against the module names of openai/CLIP's clip/model.py and
open_clip's model.py / transformer.py / modified_resnet.py; docs/inspect.md lists the names.

How the names line up. clipcu names every module output by its module path (the output of the
last op recorded inside it) and every op output "<module path>.<op>[#k]". Forward hooks on the
PyTorch model see module outputs, so this script writes those, renamed where the two models
differ:
  - OpenAI's text tower sits at the top of CLIP (token_embedding, transformer, ln_final); clipcu
    records it under a "text" scope: "transformer.resblocks.0.attn" -> "text.transformer.resblocks.0.attn";
  - modules that are plain functions in clipcu become the op's name: QuickGELU/GELU "mlp.gelu" ->
    "mlp.quick_gelu" / "mlp.gelu" / "mlp.gelu_tanh"; the ResNet's ReLUs: clipcu fuses each one
    that follows a batch norm into it (the op batch_norm2d_relu of that bn module), so relu1 /
    relu2 (or act1 / act2) -> "bn1.batch_norm2d_relu" / "bn2.batch_norm2d_relu", relu3 / act3 ->
    "bn3.batch_norm2d_relu" in the stem and "relu" in a Bottleneck (after the residual add); a
    single `relu` module called three times (older OpenAI code) maps call k as relu<k+1>; the
    batch norms in front of those ReLUs are not dumped (clipcu's bn module output is after the
    fused ReLU, PyTorch's before); any
    other module called several times gets "#k" on its k-th call, as clipcu numbers repeated
    ops; AvgPool2d "avgpool" and the downsample's "-1" -> "avg_pool2d";
  - layouts: OpenAI runs its transformers sequence-first [T, B, W], clipcu batch-first [B, T, W]:
    tensors inside a sequence-first Transformer are permuted; ln_final (and open_clip's ln_post)
    normalize every token in PyTorch but only the pooled ones in clipcu: the pooled rows are kept.
Identity and dropout modules are skipped (clipcu records nothing for them). Gradients are
captured with tensor hooks on the same outputs ("grad:<name>"), parameter gradients as
"grad:<state-dict name>", plus input.images, input.text, image_features, text_features,
logits_per_image and, with --train-step, loss (symmetric cross entropy, labels 0..B-1).
Each hooked module returns a clone of its output, so that the in-place ops of the ResNet
(`out += identity`, ReLU(inplace=True)) cannot change a value after it was captured.
"""
import argparse
import fnmatch
import json
import os
import struct
import sys

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - documented above
    sys.exit("torch_dump.py needs PyTorch (pip install torch); this project's CI machines do not have it")

# ------------------------------------------------------------------ safetensors without the package
_NP = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
       "U8": np.uint8, "BF16": np.uint16}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        a = np.frombuffer(data[b:end], dtype=_NP[e["dtype"]]).reshape(e["shape"])
        if e["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a.copy()
    return out


def write_safetensors(path, tensors, metadata):
    names = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.int64): "I64",
             np.dtype(np.int32): "I32"}
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, a in tensors:
        a = np.ascontiguousarray(a)
        blob = a.tobytes()
        header[name] = {"dtype": names[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)


def load_input(spec, defaults, what):
    """FILE or FILE:NAME, as clipcu's --pixels/--tokens."""
    path, name = spec, None
    if not os.path.exists(spec) and ":" in spec:
        path, name = spec.rsplit(":", 1)
    ts = read_safetensors(path)
    if name is None:
        name = next((d for d in defaults if d in ts), None)
        if name is None:
            sys.exit(f"{path}: no {what} tensor (looked for {', '.join(defaults)}; name one with {path}:NAME)")
    return ts[name]


# ------------------------------------------------------------------ the model
def build_model(args, cfg):
    vc, tc = cfg["vision_cfg"], cfg["text_cfg"]
    if args.impl == "openai":
        from clip.model import CLIP  # github.com/openai/CLIP
        if not cfg.get("quick_gelu", False):
            sys.exit("OpenAI's CLIP always uses QuickGELU: this config has quick_gelu false, use --impl open_clip")
        if vc.get("head_width", 64) != 64:
            sys.exit("OpenAI's CLIP has 64-wide vision heads: use --impl open_clip for head_width "
                     f"{vc.get('head_width')}")
        layers = vc["layers"]
        model = CLIP(embed_dim=cfg["embed_dim"], image_resolution=vc["image_size"],
                     vision_layers=tuple(layers) if isinstance(layers, list) else layers,
                     vision_width=vc["width"], vision_patch_size=vc.get("patch_size"),
                     context_length=tc["context_length"], vocab_size=tc["vocab_size"],
                     transformer_width=tc["width"], transformer_heads=tc["heads"], transformer_layers=tc["layers"])
    else:
        import open_clip
        model = open_clip.model.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=vc, text_cfg=tc,
                                     quick_gelu=cfg.get("quick_gelu", False))
    if args.weights.endswith(".safetensors"):
        sd = {k: torch.from_numpy(v) for k, v in read_safetensors(args.weights).items()}
    else:  # an OpenAI .pt (TorchScript archive) or a pickled state dict
        try:
            sd = torch.jit.load(args.weights, map_location="cpu").state_dict()
        except RuntimeError:
            sd = torch.load(args.weights, map_location="cpu")
    for k in ("input_resolution", "context_length", "vocab_size"):  # ints in OpenAI's released files
        sd.pop(k, None)
    model.load_state_dict(sd, strict=True)
    return model


def activation_op(module):
    """clipcu's op name for an MLP's activation module."""
    cls = type(module).__name__
    if cls == "QuickGELU":
        return "quick_gelu"
    if isinstance(module, torch.nn.GELU):
        return "gelu_tanh" if getattr(module, "approximate", "none") == "tanh" else "gelu"
    return cls.lower()


RELU_INDEX = {"relu1": 1, "relu2": 2, "relu3": 3, "act1": 1, "act2": 2, "act3": 3}
TEXT_TOP = ("token_embedding", "transformer", "ln_final")


def clipcu_name(name, module, call):
    """clipcu's name for the output of `module` (called `name`) on its call-th call (0-based)."""
    parts = name.split(".")
    if parts[0] in TEXT_TOP:
        parts = ["text"] + parts
    last = parts[-1]
    if isinstance(module, torch.nn.ReLU) and (last in RELU_INDEX or last == "relu"):
        index = RELU_INDEX.get(last, call + 1)
        in_bottleneck = len(parts) >= 2 and parts[-2].isdigit()  # visual.layer<i>.<j>.relu3
        parts[-1] = "relu" if index == 3 and in_bottleneck else f"bn{index}.batch_norm2d_relu"
        return ".".join(parts)
    if last == "gelu" and len(parts) > 1 and parts[-2] == "mlp":
        parts[-1] = activation_op(module)
    elif last == "-1" and len(parts) > 1 and parts[-2] == "downsample":
        parts[-1] = "avg_pool2d"
    elif last == "avgpool" and isinstance(module, torch.nn.AvgPool2d):
        parts[-1] = "avg_pool2d"
    return ".".join(parts) + (f"#{call}" if call else "")


def fused_bn(name, module):
    """A ResNet batch norm whose ReLU clipcu fuses into it (stem bn1-3, a Bottleneck's bn1-2):
    clipcu's module output is after the ReLU, PyTorch's before, so it is not dumped (the ReLU's
    output is, under the fused op's name)."""
    parts = name.split(".")
    if not isinstance(module, torch.nn.BatchNorm2d) or parts[-1] not in ("bn1", "bn2", "bn3"):
        return False
    in_bottleneck = len(parts) >= 2 and parts[-2].isdigit()
    return parts[-1] != "bn3" or not in_bottleneck


def sequence_first(modules, name):
    """True when the module sits in (or is) a Transformer that runs [T, B, W] (OpenAI's, and
    open_clip's before batch_first)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        m = modules.get(".".join(parts[:i]))
        if m is not None and type(m).__name__ == "Transformer":
            return not getattr(m, "batch_first", False)
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="open_clip JSON config (as clipcu takes)")
    ap.add_argument("--weights", required=True, help="safetensors state dict (OpenAI/open_clip names), or a .pt")
    ap.add_argument("--impl", choices=["openai", "open_clip"], default="openai")
    ap.add_argument("--pixels", required=True, help="FILE[:NAME]: [N, 3, R, R] normalized images")
    ap.add_argument("--tokens", required=True, help="FILE[:NAME]: [N, context_length] token ids")
    ap.add_argument("--train-step", action="store_true", help="training mode, loss and backward")
    ap.add_argument("--match", action="append", default=[], help="keep names matching this glob (repeatable)")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                    help="compute precision (written as float32); float64 makes the dump a reference")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    with open(args.config) as f:
        cfg = json.load(f)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    model = build_model(args, cfg).to(device=args.device, dtype=dtype)
    model.train(args.train_step)
    images_np = load_input(args.pixels, ["pixels", "input.images", "input.pixel_values"], "image").astype(np.float32)
    text_np = load_input(args.tokens, ["tokens", "input.text", "input.input_ids"], "token id").astype(np.int64)
    if text_np.shape[1] != cfg["text_cfg"]["context_length"]:
        sys.exit(f"token rows of length {text_np.shape[1]}: PyTorch's CLIP adds the whole positional embedding, "
                 f"pad them to the context length {cfg['text_cfg']['context_length']}")
    images = torch.from_numpy(images_np).to(args.device, dtype)
    text = torch.from_numpy(text_np).to(args.device)
    eot = text.argmax(dim=-1)  # the pooled position of each row, as both models pool

    values, grads, calls = [], {}, {}
    modules = dict(model.named_modules())
    seq_first = {name: sequence_first(modules, name) for name in modules}

    def to_clipcu_layout(name, cname, t):
        if t.dim() == 3 and seq_first[name]:
            t = t.permute(1, 0, 2)
        if t.dim() == 3 and cname == "text.ln_final":
            t = t[torch.arange(t.shape[0], device=t.device), eot]
        if t.dim() == 3 and cname == "visual.ln_post":
            t = t[:, 0]
        return t

    def make_hook(name):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            if not torch.is_tensor(out):
                return None
            k = calls.get(name, 0)
            calls[name] = k + 1
            cname = clipcu_name(name, module, k)
            values.append((cname, to_clipcu_layout(name, cname, out.detach()).clone()))
            if out.requires_grad:
                out.register_hook(lambda g: grads.__setitem__(cname, to_clipcu_layout(name, cname, g).clone()))
            # downstream gets a copy: in-place ops after this module cannot change `out`
            copy = out.clone()
            return (copy,) + tuple(output[1:]) if isinstance(output, tuple) else copy
        return hook

    skip = (torch.nn.Identity, torch.nn.Dropout)
    for name, m in model.named_modules():
        if name and not isinstance(m, skip) and not name.endswith("patch_dropout") and not fused_bn(name, m):
            m.register_forward_hook(make_hook(name))

    with torch.set_grad_enabled(args.train_step):
        image_features = model.encode_image(images)
        text_features = model.encode_text(text)
        img_n = image_features / image_features.norm(dim=-1, keepdim=True)
        txt_n = text_features / text_features.norm(dim=-1, keepdim=True)
        logits_per_image = model.logit_scale.exp() * img_n @ txt_n.t()
        results = [("image_features", image_features), ("text_features", text_features),
                   ("logits_per_image", logits_per_image)]
        if args.train_step:
            labels = torch.arange(images.shape[0], device=images.device)
            loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.t(), labels)) / 2
            results.append(("loss", loss))
            for name, t in results:  # clipcu's loss is [1]; PyTorch's a 0-d tensor
                t.register_hook(lambda g, name=name: grads.__setitem__(name, g.reshape(-1) if g.dim() == 0 else g.clone()))
            loss.backward()

    dump = [("input.images", images_np), ("input.text", text_np)]
    dump += [(n, t.detach().reshape(-1 if t.dim() == 0 else t.shape).float().cpu().numpy()) for n, t in results]
    dump += [(n, t.float().cpu().numpy()) for n, t in values]
    if args.train_step:
        order = [n for n, _ in results] + [n for n, _ in values]
        dump += [("grad:" + n, grads[n].float().cpu().numpy()) for n in order if n in grads]
        dump += [("grad:" + n, p.grad.float().cpu().numpy().reshape(p.shape))
                 for n, p in model.named_parameters() if p.grad is not None]
    seen, kept = set(), []
    for n, a in dump:
        if n in seen or (args.match and not any(fnmatch.fnmatchcase(n, p) for p in args.match)):
            continue
        seen.add(n)
        kept.append((n, a))
    write_safetensors(args.out, kept, {"source": "tools/torch_dump.py", "impl": args.impl, "dtype": args.dtype,
                                       "mode": "train-step" if args.train_step else "inference",
                                       "names": "docs/inspect.md"})
    print(f"torch_dump: {len(kept)} tensors -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
