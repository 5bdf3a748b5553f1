#!/usr/bin/python3
"""Write CLIP text towers in the key layouts original single-file checkpoints use.

A transformers CLIPTextModel(WithProjection) file (text_model.*, text_projection.weight,
as the fixtures clip_l_tiny / clip_g_tiny hold) is written under a key prefix either
  --openclip PREFIX=FILE       in OpenCLIP's names, as SD2.x ("cond_stage_model.model.")
                               and SDXL's bigG ("conditioner.embedders.1.model.") store it:
                               token_embedding.weight, positional_embedding,
                               transformer.resblocks.N.{ln_1, attn.in_proj_weight/bias
                               (q, k, v packed along rows, as nn.MultiheadAttention),
                               attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}, ln_final,
                               text_projection ([D, P] = the Linear weight transposed),
                               logit_scale (CLIP's training temperature, ln(1/0.07))
  --transformers PREFIX=FILE   unchanged names, as SDXL's CLIP-L
                               ("conditioner.embedders.0.transformer.text_model.*")
Tensors outside the text tower (the fixtures' in.* / out.*) and position_ids are dropped.
Repeat the options to put several towers into one file; dtypes are kept.

Usage: /usr/bin/python3 tools/clip_to_openclip.py --out OUT.safetensors
           [--openclip PREFIX=FILE ...] [--transformers PREFIX=FILE ...]
"""
import argparse
import json
import math
import os
import re
import struct
import sys

import numpy as np

NP_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4"}
ST_DTYPES = {np.dtype(v): k for k, v in NP_DTYPES.items()}

# transformers layer part -> OpenCLIP resblock part (q/k/v are packed apart)
LAYER_PARTS = [
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("self_attn.out_proj.", "attn.out_proj."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
]
TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
DROPPED = ("text_model.embeddings.position_ids",)


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + n])
    header.pop("__metadata__", None)
    data = memoryview(blob)[8 + n:]
    out = {}
    for name, v in header.items():
        if v["dtype"] not in NP_DTYPES:
            raise SystemExit("%s: %s has dtype %s, not supported here" % (path, name, v["dtype"]))
        b, e = v["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype=NP_DTYPES[v["dtype"]]).reshape(v["shape"])
    return out


def write_safetensors(path, tensors):
    header, off = {}, 0
    for name, a in tensors:
        header[name] = {"dtype": ST_DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    header["__metadata__"] = {"format": "pt", "note": "written by tools/clip_to_openclip.py"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, a in tensors:
            f.write(np.ascontiguousarray(a).tobytes())
    os.replace(tmp, path)


def tower(src):
    """The text-tower tensors of a transformers file, by name."""
    t = {k: v for k, v in src.items() if k.startswith("text_model.") or k == "text_projection.weight"}
    if "text_model.embeddings.token_embedding.weight" not in t:
        raise SystemExit("no text_model.embeddings.token_embedding.weight: not a transformers CLIP text file")
    return t


def to_openclip(t):
    """[(openclip name, array)] for transformers tensors t."""
    out, used = [], set(DROPPED)
    for k, v in TOP.items():
        out.append((v, t[k]))
        used.add(k)
    layers = sorted({int(m.group(1)) for k in t for m in [re.match(r"text_model\.encoder\.layers\.(\d+)\.", k)] if m})
    for i in layers:
        hf, oc = "text_model.encoder.layers.%d." % i, "transformer.resblocks.%d." % i
        for kind in ("weight", "bias"):
            qkv = [hf + "self_attn.%s_proj.%s" % (p, kind) for p in "qkv"]
            out.append((oc + "attn.in_proj_" + kind, np.concatenate([t[k] for k in qkv], axis=0)))
            used.update(qkv)
        for a, b in LAYER_PARTS:
            for kind in ("weight", "bias"):
                out.append((oc + b + kind, t[hf + a + kind]))
                used.add(hf + a + kind)
    if "text_projection.weight" in t:
        out.append(("text_projection", np.ascontiguousarray(t["text_projection.weight"].T)))
        used.add("text_projection.weight")
    dt = t["text_model.embeddings.token_embedding.weight"].dtype
    out.append(("logit_scale", np.array(math.log(1 / 0.07), dtype=dt)))
    left = sorted(set(t) - used)
    if left:
        raise SystemExit("tensors this script does not map: %s" % ", ".join(left[:8]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--openclip", action="append", default=[], metavar="PREFIX=FILE")
    ap.add_argument("--transformers", action="append", default=[], metavar="PREFIX=FILE")
    a = ap.parse_args()
    if not a.openclip and not a.transformers:
        ap.error("give at least one --openclip or --transformers tower")
    tensors = []
    for spec, openclip in [(s, True) for s in a.openclip] + [(s, False) for s in a.transformers]:
        prefix, sep, path = spec.partition("=")
        if not sep:
            ap.error("%s: expected PREFIX=FILE" % spec)
        t = tower(read_safetensors(path))
        pairs = to_openclip(t) if openclip else [(k, v) for k, v in t.items() if k not in DROPPED]
        tensors += [(prefix + k, v) for k, v in pairs]
    names = [n for n, _ in tensors]
    if len(names) != len(set(names)):
        raise SystemExit("two towers write the same key: give them different prefixes")
    write_safetensors(a.out, tensors)
    print("wrote %s (%d tensors)" % (a.out, len(tensors)), file=sys.stderr)


if __name__ == "__main__":
    main()
