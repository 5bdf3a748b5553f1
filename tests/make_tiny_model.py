#!/usr/bin/python3
"""Write a tiny random-weight Stable Diffusion 1.x model in both forms diffusiond loads.

    OUT/tiny-sd15-diffusers/            a diffusers folder
        model_index.json
        scheduler/scheduler_config.json   SD1.5's own (PNDM) scheduler config
        unet/config.json, unet/diffusion_pytorch_model.safetensors
        vae/config.json,  vae/diffusion_pytorch_model.safetensors
        text_encoder/config.json, text_encoder/model.safetensors
        (no tokenizer/: the CLIP vocabulary ships with diffusiond)
    OUT/tiny-sd15.safetensors            the SAME weights as one single-file
                                         checkpoint in the original CompVis/LDM
                                         key layout (model.diffusion_model.*,
                                         first_stage_model.*,
                                         cond_stage_model.transformer.text_model.*),
                                         plus the DDPM buffers and the I64
                                         position_ids that real SD1.x files carry.

Shapes are those of the oracle fixtures' tiny models (unet_sd15_tiny, vae_tiny,
clip_text_tiny): UNet block_out_channels [32, 64], 2 layers per block, 8 heads,
cross-attention 32; VAE [32, 32, 64, 64], 1 layer per block; CLIP 32 wide, 3
layers, vocabulary 49408, 77 positions -- but 1 attention head, not 4: a
single file carries no config, loaders derive CLIP's heads from its width
(head size 64), and both forms must be the same network (see CLIP_CONFIG).

Weights are random and deterministic: each tensor is drawn from numpy's PCG64
seeded by (seed, crc32 of its diffusers name). Conv/linear weights are normal
with std 1/sqrt(fan_in), so activations keep their scale through the tiny net
and the decoded image uses the whole range (measured with `diffusiond
generate`, 64x64, 4 steps: pixel std ~64/255; a flat std 0.02 gives a mostly
grey image, std ~25/255); embeddings and biases std 0.02; norm weights 1.

The diffusers -> LDM renaming is generated from the config by the same rules
diffusers' convert_diffusers_to_original_stable_diffusion.py applies (see
unet_ldm_name() and vae_ldm_name()). --check verifies it three ways: the two
written files hold the same tensors through the mapping (bit-identical data; the VAE mid-block
attention's [C, C] linears become [C, C, 1, 1] convs); when the oracle
fixtures are at hand, the mapping reproduces the pairing of
unet_sd15_tiny[.ldm] and vae_tiny[.ldm] found by matching tensor VALUES, and
the generated diffusers names/shapes equal the fixtures'; when
make_sd15_random.py is at hand, the mapping applied to the full-size SD1.5
config gives exactly its LDM names and shapes.

Usage:
    make_tiny_model.py [OUT | --out OUT] [--seed N] [--dtype f32|f16]   write, then self-check
    make_tiny_model.py --check DIR [--fixtures DIR] [--sd15-tool PATH]   check only
python3 and numpy only; no torch, no downloads; runs in about a second.
"""
import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np

# ----------------------------------------------------------------------------
# Configs: those of the fixtures' tiny models (manifest.json cases
# unet_sd15_tiny, vae_tiny, clip_text_tiny), written out in full so the model
# is self-contained (a fresh clone has no ../shared).
# ----------------------------------------------------------------------------

DIFFUSERS_VERSION = "0.29.2"

UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": DIFFUSERS_VERSION,
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "only_cross_attention": False,
    "block_out_channels": [32, 64],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "dropout": 0.0,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-05,
    "cross_attention_dim": 32,
    "transformer_layers_per_block": 1,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "attention_head_dim": 8,
    "num_attention_heads": None,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "num_class_embeds": None,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
}

VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": DIFFUSERS_VERSION,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 64,
    "scaling_factor": 0.18215,
    "force_upcast": True,
}

CLIP_CONFIG = {
    "_name_or_path": "diffusiond tiny random CLIP text encoder",
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    # 1 head, not clip_text_tiny's 4: a single-file checkpoint carries no
    # config, and diffusiond (like every SD1.x loader) derives the head count
    # from the width with ViT-L's head size of 64 (768 -> 12 heads; < 64 ->
    # 1 head). Only with 1 head are both forms the same network.
    "num_attention_heads": 1,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
    "projection_dim": 32,
    "torch_dtype": "float32",
    "transformers_version": "4.41.2",
}

# Stable Diffusion 1.5's scheduler/scheduler_config.json, as the model ships it
# (a PNDM config; diffusiond, like diffusers' from_config, builds whichever
# sampler a request names from it).
SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": DIFFUSERS_VERSION,
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": [None, None],  # not shipped: diffusiond has the CLIP vocabulary built in
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

FOLDER_NAME = "tiny-sd15-diffusers"
SINGLE_NAME = "tiny-sd15.safetensors"

# ----------------------------------------------------------------------------
# Tensor lists under diffusers / transformers names: (name, shape, kind) with
# kind "w" (conv/linear weight), "b" (bias), "n" (norm weight), "nb" (norm
# bias), "e" (embedding).
# ----------------------------------------------------------------------------


class TensorList:
    def __init__(self, prefix=""):
        self.prefix = prefix
        self.items = []

    def add(self, name, shape, kind):
        self.items.append((self.prefix + name, tuple(shape), kind))

    def conv(self, name, co, ci, k, bias=True):
        self.add(name + ".weight", (co, ci, k, k), "w")
        if bias:
            self.add(name + ".bias", (co,), "b")

    def linear(self, name, co, ci, bias=True):
        self.add(name + ".weight", (co, ci), "w")
        if bias:
            self.add(name + ".bias", (co,), "b")

    def norm(self, name, c):
        self.add(name + ".weight", (c,), "n")
        self.add(name + ".bias", (c,), "nb")


def unet_heads(cfg, level):
    # diffusers reads "attention_head_dim" as the NUMBER of heads for SD1.x;
    # the head count does not change any weight shape.
    h = cfg.get("num_attention_heads") or cfg["attention_head_dim"]
    return h[level] if isinstance(h, list) else h


def unet_tensors(cfg):
    """UNet2DConditionModel's state dict (SD1.x block types only)."""
    T = TensorList()
    boc = cfg["block_out_channels"]
    L = cfg["layers_per_block"]
    ctx = cfg["cross_attention_dim"]
    assert cfg.get("transformer_layers_per_block", 1) == 1, "one transformer block per attention"
    assert not cfg.get("use_linear_projection"), "SD1.x: proj_in/proj_out are 1x1 convs"
    temb = boc[0] * 4

    def resnet(n, ci, co):
        T.norm(n + ".norm1", ci)
        T.conv(n + ".conv1", co, ci, 3)
        T.linear(n + ".time_emb_proj", co, temb)
        T.norm(n + ".norm2", co)
        T.conv(n + ".conv2", co, co, 3)
        if ci != co:
            T.conv(n + ".conv_shortcut", co, ci, 1)

    def transformer(n, c):
        T.norm(n + ".norm", c)
        T.conv(n + ".proj_in", c, c, 1)
        b = n + ".transformer_blocks.0"
        T.norm(b + ".norm1", c)
        for k in ("to_q", "to_k", "to_v"):
            T.linear(b + ".attn1." + k, c, c, bias=False)
        T.linear(b + ".attn1.to_out.0", c, c)
        T.norm(b + ".norm2", c)
        T.linear(b + ".attn2.to_q", c, c, bias=False)
        T.linear(b + ".attn2.to_k", c, ctx, bias=False)
        T.linear(b + ".attn2.to_v", c, ctx, bias=False)
        T.linear(b + ".attn2.to_out.0", c, c)
        T.norm(b + ".norm3", c)
        T.linear(b + ".ff.net.0.proj", 8 * c, c)  # GEGLU: value and gate, 4c each
        T.linear(b + ".ff.net.2", c, 4 * c)
        T.conv(n + ".proj_out", c, c, 1)

    T.conv("conv_in", boc[0], cfg["in_channels"], cfg.get("conv_in_kernel", 3))
    T.linear("time_embedding.linear_1", temb, boc[0])
    T.linear("time_embedding.linear_2", temb, temb)

    out_ch = boc[0]
    for i, kind in enumerate(cfg["down_block_types"]):
        in_ch, out_ch = out_ch, boc[i]
        attn = kind == "CrossAttnDownBlock2D"
        assert attn or kind == "DownBlock2D", kind
        for j in range(L):
            if attn:
                transformer("down_blocks.%d.attentions.%d" % (i, j), out_ch)
            resnet("down_blocks.%d.resnets.%d" % (i, j), in_ch if j == 0 else out_ch, out_ch)
        if i != len(boc) - 1:
            T.conv("down_blocks.%d.downsamplers.0.conv" % i, out_ch, out_ch, 3)

    assert cfg["mid_block_type"] == "UNetMidBlock2DCrossAttn"
    c = boc[-1]
    transformer("mid_block.attentions.0", c)
    resnet("mid_block.resnets.0", c, c)
    resnet("mid_block.resnets.1", c, c)

    rev = list(reversed(boc))
    out_ch = rev[0]
    for i, kind in enumerate(cfg["up_block_types"]):
        prev_out, out_ch = out_ch, rev[i]
        in_ch = rev[min(i + 1, len(boc) - 1)]
        attn = kind == "CrossAttnUpBlock2D"
        assert attn or kind == "UpBlock2D", kind
        for j in range(L + 1):
            skip = in_ch if j == L else out_ch
            res_in = prev_out if j == 0 else out_ch
            if attn:
                transformer("up_blocks.%d.attentions.%d" % (i, j), out_ch)
            resnet("up_blocks.%d.resnets.%d" % (i, j), res_in + skip, out_ch)
        if i != len(boc) - 1:
            T.conv("up_blocks.%d.upsamplers.0.conv" % i, out_ch, out_ch, 3)

    T.norm("conv_norm_out", boc[0])
    T.conv("conv_out", cfg["out_channels"], boc[0], cfg.get("conv_out_kernel", 3))
    return T.items


def vae_tensors(cfg):
    """AutoencoderKL's state dict."""
    T = TensorList()
    boc = cfg["block_out_channels"]
    L = cfg["layers_per_block"]
    z = cfg["latent_channels"]

    def resnet(n, ci, co):
        T.norm(n + ".norm1", ci)
        T.conv(n + ".conv1", co, ci, 3)
        T.norm(n + ".norm2", co)
        T.conv(n + ".conv2", co, co, 3)
        if ci != co:
            T.conv(n + ".conv_shortcut", co, ci, 1)

    def mid(n, c):
        T.norm(n + ".attentions.0.group_norm", c)
        for k in ("to_q", "to_k", "to_v", "to_out.0"):
            T.linear(n + ".attentions.0." + k, c, c)
        resnet(n + ".resnets.0", c, c)
        resnet(n + ".resnets.1", c, c)

    T.conv("encoder.conv_in", boc[0], cfg["in_channels"], 3)
    out_ch = boc[0]
    for i in range(len(boc)):
        in_ch, out_ch = out_ch, boc[i]
        for j in range(L):
            resnet("encoder.down_blocks.%d.resnets.%d" % (i, j), in_ch if j == 0 else out_ch, out_ch)
        if i != len(boc) - 1:
            T.conv("encoder.down_blocks.%d.downsamplers.0.conv" % i, out_ch, out_ch, 3)
    mid("encoder.mid_block", boc[-1])
    T.norm("encoder.conv_norm_out", boc[-1])
    T.conv("encoder.conv_out", 2 * z, boc[-1], 3)

    rev = list(reversed(boc))
    T.conv("decoder.conv_in", rev[0], z, 3)
    mid("decoder.mid_block", rev[0])
    out_ch = rev[0]
    for i in range(len(rev)):
        prev, out_ch = out_ch, rev[i]
        for j in range(L + 1):
            resnet("decoder.up_blocks.%d.resnets.%d" % (i, j), prev if j == 0 else out_ch, out_ch)
        if i != len(rev) - 1:
            T.conv("decoder.up_blocks.%d.upsamplers.0.conv" % i, out_ch, out_ch, 3)
    T.norm("decoder.conv_norm_out", boc[0])
    T.conv("decoder.conv_out", cfg["out_channels"], boc[0], 3)

    T.conv("quant_conv", 2 * z, 2 * z, 1)
    T.conv("post_quant_conv", z, z, 1)
    return T.items


def clip_tensors(cfg):
    """transformers CLIPTextModel's state dict (without the position_ids buffer)."""
    T = TensorList("text_model.")
    d, f = cfg["hidden_size"], cfg["intermediate_size"]
    T.add("embeddings.token_embedding.weight", (cfg["vocab_size"], d), "e")
    T.add("embeddings.position_embedding.weight", (cfg["max_position_embeddings"], d), "e")
    for layer in range(cfg["num_hidden_layers"]):
        n = "encoder.layers.%d." % layer
        for k in ("q_proj", "k_proj", "v_proj", "out_proj"):
            T.linear(n + "self_attn." + k, d, d)
        T.norm(n + "layer_norm1", d)
        T.linear(n + "mlp.fc1", f, d)
        T.linear(n + "mlp.fc2", d, f)
        T.norm(n + "layer_norm2", d)
    T.norm("final_layer_norm", d)
    return T.items


# ----------------------------------------------------------------------------
# diffusers -> original LDM names, by the rules of diffusers'
# scripts/convert_diffusers_to_original_stable_diffusion.py, indexed from the
# config (so any SD1.x-shaped config works, the tiny one and full SD1.5 alike).
# ----------------------------------------------------------------------------

LDM_UNET = "model.diffusion_model."
LDM_VAE = "first_stage_model."
LDM_CLIP = "cond_stage_model.transformer."

UNET_RESNET_PARTS = [
    ("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"),
]
VAE_ATTN_PARTS = [
    ("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"),
]


def _rename_part(rest, table, what):
    for d, o in table:
        if rest == d or rest.startswith(d + "."):
            return o + rest[len(d):]
    raise KeyError("no LDM name for %s part %r" % (what, rest))


def unet_ldm_name(name, cfg):
    L = cfg["layers_per_block"]
    p = name.split(".")
    top = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
           "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2"}
    for d, o in top.items():
        if name.startswith(d + "."):
            return LDM_UNET + o + name[len(d):]
    if p[0] in ("down_blocks", "up_blocks", "mid_block"):
        if p[0] == "mid_block":
            i, kind, j, rest = 0, p[1], int(p[2]), ".".join(p[3:])
            # resnets.0 -> middle_block.0, attentions.0 -> middle_block.1, resnets.1 -> middle_block.2
            blk = "middle_block.%d" % (2 * j if kind == "resnets" else 1)
        else:
            i, kind, j, rest = int(p[1]), p[2], int(p[3]), ".".join(p[4:])
            if p[0] == "down_blocks":
                if kind == "downsamplers":
                    return LDM_UNET + "input_blocks.%d.0.op.%s" % ((i + 1) * (L + 1), rest.split(".", 1)[1])
                idx = 1 + i * (L + 1) + j
                blk = "input_blocks.%d.%d" % (idx, 0 if kind == "resnets" else 1)
            else:
                if kind == "upsamplers":
                    has_attn = cfg["up_block_types"][i] == "CrossAttnUpBlock2D"
                    return LDM_UNET + "output_blocks.%d.%d.%s" % (i * (L + 1) + L, 2 if has_attn else 1, rest)
                idx = i * (L + 1) + j
                blk = "output_blocks.%d.%d" % (idx, 0 if kind == "resnets" else 1)
        if kind == "resnets":
            return LDM_UNET + blk + "." + _rename_part(rest, UNET_RESNET_PARTS, "UNet resnet")
        if kind == "attentions":
            return LDM_UNET + blk + "." + rest  # Transformer2DModel: same names inside
    raise KeyError("no LDM name for UNet tensor %r" % name)


def vae_ldm_name(name, cfg):
    n = len(cfg["block_out_channels"])
    p = name.split(".")
    if p[0] in ("quant_conv", "post_quant_conv"):
        return LDM_VAE + name
    coder, rest = p[0], p[1:]
    assert coder in ("encoder", "decoder"), name
    head = ".".join(rest)
    for d, o in (("conv_in", "conv_in"), ("conv_out", "conv_out"), ("conv_norm_out", "norm_out")):
        if head.startswith(d + "."):
            return LDM_VAE + coder + "." + o + head[len(d):]
    if rest[0] == "mid_block":
        kind, j, tail = rest[1], int(rest[2]), ".".join(rest[3:])
        if kind == "resnets":
            return LDM_VAE + "%s.mid.block_%d.%s" % (coder, j + 1,
                                                    _rename_part(tail, [("conv_shortcut", "nin_shortcut"),
                                                                        ("norm1", "norm1"), ("conv1", "conv1"),
                                                                        ("norm2", "norm2"), ("conv2", "conv2")],
                                                                 "VAE resnet"))
        return LDM_VAE + "%s.mid.attn_1.%s" % (coder, _rename_part(tail, VAE_ATTN_PARTS, "VAE attention"))
    if rest[0] in ("down_blocks", "up_blocks"):
        i, kind = int(rest[1]), rest[2]
        # the decoder's up_blocks run deepest first; LDM's up.* are numbered by level
        level, stage = (i, "down") if rest[0] == "down_blocks" else (n - 1 - i, "up")
        if kind == "resnets":
            j, tail = int(rest[3]), ".".join(rest[4:])
            tail = tail.replace("conv_shortcut", "nin_shortcut")
            return LDM_VAE + "%s.%s.%d.block.%d.%s" % (coder, stage, level, j, tail)
        if kind in ("downsamplers", "upsamplers"):
            tail = ".".join(rest[4:])  # "conv.weight"
            return LDM_VAE + "%s.%s.%d.%s.%s" % (coder, stage, level, kind[:-2], tail)
    raise KeyError("no LDM name for VAE tensor %r" % name)


def ldm_shape(ldm, shape):
    # LDM's VAE mid-block attention q/k/v/proj_out are 1x1 convs
    if ".mid.attn_1." in ldm and ldm.endswith(".weight") and not ldm.endswith("norm.weight"):
        assert len(shape) == 2, ldm
        return tuple(shape) + (1, 1)
    return tuple(shape)


def ldm_mapping(unet_cfg, vae_cfg, clip_cfg):
    """[(component, diffusers_name, ldm_name, shape, ldm_shape, kind)] in file order."""
    out = []
    for name, shape, kind in unet_tensors(unet_cfg):
        out.append(("unet", name, unet_ldm_name(name, unet_cfg), shape, shape, kind))
    for name, shape, kind in vae_tensors(vae_cfg):
        ldm = vae_ldm_name(name, vae_cfg)
        out.append(("vae", name, ldm, shape, ldm_shape(ldm, shape), kind))
    for name, shape, kind in clip_tensors(clip_cfg):
        out.append(("text_encoder", name, LDM_CLIP + name, shape, shape, kind))
    ldm_names = [m[2] for m in out]
    assert len(set(ldm_names)) == len(ldm_names), "LDM mapping is not one-to-one"
    for comp in ("unet", "vae", "text_encoder"):
        names = [m[1] for m in out if m[0] == comp]
        assert len(set(names)) == len(names), "duplicate %s tensor names" % comp
    return out


# ----------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------

def make_weight(name, shape, kind, seed):
    # one stream per tensor, keyed by its diffusers name: adding a tensor never
    # shifts the others' values
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    n = int(np.prod(shape))
    if kind == "n":
        a = np.ones(n, np.float32)
    elif kind in ("b", "nb", "e"):
        a = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
    else:
        fan_in = int(np.prod(shape[1:]))
        a = rng.standard_normal(n, dtype=np.float32) * np.float32(1.0 / np.sqrt(fan_in))
    return a.reshape(shape)


def schedule_buffers():
    """The DDPM buffers SD1.x single files carry (scaled-linear 0.00085..0.012, 1000 steps)."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    bufs = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }
    return {k: v.astype(np.float32) for k, v in bufs.items()}


# ----------------------------------------------------------------------------
# safetensors, by hand: u64 LE header length, JSON header (padded with spaces
# to keep the data 8-byte aligned), then the raw little-endian tensors.
# ----------------------------------------------------------------------------

ST_DTYPES = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<i8"): "I64"}
NP_DTYPES = {"F32": "<f4", "F16": "<f2", "I64": "<i8", "BF16": None, "F64": "<f8", "I32": "<i4"}


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, np.ndarray). Written atomically (tmp + rename)."""
    header, off = {}, 0
    arrays = []
    for name, a in tensors:
        a = np.ascontiguousarray(a)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        dt = ST_DTYPES[a.dtype]
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
        arrays.append(a)
    header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for a in arrays:
            f.write(a.tobytes())
    os.replace(tmp, path)


def read_safetensors(path):
    """{name: np.ndarray} (views into the file's bytes), metadata."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack_from("<Q", blob, 0)
    if n > len(blob) - 8:
        raise ValueError("%s: header length %d beyond the file" % (path, n))
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", None)
    data = memoryview(blob)[8 + n:]
    out, end = {}, 0
    for name, v in header.items():
        b, e = v["data_offsets"]
        dt = NP_DTYPES.get(v["dtype"])
        if dt is None:
            raise ValueError("%s: %s has dtype %s this check cannot read" % (path, name, v["dtype"]))
        a = np.frombuffer(data[b:e], dtype=dt)
        if a.size != int(np.prod(v["shape"])):
            raise ValueError("%s: %s: %d bytes for shape %s" % (path, name, e - b, v["shape"]))
        out[name] = a.reshape(v["shape"])
        end = max(end, e)
    if end != len(data):
        raise ValueError("%s: %d data bytes, header covers %d" % (path, len(data), end))
    return out, meta


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# ----------------------------------------------------------------------------
# write
# ----------------------------------------------------------------------------

def generate(out, seed, dtype):
    npdt = np.dtype("<f2") if dtype == "f16" else np.dtype("<f4")
    mapping = ldm_mapping(UNET_CONFIG, VAE_CONFIG, CLIP_CONFIG)
    weights = {}
    for comp, name, _, shape, _, kind in mapping:
        weights[(comp, name)] = make_weight(name, shape, kind, seed).astype(npdt)

    folder = os.path.join(out, FOLDER_NAME)
    for sub in ("unet", "vae", "text_encoder", "scheduler"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    meta = {"format": "pt", "generator": "diffusiond tests/make_tiny_model.py",
            "seed": str(seed), "note": "random weights, not a trained model"}
    files = {"unet": "unet/diffusion_pytorch_model.safetensors",
             "vae": "vae/diffusion_pytorch_model.safetensors",
             "text_encoder": "text_encoder/model.safetensors"}
    for comp, rel in files.items():
        write_safetensors(os.path.join(folder, rel),
                          [(m[1], weights[(comp, m[1])]) for m in mapping if m[0] == comp], meta)
    clip_cfg = dict(CLIP_CONFIG, torch_dtype="float16" if dtype == "f16" else "float32")
    write_json(os.path.join(folder, "unet", "config.json"), UNET_CONFIG)
    write_json(os.path.join(folder, "vae", "config.json"), VAE_CONFIG)
    write_json(os.path.join(folder, "text_encoder", "config.json"), clip_cfg)
    write_json(os.path.join(folder, "scheduler", "scheduler_config.json"), SCHEDULER_CONFIG)
    write_json(os.path.join(folder, "model_index.json"), MODEL_INDEX)

    # The single file: the same arrays under LDM names, in the order real
    # SD1.x files have them (schedule buffers, UNet, VAE, CLIP).
    single = [(k, v) for k, v in schedule_buffers().items()]
    for comp, name, ldm, _, lshape, _ in mapping:
        single.append((ldm, weights[(comp, name)].reshape(lshape)))
        if comp == "text_encoder" and name == "text_model.embeddings.position_embedding.weight":
            npos = CLIP_CONFIG["max_position_embeddings"]
            single.append((LDM_CLIP + "text_model.embeddings.position_ids",
                           np.arange(npos, dtype="<i8").reshape(1, npos)))
    write_safetensors(os.path.join(out, SINGLE_NAME), single, meta)
    return folder, os.path.join(out, SINGLE_NAME)


# ----------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------

class Checker:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def ok(self, cond, what):
        if cond:
            self.passed += 1
            print("ok    %s" % what)
        else:
            self.failed += 1
            print("FAIL  %s" % what)
        return cond


def check_files(c, out):
    """The two forms hold the same tensors through the mapping."""
    folder = os.path.join(out, FOLDER_NAME)
    single_path = os.path.join(out, SINGLE_NAME)
    cfgs = {}
    for sub in ("unet", "vae", "text_encoder"):
        with open(os.path.join(folder, sub, "config.json")) as f:
            cfgs[sub] = json.load(f)
    for rel in ("model_index.json", "scheduler/scheduler_config.json"):
        with open(os.path.join(folder, rel)) as f:
            json.load(f)
    mapping = ldm_mapping(cfgs["unet"], cfgs["vae"], cfgs["text_encoder"])
    single, _ = read_safetensors(single_path)
    files = {"unet": "unet/diffusion_pytorch_model.safetensors",
             "vae": "vae/diffusion_pytorch_model.safetensors",
             "text_encoder": "text_encoder/model.safetensors"}
    used = set()
    for comp, rel in files.items():
        tensors, _ = read_safetensors(os.path.join(folder, rel))
        expect = {m[1]: m for m in mapping if m[0] == comp}
        c.ok(set(tensors) == set(expect), "%s: %d tensors, the names and count the config gives" % (rel, len(tensors)))
        bad = []
        for name, a in tensors.items():
            m = expect.get(name)
            if m is None:
                continue
            b = single.get(m[2])
            used.add(m[2])
            if (b is None or tuple(a.shape) != m[3] or tuple(b.shape) != m[4] or a.dtype != b.dtype
                    or a.tobytes() != b.tobytes()):
                bad.append(name)
            elif not np.all(np.isfinite(a.astype(np.float32))):
                bad.append(name + " (not finite)")
        c.ok(not bad, "%s: every tensor equals its LDM counterpart in %s bit for bit%s"
             % (rel, SINGLE_NAME, (": " + ", ".join(bad[:5])) if bad else ""))
    extra = sorted(set(single) - used)
    allowed = set(schedule_buffers()) | {LDM_CLIP + "text_model.embeddings.position_ids"}
    c.ok(set(extra) == allowed, "%s: besides the mapped weights only the DDPM buffers and position_ids (%d extra)"
         % (SINGLE_NAME, len(extra)))
    pid = single.get(LDM_CLIP + "text_model.embeddings.position_ids")
    c.ok(pid is not None and pid.dtype == np.dtype("<i8") and pid.shape == (1, 77)
         and np.array_equal(pid[0], np.arange(77)), "position_ids is I64 [1, 77] = 0..76")
    # distinct values: the files' own value-matching gives back the mapping
    # (norm weights are all ones, so they are left out of it)
    by_bytes = {}
    for name, a in single.items():
        by_bytes.setdefault(a.tobytes(), []).append(name)
    amb = 0
    agree = 0
    for comp, rel in files.items():
        tensors, _ = read_safetensors(os.path.join(folder, rel))
        for m in mapping:
            if m[0] != comp or m[5] == "n":
                continue
            cands = by_bytes.get(tensors[m[1]].tobytes(), [])
            if len(cands) != 1:
                amb += 1
            elif cands[0] == m[2]:
                agree += 1
    c.ok(amb == 0, "every non-norm tensor's values occur exactly once in %s (%d matched by value alone)"
         % (SINGLE_NAME, agree))


def fixture_pairs(dpath, lpath):
    """Pairs (diffusers name, LDM name) found by matching tensor values."""
    D, _ = read_safetensors(dpath)
    Lt, _ = read_safetensors(lpath)
    by = {}
    for k, a in Lt.items():
        by.setdefault(hashlib.sha256(a.tobytes()).digest(), []).append(k)
    pairs, amb = {}, []
    for k, a in D.items():
        if k.split(".")[0] in ("in", "out", "dbg"):
            continue
        cands = by.get(hashlib.sha256(a.tobytes()).digest(), [])
        if len(cands) == 1:
            pairs[k] = cands[0]
        else:
            amb.append(k)
    return D, Lt, pairs, amb


def check_fixtures(c, fx):
    with open(os.path.join(fx, "manifest.json")) as f:
        cases = {x["name"]: x for x in json.load(f)["cases"]}
    # our configs are the fixtures'
    for ours, case in ((UNET_CONFIG, "unet_sd15_tiny"), (VAE_CONFIG, "vae_tiny"), (CLIP_CONFIG, "clip_text_tiny")):
        theirs = cases[case]["config"]
        diff = [k for k in ours if not k.startswith("_") and k in theirs and ours[k] != theirs[k]
                and k not in ("architectures", "torch_dtype", "num_attention_heads")]
        c.ok(not diff, "config keys equal fixture %s's%s" % (case, (": " + ", ".join(diff)) if diff else ""))
    for comp, case, fn_names, fn_ldm, cfg in (
            ("unet", "unet_sd15_tiny", unet_tensors, unet_ldm_name, cases["unet_sd15_tiny"]["config"]),
            ("vae", "vae_tiny", vae_tensors, vae_ldm_name, cases["vae_tiny"]["config"])):
        D, Lt, pairs, amb = fixture_pairs(os.path.join(fx, case + ".safetensors"),
                                          os.path.join(fx, case + ".ldm.safetensors"))
        gen = {n: s for n, s, _ in fn_names(cfg)}
        weights = {k: tuple(v.shape) for k, v in D.items() if k.split(".")[0] not in ("in", "out", "dbg")}
        c.ok(gen == weights, "%s: generated diffusers names and shapes equal %s.safetensors' (%d tensors)"
             % (comp, case, len(gen)))
        c.ok(not amb and len(pairs) == len(weights) and len(set(pairs.values())) == len(Lt),
             "%s: %s <-> %s.ldm paired one-to-one by value (%d pairs, %d ambiguous)"
             % (comp, case, case, len(pairs), len(amb)))
        wrong = [(d, fn_ldm(d, cfg), l) for d, l in pairs.items() if fn_ldm(d, cfg) != l]
        c.ok(not wrong, "%s: ldm_name() gives the value-matched LDM name for all %d pairs%s"
             % (comp, len(pairs), ("; e.g. %s -> %s, fixture says %s" % wrong[0]) if wrong else ""))
        shp = [d for d, l in pairs.items() if ldm_shape(l, D[d].shape) != tuple(Lt[l].shape)]
        c.ok(not shp, "%s: ldm_shape() gives the fixture's LDM shapes%s" % (comp, (": " + shp[0]) if shp else ""))
    C, _ = read_safetensors(os.path.join(fx, "clip_text_tiny.safetensors"))
    cw = {k: tuple(v.shape) for k, v in C.items() if k.split(".")[0] not in ("in", "out", "dbg")}
    gen = {n: s for n, s, _ in clip_tensors(cases["clip_text_tiny"]["config"])}
    c.ok(gen == cw, "text_encoder: generated names and shapes equal clip_text_tiny.safetensors' (%d tensors)" % len(cw))


SD15_UNET = dict(UNET_CONFIG, block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, sample_size=64)
SD15_VAE = dict(VAE_CONFIG, block_out_channels=[128, 256, 512, 512], layers_per_block=2, sample_size=512)
SD15_CLIP = dict(CLIP_CONFIG, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, projection_dim=768)


def check_sd15_full(c, tool):
    """The mapping at full SD1.5 size equals make_sd15_random.py's LDM list."""
    r = subprocess.run([sys.executable, tool, "--list"], capture_output=True, text=True)
    if r.returncode != 0:
        c.ok(False, "%s --list ran (%s)" % (tool, r.stderr.strip()[-200:]))
        return
    ref = {}
    for line in r.stdout.splitlines():
        name, rest = line.split(None, 1)
        shape = tuple(int(x) for x in rest[rest.index("(") + 1:rest.index(")")].split(",") if x.strip())
        ref[name] = shape
    mine = {m[2]: m[4] for m in ldm_mapping(SD15_UNET, SD15_VAE, SD15_CLIP)}
    extra_ref = set(ref) - set(mine) - set(schedule_buffers()) - {LDM_CLIP + "text_model.embeddings.position_ids"}
    missing = set(mine) - set(ref)
    shapes = [k for k in mine if k in ref and ref[k] != mine[k]]
    c.ok(not extra_ref and not missing and not shapes,
         "full-size SD1.5: mapped names and shapes equal %s's LDM list (%d tensors)%s"
         % (os.path.basename(tool), len(mine),
            "" if not (extra_ref or missing or shapes) else
            ": only in reference %s, only here %s, shape differs %s"
            % (sorted(extra_ref)[:3], sorted(missing)[:3], shapes[:3])))


def find_default(env, rel):
    here = os.path.dirname(os.path.abspath(__file__))
    cands = [os.environ.get(env)] if os.environ.get(env) else []
    cands.append(os.path.join(here, "..", "..", "shared", rel))
    for p in cands:
        if p and os.path.exists(p):
            return os.path.normpath(p)
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", nargs="?", metavar="OUT", help="output directory (default build/tiny-model)")
    ap.add_argument("--out", help="the same as OUT")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--dtype", choices=("f32", "f16"), default="f32", help="weight dtype of both forms")
    ap.add_argument("--check", metavar="DIR", help="check a written model (no writing)")
    ap.add_argument("--no-check", action="store_true", help="write only")
    ap.add_argument("--fixtures", help="oracle fixtures folder (default $DF_TEST_FIXTURES or ../shared/fixtures)")
    ap.add_argument("--sd15-tool", help="make_sd15_random.py (default ../shared/tools/make_sd15_random.py)")
    a = ap.parse_args()

    if a.out_dir and a.out and a.out_dir != a.out:
        ap.error("give the output directory once")
    out = a.check or a.out_dir or a.out or "build/tiny-model"
    if not a.check:
        folder, single = generate(out, a.seed, a.dtype)
        size = os.path.getsize(single)
        print("wrote %s/ and %s (%.1f MB, seed %d, %s)" % (folder, single, size / 1e6, a.seed, a.dtype))
        if a.no_check:
            return 0

    c = Checker()
    check_files(c, out)
    fx = a.fixtures or find_default("DF_TEST_FIXTURES", "fixtures")
    if fx and os.path.exists(os.path.join(fx, "manifest.json")):
        check_fixtures(c, fx)
    else:
        print("skip  fixture cross-check (no fixtures folder)")
    tool = a.sd15_tool or find_default("DF_SD15_TOOL", os.path.join("tools", "make_sd15_random.py"))
    if tool and os.path.exists(tool):
        check_sd15_full(c, tool)
    else:
        print("skip  full-size SD1.5 cross-check (no make_sd15_random.py)")
    print("%d passed, %d failed" % (c.passed, c.failed))
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
