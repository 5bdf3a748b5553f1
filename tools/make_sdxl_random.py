#!/usr/bin/python3
"""Write a FULL-SIZE SDXL base single-file checkpoint with RANDOM weights.

Layout: the original (Stability sgm) key names, as `sd_xl_base_1.0.safetensors` has them:
  model.diffusion_model.*               UNet: model_channels 320, channel_mult 1,2,4,
                                        num_res_blocks 2, transformer depth 0,2,10 per
                                        level (middle 10), heads of width 64, context 2048,
                                        linear proj_in/proj_out (use_linear_in_transformer),
                                        label_emb.0.0/0.2 for adm_in_channels 2816
  first_stage_model.*                   AutoencoderKL (ch 128, mult 1,2,4,4, 2 res blocks,
                                        z_channels 4, embed_dim 4; attention as 1x1 convs)
  conditioner.embedders.0.transformer.text_model.*
                                        CLIP ViT-L/14 text encoder, transformers names
                                        (12 layers, width 768, 77 positions, vocab 49408)
  conditioner.embedders.1.model.*       OpenCLIP ViT-bigG/14 text tower (width 1280, 32
                                        layers, 20 heads, MLP 5120, packed q/k/v
                                        in_proj, text_projection [1280, 1280], logit_scale)
The file has no DDPM schedule buffers (sgm computes its sigmas).

Weights: fp16. Conv/linear weights ~ N(0, std) (std 0.02 by default), norm weights 1,
biases 0, embeddings N(0, 0.02), logit_scale ln(100). position_ids is I64 like the
original. The safetensors container is written by hand, streamed tensor by tensor.
Every run checks the parameter counts against the real model's (UNet 2,567,463,684,
CLIP-L 123,060,480, bigG 694,659,841, VAE 83,653,863) before writing anything.

Usage:  /usr/bin/python3 tools/make_sdxl_random.py OUT.safetensors [--seed N] [--std S]
        [--list]  (print tensor names/shapes and totals, write nothing)
"""
import argparse
import json
import math
import struct
import sys

import numpy as np

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_L = "conditioner.embedders.0.transformer.text_model."
CLIP_G = "conditioner.embedders.1.model."

# Parameter counts of the released sd_xl_base_1.0 components (integer buffers excluded).
EXPECTED = {UNET: 2567463684, VAE: 83653863, CLIP_L: 123060480, CLIP_G: 694659841}


# ----------------------------------------------------------------------------
# Tensor list. Each entry: (name, shape, kind) with kind in
#   "w"   conv/linear weight   -> N(0, std)
#   "b"   bias                 -> 0
#   "n"   norm weight (GN/LN)  -> 1
#   "e"   embedding            -> N(0, 0.02)
#   "s"   logit_scale          -> ln(100)
#   "i64" position ids         -> arange
# ----------------------------------------------------------------------------

class Tensors:
    def __init__(self):
        self.list = []

    def add(self, name, shape, kind):
        self.list.append((name, tuple(shape), kind))

    def conv(self, n, co, ci, k):
        self.add(n + ".weight", (co, ci, k, k), "w")
        self.add(n + ".bias", (co,), "b")

    def lin(self, n, co, ci, bias=True):
        self.add(n + ".weight", (co, ci), "w")
        if bias:
            self.add(n + ".bias", (co,), "b")

    def norm(self, n, c):
        self.add(n + ".weight", (c,), "n")
        self.add(n + ".bias", (c,), "b")


def unet_tensors(T, p=UNET):
    mc, mult, nres, depth, mid_depth, ctx, adm = 320, [1, 2, 4], 2, [0, 2, 10], 10, 2048, 2816
    temb = mc * 4

    def resblock(n, ci, co):
        T.norm(n + ".in_layers.0", ci)
        T.conv(n + ".in_layers.2", co, ci, 3)
        T.lin(n + ".emb_layers.1", co, temb)
        T.norm(n + ".out_layers.0", co)
        T.conv(n + ".out_layers.3", co, co, 3)
        if ci != co:
            T.conv(n + ".skip_connection", co, ci, 1)

    def transformer(n, c, d):
        T.norm(n + ".norm", c)
        T.lin(n + ".proj_in", c, c)             # use_linear_in_transformer=True
        for i in range(d):
            b = n + ".transformer_blocks.%d" % i
            T.lin(b + ".attn1.to_q", c, c, bias=False)
            T.lin(b + ".attn1.to_k", c, c, bias=False)
            T.lin(b + ".attn1.to_v", c, c, bias=False)
            T.lin(b + ".attn1.to_out.0", c, c)
            T.lin(b + ".ff.net.0.proj", c * 8, c)  # GEGLU: 2 * (4c)
            T.lin(b + ".ff.net.2", c, c * 4)
            T.lin(b + ".attn2.to_q", c, c, bias=False)
            T.lin(b + ".attn2.to_k", c, ctx, bias=False)
            T.lin(b + ".attn2.to_v", c, ctx, bias=False)
            T.lin(b + ".attn2.to_out.0", c, c)
            T.norm(b + ".norm1", c)
            T.norm(b + ".norm2", c)
            T.norm(b + ".norm3", c)
        T.lin(n + ".proj_out", c, c)

    T.lin(p + "time_embed.0", temb, mc)
    T.lin(p + "time_embed.2", temb, temb)
    T.lin(p + "label_emb.0.0", temb, adm)
    T.lin(p + "label_emb.0.2", temb, temb)

    T.conv(p + "input_blocks.0.0", mc, 4, 3)
    chans = [mc]
    ch, idx = mc, 1
    for level, m in enumerate(mult):
        for _ in range(nres):
            n = p + "input_blocks.%d" % idx
            resblock(n + ".0", ch, m * mc)
            ch = m * mc
            if depth[level]:
                transformer(n + ".1", ch, depth[level])
            chans.append(ch)
            idx += 1
        if level != len(mult) - 1:
            T.conv(p + "input_blocks.%d.0.op" % idx, ch, ch, 3)
            chans.append(ch)
            idx += 1

    resblock(p + "middle_block.0", ch, ch)
    transformer(p + "middle_block.1", ch, mid_depth)
    resblock(p + "middle_block.2", ch, ch)

    idx = 0
    for level, m in list(enumerate(mult))[::-1]:
        for i in range(nres + 1):
            n = p + "output_blocks.%d" % idx
            resblock(n + ".0", ch + chans.pop(), m * mc)
            ch = m * mc
            sub = 1
            if depth[level]:
                transformer(n + ".1", ch, depth[level])
                sub = 2
            if level and i == nres:
                T.conv(n + ".%d.conv" % sub, ch, ch, 3)
            idx += 1

    T.norm(p + "out.0", mc)
    T.conv(p + "out.2", 4, mc, 3)


def vae_tensors(T, p=VAE):
    ch, mult, nres, z, embed = 128, [1, 2, 4, 4], 2, 4, 4

    def resblock(n, ci, co):
        T.norm(n + ".norm1", ci)
        T.conv(n + ".conv1", co, ci, 3)
        T.norm(n + ".norm2", co)
        T.conv(n + ".conv2", co, co, 3)
        if ci != co:
            T.conv(n + ".nin_shortcut", co, ci, 1)

    def attn(n, c):
        T.norm(n + ".norm", c)
        for k in ("q", "k", "v", "proj_out"):
            T.conv(n + "." + k, c, c, 1)

    e = p + "encoder."
    T.conv(e + "conv_in", ch, 3, 3)
    in_mult = [1] + mult
    for i, m in enumerate(mult):
        bi, bo = ch * in_mult[i], ch * m
        for j in range(nres):
            resblock(e + "down.%d.block.%d" % (i, j), bi, bo)
            bi = bo
        if i != len(mult) - 1:
            T.conv(e + "down.%d.downsample.conv" % i, bi, bi, 3)
    bi = ch * mult[-1]
    resblock(e + "mid.block_1", bi, bi)
    attn(e + "mid.attn_1", bi)
    resblock(e + "mid.block_2", bi, bi)
    T.norm(e + "norm_out", bi)
    T.conv(e + "conv_out", 2 * z, bi, 3)

    d = p + "decoder."
    T.conv(d + "conv_in", bi, z, 3)
    resblock(d + "mid.block_1", bi, bi)
    attn(d + "mid.attn_1", bi)
    resblock(d + "mid.block_2", bi, bi)
    for i in reversed(range(len(mult))):
        bo = ch * mult[i]
        for j in range(nres + 1):
            resblock(d + "up.%d.block.%d" % (i, j), bi, bo)
            bi = bo
        if i != 0:
            T.conv(d + "up.%d.upsample.conv" % i, bi, bi, 3)
    T.norm(d + "norm_out", bi)
    T.conv(d + "conv_out", 3, bi, 3)

    T.conv(p + "quant_conv", 2 * embed, 2 * z, 1)
    T.conv(p + "post_quant_conv", z, embed, 1)


def clip_l_tensors(T, p=CLIP_L):
    width, layers, npos, vocab = 768, 12, 77, 49408
    T.add(p + "embeddings.token_embedding.weight", (vocab, width), "e")
    T.add(p + "embeddings.position_embedding.weight", (npos, width), "e")
    T.add(p + "embeddings.position_ids", (1, npos), "i64")
    for l in range(layers):
        n = p + "encoder.layers.%d." % l
        for k in ("k_proj", "v_proj", "q_proj", "out_proj"):
            T.lin(n + "self_attn." + k, width, width)
        T.norm(n + "layer_norm1", width)
        T.lin(n + "mlp.fc1", width * 4, width)
        T.lin(n + "mlp.fc2", width, width * 4)
        T.norm(n + "layer_norm2", width)
    T.norm(p + "final_layer_norm", width)


def clip_g_tensors(T, p=CLIP_G):
    width, layers, mlp, npos, vocab, proj = 1280, 32, 5120, 77, 49408, 1280
    T.add(p + "positional_embedding", (npos, width), "e")
    T.add(p + "text_projection", (width, proj), "w")  # x @ text_projection: [D, P]
    T.add(p + "logit_scale", (), "s")
    T.add(p + "token_embedding.weight", (vocab, width), "e")
    for l in range(layers):
        n = p + "transformer.resblocks.%d." % l
        T.norm(n + "ln_1", width)
        T.add(n + "attn.in_proj_weight", (3 * width, width), "w")  # [q; k; v]
        T.add(n + "attn.in_proj_bias", (3 * width,), "b")
        T.lin(n + "attn.out_proj", width, width)
        T.norm(n + "ln_2", width)
        T.lin(n + "mlp.c_fc", mlp, width)
        T.lin(n + "mlp.c_proj", width, mlp)
    T.norm(p + "ln_final", width)


def all_tensors():
    T = Tensors()
    unet_tensors(T)
    vae_tensors(T)
    clip_l_tensors(T)
    clip_g_tensors(T)
    names = [t[0] for t in T.list]
    assert len(names) == len(set(names)), "duplicate tensor names"
    return T.list


def numel(shape):
    return int(np.prod(shape, dtype=np.int64))


def counts(T):
    """{component prefix: [tensors, parameters]}; parameters exclude integer buffers."""
    groups = {p: [0, 0] for p in EXPECTED}
    for name, shape, kind in T:
        p = next(p for p in EXPECTED if name.startswith(p))
        groups[p][0] += 1
        if kind != "i64":
            groups[p][1] += numel(shape)
    return groups


def make_data(kind, shape, std, rng):
    n = numel(shape)
    if kind == "i64":
        return np.arange(n, dtype="<i8").tobytes()
    if kind == "b":
        return np.zeros(n, dtype="<f2").tobytes()
    if kind == "n":
        return np.ones(n, dtype="<f2").tobytes()
    if kind == "s":
        return np.full(n, math.log(100.0), dtype="<f2").tobytes()
    s = std if kind == "w" else 0.02
    return (rng.standard_normal(n, dtype=np.float32) * np.float32(s)).astype("<f2").tobytes()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", help="output .safetensors path")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--std", type=float, default=0.02, help="std of conv/linear weights")
    ap.add_argument("--list", action="store_true", help="list tensors and totals only")
    a = ap.parse_args()
    if not a.out and not a.list:
        ap.error("give OUT.safetensors, or --list")

    T = all_tensors()
    header, off = {}, 0
    for name, shape, kind in T:
        dt, sz = ("I64", 8) if kind == "i64" else ("F16", 2)
        nbytes = numel(shape) * sz
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    header["__metadata__"] = {"format": "pt",
                              "note": "random weights, SDXL base sgm layout, std=%g seed=%d" % (a.std, a.seed)}

    if a.list:
        for name, shape, kind in T:
            print("%-100s %-24s %s" % (name, list(shape), header[name]["dtype"]))
    groups = counts(T)
    bad = False
    for p, (n, params) in groups.items():
        ok = params == EXPECTED[p]
        bad |= not ok
        print("%-50s %5d tensors %14d params%s" % (p, n, params, "" if ok else "  (expected %d)" % EXPECTED[p]),
              file=sys.stderr)
    print("total %d tensors, %d params, %d data bytes" % (len(T), sum(g[1] for g in groups.values()), off),
          file=sys.stderr)
    if bad:
        sys.exit("parameter counts differ from sd_xl_base_1.0's: the tensor list is wrong")
    if a.list:
        return

    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)     # keep data 8-byte aligned
    rng = np.random.default_rng(a.seed)
    with open(a.out, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        written = 0
        for name, shape, kind in T:
            data = make_data(kind, shape, a.std, rng)
            assert len(data) == header[name]["data_offsets"][1] - header[name]["data_offsets"][0], name
            f.write(data)
            written += len(data)
        assert written == off
    print("wrote %s (%.2f GB)" % (a.out, (8 + len(hjson) + off) / 1e9), file=sys.stderr)


if __name__ == "__main__":
    main()
