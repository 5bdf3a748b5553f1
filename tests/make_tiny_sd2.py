#!/usr/bin/python3
"""Assemble a tiny SD2.x from the oracle's tiny SD1.x parts, in both layouts users keep SD2 in.

SD2.x is SD1.x's pipeline with an OpenCLIP-H text encoder read at its penultimate layer (then
final_layer_norm), pad token "!" (id 0) and v-prediction for the 768-v models. The fixtures'
unet_sd15_tiny, vae_tiny and clip_text_tiny (3 layers) serve as its UNet, VAE and text tower:

  OUT/tiny-sd2.safetensors   the ORIGINAL single-file layout (as v2-1_768-ema-pruned.safetensors):
                             DDPM buffers, model.diffusion_model.* (unet_sd15_tiny.ldm),
                             first_stage_model.* (vae_tiny.ldm), cond_stage_model.model.* =
                             clip_text_tiny in OpenCLIP names with ALL 3 layers, a text_projection
                             and logit_scale (OpenCLIP keeps them; SD2 never uses them). Loaders drop
                             the last layer, as diffusers' conversion does.
  OUT/tiny-sd2-configs/      unet.json, vae.json, text_encoder.json: what the single file cannot
                             carry (the tiny head counts); text_encoder.json is the tower as stored
                             (3 layers)
  OUT/tiny-sd2-diffusers/    the diffusers folder: unet/, vae/, text_encoder/ = clip_text_tiny
                             WITHOUT its last layer (num_hidden_layers 2, as diffusers' SD2 folders
                             hold 23 of OpenCLIP-H's 24), tokenizer/special_tokens_map.json (pad "!"),
                             scheduler/ (pipeline_sd15_tiny's with prediction_type v_prediction),
                             model_index.json

The text encoder is GELU in both (OpenCLIP's activation; OpenAI's CLIP-L is quick_gelu): the
weights are random, so either activation is a valid network, and GELU is what tells an SD2
folder from an SD1 one (models/family.c).

numpy only. Usage: /usr/bin/python3 tests/make_tiny_sd2.py --fixtures DIR --out DIR
"""
import argparse
import json
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
import clip_to_openclip  # noqa: E402
import make_tiny_model as tiny  # noqa: E402

LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.")


def weights_only(tensors):
    return [(k, v) for k, v in tensors.items() if not k.startswith(("in.", "out.", "dbg."))]


def case(manifest, name):
    for c in manifest["cases"]:
        if c["name"] == name:
            return c
    raise SystemExit("manifest has no case %s" % name)


def clean(cfg):
    return {k: v for k, v in cfg.items() if k != "_use_default_values"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    fx = a.fixtures
    with open(os.path.join(fx, "manifest.json")) as f:
        manifest = json.load(f)
    unet_cfg = clean(case(manifest, "unet_sd15_tiny")["config"])
    vae_cfg = clean(case(manifest, "vae_tiny")["config"])
    clip_cfg = dict(clean(case(manifest, "clip_text_tiny")["config"]), hidden_act="gelu")
    clip_cfg.pop("_class_name", None)
    sched = dict(case(manifest, "pipeline_sd15_tiny")["scheduler_config"], prediction_type="v_prediction",
                 _class_name="EulerDiscreteScheduler")
    sched.pop("_use_default_values", None)

    unet, _ = tiny.read_safetensors(os.path.join(fx, "unet_sd15_tiny.safetensors"))
    unet_ldm, _ = tiny.read_safetensors(os.path.join(fx, "unet_sd15_tiny.ldm.safetensors"))
    vae, _ = tiny.read_safetensors(os.path.join(fx, "vae_tiny.safetensors"))
    vae_ldm, _ = tiny.read_safetensors(os.path.join(fx, "vae_tiny.ldm.safetensors"))
    clip, _ = tiny.read_safetensors(os.path.join(fx, "clip_text_tiny.safetensors"))
    layers = clip_cfg["num_hidden_layers"]
    last = "text_model.encoder.layers.%d." % (layers - 1)
    if not any(k.startswith(last) for k in clip) or any(k.startswith("text_model.encoder.layers.%d." % layers)
                                                         for k in clip):
        raise SystemExit("clip_text_tiny does not hold the %d layers its config says" % layers)
    for name, t, prefix in (("unet_sd15_tiny.ldm", unet_ldm, "model.diffusion_model."),
                            ("vae_tiny.ldm", vae_ldm, "first_stage_model.")):
        if not all(k.startswith(prefix) for k in t):
            raise SystemExit("%s: expected every key under %s" % (name, prefix))

    # the diffusers folder: the encoder already cut, as diffusers' SD2 folders store it
    root = os.path.join(a.out, "tiny-sd2-diffusers")
    cut = [(k, v) for k, v in weights_only(clip) if not k.startswith(last)]
    parts = {"unet": ("diffusion_pytorch_model", weights_only(unet), unet_cfg),
             "vae": ("diffusion_pytorch_model", weights_only(vae), vae_cfg),
             "text_encoder": ("model", cut, dict(clip_cfg, num_hidden_layers=layers - 1))}
    for sub, (stem, tensors, cfg) in parts.items():
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        tiny.write_safetensors(os.path.join(root, sub, stem + ".safetensors"), tensors, {"format": "pt"})
        tiny.write_json(os.path.join(root, sub, "config.json"), cfg)
    os.makedirs(os.path.join(root, "tokenizer"), exist_ok=True)
    tiny.write_json(os.path.join(root, "tokenizer", "special_tokens_map.json"),
                    {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!",
                     "unk_token": "<|endoftext|>"})
    os.makedirs(os.path.join(root, "scheduler"), exist_ok=True)
    tiny.write_json(os.path.join(root, "scheduler", "scheduler_config.json"), sched)
    tiny.write_json(os.path.join(root, "model_index.json"), {"_class_name": "StableDiffusionPipeline"})

    # the original single file: the whole tower, under OpenCLIP names
    single = list(tiny.schedule_buffers().items())
    single += list(unet_ldm.items()) + list(vae_ldm.items())
    tower = clip_to_openclip.tower(clip)
    d = clip_cfg["hidden_size"]
    # OpenCLIP's text_projection ([D, P]); SD2 reads the hidden states, never this
    rng = np.random.default_rng(2)
    tower["text_projection.weight"] = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
    single += [("cond_stage_model.model." + k, v) for k, v in clip_to_openclip.to_openclip(tower)]
    tiny.write_safetensors(os.path.join(a.out, "tiny-sd2.safetensors"), single, {"format": "pt"})
    cdir = os.path.join(a.out, "tiny-sd2-configs")
    os.makedirs(cdir, exist_ok=True)
    for name, c in (("unet", unet_cfg), ("vae", vae_cfg), ("text_encoder", clip_cfg)):
        tiny.write_json(os.path.join(cdir, name + ".json"), c)

    # the two layouts hold the same numbers: the folder's encoder is the file's first layers
    back, _ = tiny.read_safetensors(os.path.join(a.out, "tiny-sd2.safetensors"))
    q = back["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"][:d]
    if not np.array_equal(q, clip["text_model.encoder.layers.0.self_attn.q_proj.weight"]):
        raise SystemExit("OpenCLIP packing does not give back layer 0's q_proj")
    if "cond_stage_model.model.transformer.resblocks.%d.ln_1.weight" % (layers - 1) not in back:
        raise SystemExit("the single file lost its last layer")
    print("wrote %s (%d tensors), %s and %s" % (os.path.join(a.out, "tiny-sd2.safetensors"), len(single), root,
                                                cdir))


if __name__ == "__main__":
    main()
