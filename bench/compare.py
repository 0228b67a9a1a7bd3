#!/usr/bin/env python3
"""One markdown table from our Google Benchmark JSON files and bench/pytorch_baseline.py's JSON.

Rows are benchmark cases. Our names are <op>/<dtype>/<case>/<impl> (bench_cuda_ops): the impls
starting with "base-" are the vendor baselines measured in the same process (cuBLAS, cuBLASLt,
the cuBLAS + softmax attention composition, the device-to-device copy roofline), the others are
our variants; the fastest of each group is shown, the rest listed in the last column. PyTorch's
kernel results carry the same <op>/<dtype>/<case> key. Model rows (training samples/s, inference
images/s and texts/s) pair our whole-step benchmarks (counters samples/s, images/s, texts/s; the
config and batch found in the name or label) with PyTorch eager and torch.compile.

Every ratio is throughput ours / theirs = their time / our time: above 1, ours is faster.
Benchmarks that were skipped (validation failed, unsupported variant) are listed under the table.

usage: bench/compare.py [-o table.md] [--title TEXT] FILE.json ...
"""
import argparse
import json
import re
import sys

SUFFIXES = re.compile(r"(/(manual_time|real_time|process_time|min_time:[^/]*|iterations:[^/]*|repeats:[^/]*|threads:[^/]*))+$")
UNIT_US = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}


def norm(s):
    return re.sub(r"[^a-z0-9]", "", s.lower())


def fmt_time(us):
    if us is None:
        return ""
    if us >= 1e4:
        return "%.1f ms" % (us / 1e3)
    if us >= 100:
        return "%.0f µs" % us
    return "%.1f µs" % us


def fmt_rate(r):
    for k, unit in (("tflops", "TFLOP/s"), ("gflops", "GFLOP/s"), ("gbps", "GB/s")):
        v = r.get(k)
        if v:
            return " (%.0f %s)" % (v, unit) if v >= 10 else " (%.2f %s)" % (v, unit)
    return ""


def fmt_ratio(ours_t, theirs_t):
    if not ours_t or not theirs_t:
        return ""
    x = theirs_t / ours_t
    return "**%.2fx**" % x if x >= 1 else "%.2fx" % x


def fmt_count(v, unit):
    return "" if v is None else "%s %s" % ("{:,.0f}".format(v) if v >= 100 else "%.1f" % v, unit)


class Data:
    def __init__(self):
        self.kernels = {}      # key -> {"ours": {impl: rec}, "base": {impl: rec}, "torch": {impl: rec}}
        self.models = {}       # (config_norm, batch, what) -> {"ours": val, "ours_name":..., "eager": val, "compile": val}
        self.skipped = []      # (name, message)
        self.meta = []         # lines about the machines
        self.configs = set()   # normalized config names seen in PyTorch results
        self.display = {}      # normalized config name -> as written

    def slot(self, key):
        return self.kernels.setdefault(key, {"ours": {}, "base": {}, "torch": {}})


def read_json(path):
    """A JSON document; a Google Benchmark file cut short (a time limit killed the program while
    it wrote) is repaired by keeping its complete benchmark entries."""
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text), False
    except ValueError:
        cut = text.rfind("\n    }")
        if '"benchmarks"' not in text or cut < 0:
            raise
        return json.loads(text[:cut] + "\n    }\n  ]\n}\n"), True


def load_gbench(doc, data, path):
    ctx = doc.get("context", {})
    data.meta.append("`%s`: Google Benchmark, %s, %s CPUs, library %s" % (
        path, ctx.get("date", "?"), ctx.get("num_cpus", "?"), ctx.get("library_build_type", "?")))
    runs = {}
    for b in doc.get("benchmarks", []):
        if b.get("run_type", "iteration") != "iteration":
            continue
        name = SUFFIXES.sub("", b.get("run_name", b["name"]))
        if b.get("error_occurred"):
            data.skipped.append((name, b.get("error_message", "error")))
            continue
        us = float(b["real_time"]) * UNIT_US.get(b.get("time_unit", "ns"), 1e-3)
        runs.setdefault(name, []).append((us, b))
    for name, lst in runs.items():
        us = sum(t for t, _ in lst) / len(lst)  # the mean over repetitions
        b = lst[-1][1]
        rec = {"time_us": us, "tflops": b.get("TFLOP/s"), "gbps": b.get("GB/s"), "err": b.get("err"), "name": name,
               "gflops": b.get("GFLOP/s")}
        if not rec["gbps"] and b.get("bytes_per_second"):
            rec["gbps"] = b["bytes_per_second"] * 1e-9
        rate = {k: b[k] for k in ("samples/s", "images/s", "texts/s") if k in b}
        if rate:
            add_our_model(name, b.get("label", ""), rate, data)
            continue
        parts = name.split("/")
        if b.get("ratio") and ("cudnn_TFLOP/s" in b or "base_TFLOP/s" in b):
            # bench_cuda_conv: one benchmark times ours and the vendor's; ratio = their time / ours
            base = "base-cudnn" if "cudnn_TFLOP/s" in b else "base"
            slot = data.slot(name)
            slot["ours"]["clipcu"] = rec
            slot["base"][base] = {"time_us": us * float(b["ratio"]), "name": name,
                                  "tflops": b.get("cudnn_TFLOP/s", b.get("base_TFLOP/s"))}
            continue
        if len(parts) >= 2 and ":" not in parts[-1] and "/" in name:
            key, impl = "/".join(parts[:-1]), parts[-1]
        else:
            key, impl = name, "clipcu"
        data.slot(key)["base" if impl.startswith("base-") else "ours"][impl] = rec


def find_batch(text):
    m = re.search(r"(?:\bB[:=]?|batch[ :=_]?)(\d+)", text)
    return int(m.group(1)) if m else None


def add_our_model(name, label, rate, data):
    text = name + " " + label
    batch = find_batch(label) or find_batch(name)  # the label says the batch used (bench_step halves on OOM)
    # PyTorch runs bf16 autocast: our fp32 steps get rows of their own
    if re.search(r"fp32|f32|bf16:0", text):
        text = "fp32 " + text
    for what, v in rate.items():
        kind = {"samples/s": "train", "images/s": "images", "texts/s": "texts"}[what]
        data.models.setdefault(("?" + norm(text), batch, kind), {})["ours"] = (v, name + (" (" + label + ")" if label else ""))


def load_torch(doc, data, path):
    metas = doc.get("meta", {})
    for m in metas if isinstance(metas, list) else [metas]:  # a merged file (--write-torch) has several
        data.meta.append("`%s`: PyTorch %s on %s (%s), CUDA %s, cuDNN %s, %s" % (
            path, m.get("torch", "?"), m.get("gpu", m.get("device", "?")), m.get("mode", "?"), m.get("cuda", "-"),
            m.get("cudnn", "-"), m.get("date", "?")))
    for r in doc.get("results", []):
        if r.get("kind") == "error":
            data.skipped.append(("pytorch_baseline " + r.get("name", "?"), r.get("error", "")))
        elif r.get("kind") == "kernel":
            data.slot(r["key"])["torch"][r["impl"]] = r
        elif r.get("kind") == "model":
            cfg, batch = norm(r["config"]), r["batch"]
            data.configs.add(cfg)
            data.display[cfg] = r["config"]
            if "error" in r:
                data.skipped.append((r["name"], r["error"]))
                continue
            slot = "compile" if str(r.get("mode", "")).startswith("compile") else "eager"
            for kind, field in (("train", "train_samples_per_s"), ("images", "infer_images_per_s"),
                                ("texts", "infer_texts_per_s")):
                if r.get(field):
                    e = data.models.setdefault((cfg, batch, kind), {})
                    e[slot] = r[field]
                    if slot == "eager" and kind == "train":
                        e["mem"] = r.get("peak_mem_gib")


def resolve_models(data):
    """Our model entries were keyed by their whole text: attach them to PyTorch's (config, batch)
    when the text names one of its configs (the longest matching name wins)."""
    out = {}
    for (cfg, batch, kind), e in data.models.items():
        if not cfg.startswith("?"):
            out.setdefault((cfg, batch, kind), {}).update(e)
    for (cfg, batch, kind), e in data.models.items():
        if not cfg.startswith("?"):
            continue
        text = cfg[1:]
        match = None
        if not text.startswith("fp32"):
            match = max((c for c in data.configs if c and c in text), key=len, default=None)
        key = (match, batch, kind) if match else (text, batch, kind)
        slot = out.setdefault(key, {})
        if "ours" in slot:  # two of ours on one row: keep both visible
            key = (text, batch, kind)
            slot = out.setdefault(key, {})
        if key[0] == text:  # no PyTorch config of that name: show our benchmark's own name
            data.display[text] = e["ours"][1].split(" (")[0]
        slot.update(e)
    return out


def best(group):
    ok = [(r["time_us"], impl, r) for impl, r in group.items() if r.get("time_us")]
    return min(ok, key=lambda x: x[0]) if ok else None


def table(data):
    head = ("| benchmark | ours (fastest variant) | vendor baseline (fastest) | ours / vendor | PyTorch eager | "
            "ours / PyTorch | torch.compile | ours / compile | other variants |")
    rows = [head, "|" + "---|" * 9]
    for key in sorted(data.kernels):
        g = data.kernels[key]
        o, b, t = best(g["ours"]), best(g["base"]), best(g["torch"])
        cell = lambda x: "" if x is None else "%s %s%s" % (x[1], fmt_time(x[0]), fmt_rate(x[2]))
        others = []
        for grp in ("ours", "base", "torch"):
            chosen = {"ours": o, "base": b, "torch": t}[grp]
            for impl, r in sorted(g[grp].items(), key=lambda kv: kv[1]["time_us"]):
                if chosen is None or impl != chosen[1]:
                    others.append("%s %s" % (impl, fmt_time(r["time_us"])))
        rows.append("| %s | %s | %s | %s | %s | %s |  |  | %s |" % (
            key, cell(o), cell(b), fmt_ratio(o and o[0], b and b[0]), cell(t), fmt_ratio(o and o[0], t and t[0]),
            "; ".join(others)))
    units = {"train": "samples/s", "images": "images/s", "texts": "texts/s"}
    for (cfg, batch, kind), e in sorted(data.models.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0, kv[0][2])):
        ours = e.get("ours")
        u = units[kind]
        r = lambda theirs: "" if not ours or not theirs else (
            "**%.2fx**" % (ours[0] / theirs) if ours[0] >= theirs else "%.2fx" % (ours[0] / theirs))
        mem = " (peak %.1f GiB)" % e["mem"] if e.get("mem") else ""
        label = "%s %s B%s" % ({"train": "train step", "images": "inference images", "texts": "inference texts"}[kind],
                               data.display.get(cfg, cfg), batch if batch is not None else "?")
        rows.append("| %s | %s | | | %s%s | %s | %s | %s | %s |" % (
            label, fmt_count(ours[0], u) if ours else "", fmt_count(e.get("eager"), u), mem, r(e.get("eager")),
            fmt_count(e.get("compile"), u), r(e.get("compile")), ours[1] if ours else ""))
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("-o", "--out", help="markdown file (default: stdout)")
    ap.add_argument("--title", default="clipcu vs vendor libraries vs PyTorch")
    ap.add_argument("--write-ours", help="also write every Google Benchmark input merged into this JSON file")
    ap.add_argument("--write-torch", help="also write every pytorch_baseline input merged into this JSON file")
    args = ap.parse_args()
    data = Data()
    merged_ours, merged_torch = None, None
    for path in args.files:
        name = path.split("/")[-1]
        try:
            doc, repaired = read_json(path)
        except (OSError, ValueError) as e:
            print("compare: skipping %s: %s" % (path, e), file=sys.stderr)
            data.meta.append("`%s`: unreadable (%s)" % (name, e))
            continue
        if "benchmarks" in doc:
            load_gbench(doc, data, name + (" (cut short, complete entries kept)" if repaired else ""))
            if merged_ours is None:
                merged_ours = {"context": doc.get("context", {}), "benchmarks": []}
            merged_ours["benchmarks"] += doc.get("benchmarks", [])
        elif "results" in doc:
            load_torch(doc, data, name)
            if merged_torch is None:
                merged_torch = {"meta": [], "results": []}
            merged_torch["meta"].append(doc.get("meta", {}))
            merged_torch["results"] += doc.get("results", [])
        else:
            print("compare: %s is neither Google Benchmark nor pytorch_baseline JSON" % path, file=sys.stderr)
    for target, doc in ((args.write_ours, merged_ours), (args.write_torch, merged_torch)):
        if target and doc is not None:
            with open(target, "w") as f:
                json.dump(doc, f, indent=1)
    data.models = resolve_models(data)
    out = ["# " + args.title, "",
           "Ratios are throughput ours / theirs (their time / our time): above 1 ours is faster. Times are per call "
           "(CUDA events after warm-up); vendor baselines ran in the same process on the same inputs.", ""]
    out += ["- " + m for m in data.meta] + ["", table(data), ""]
    if data.skipped:
        out += ["Skipped or failed:", ""] + ["- `%s`: %s" % (n, m) for n, m in data.skipped] + [""]
    text = "\n".join(out)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print("compare: %d kernel rows, %d model rows -> %s" % (len(data.kernels), len(data.models), args.out))
    else:
        print(text)


if __name__ == "__main__":
    main()
