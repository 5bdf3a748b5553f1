#!/usr/bin/python3
"""Assemble the oracle's tiny SDXL (pipeline_sdxl_tiny's weights) as users keep SDXL models.

  OUT/tiny-sdxl-diffusers/   a diffusers folder: model_index.json, unet/ (sdxl_unet_tiny), vae/
                             (pipeline_sdxl_tiny's "vae." tensors), text_encoder/ (clip_l_tiny),
                             text_encoder_2/ (clip_g_tiny), tokenizer*/ pad tokens, scheduler/,
                             every config.json from the manifest
  OUT/tiny-sdxl.safetensors  the same weights in the original single-file layout (as
                             sd_xl_base_1.0.safetensors): model.diffusion_model.* (the fixture's
                             sgm-layout UNet), first_stage_model.* (LDM VAE names),
                             conditioner.embedders.0.transformer.text_model.* (CLIP-L),
                             conditioner.embedders.1.model.* (bigG in OpenCLIP names)
  OUT/tiny-sdxl-configs/     the component config.json files the single file cannot carry (a
                             tiny model's head counts and group counts differ from SDXL's)

numpy only. Usage: /usr/bin/python3 tests/make_tiny_sdxl.py --fixtures DIR --out DIR
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
import clip_to_openclip  # noqa: E402
import make_tiny_model as tiny  # noqa: E402

PAD = {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"}


def weights_only(tensors):
    return [(k, v) for k, v in tensors.items() if not k.startswith(("in.", "out.", "dbg."))]


def case(manifest, name):
    for c in manifest["cases"]:
        if c["name"] == name:
            return c
    raise SystemExit("manifest has no case %s" % name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    fx = a.fixtures
    with open(os.path.join(fx, "manifest.json")) as f:
        manifest = json.load(f)
    pipe = case(manifest, "pipeline_sdxl_tiny")
    unet_cfg = case(manifest, "sdxl_unet_tiny")["config"]
    cfg = pipe["config"]
    configs = {"unet": unet_cfg, "vae": cfg["vae"], "text_encoder": cfg["text_encoder"],
               "text_encoder_2": cfg["text_encoder_2"]}

    unet, _ = tiny.read_safetensors(os.path.join(fx, "sdxl_unet_tiny.safetensors"))
    unet_sgm, _ = tiny.read_safetensors(os.path.join(fx, "sdxl_unet_tiny.ldm.safetensors"))
    pipe_t, _ = tiny.read_safetensors(os.path.join(fx, "pipeline_sdxl_tiny.safetensors"))
    vae = [(k[len("vae."):], v) for k, v in pipe_t.items() if k.startswith("vae.")]
    clip_l, _ = tiny.read_safetensors(os.path.join(fx, "clip_l_tiny.safetensors"))
    clip_g, _ = tiny.read_safetensors(os.path.join(fx, "clip_g_tiny.safetensors"))

    # the diffusers folder
    root = os.path.join(a.out, "tiny-sdxl-diffusers")
    parts = {"unet": ("diffusion_pytorch_model", weights_only(unet)),
             "vae": ("diffusion_pytorch_model", vae),
             "text_encoder": ("model", weights_only(clip_l)),
             "text_encoder_2": ("model", weights_only(clip_g))}
    for sub, (stem, tensors) in parts.items():
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        tiny.write_safetensors(os.path.join(root, sub, stem + ".safetensors"), tensors, {"format": "pt"})
        tiny.write_json(os.path.join(root, sub, "config.json"), configs[sub])
    for sub, pad in PAD.items():
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        tiny.write_json(os.path.join(root, sub, "special_tokens_map.json"),
                        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad,
                         "unk_token": "<|endoftext|>"})
    os.makedirs(os.path.join(root, "scheduler"), exist_ok=True)
    tiny.write_json(os.path.join(root, "scheduler", "scheduler_config.json"),
                    dict(pipe["scheduler_config"], _class_name="EulerDiscreteScheduler"))
    tiny.write_json(os.path.join(root, "model_index.json"),
                    {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt":
                     cfg.get("force_zeros_for_empty_prompt", True)})

    # the original single file
    single = [(k, v) for k, v in unet_sgm.items() if k.startswith("model.diffusion_model.")]
    for k, v in vae:
        ldm = tiny.vae_ldm_name(k, configs["vae"])
        single.append((ldm, v.reshape(tiny.ldm_shape(ldm, v.shape))))
    single += [("conditioner.embedders.0.transformer." + k, v) for k, v in clip_to_openclip.tower(clip_l).items()
               if k != "text_projection.weight"]  # SDXL's CLIP-L is a plain CLIPTextModel
    single += [("conditioner.embedders.1.model." + k, v)
               for k, v in clip_to_openclip.to_openclip(clip_to_openclip.tower(clip_g))]
    tiny.write_safetensors(os.path.join(a.out, "tiny-sdxl.safetensors"), single, {"format": "pt"})
    cdir = os.path.join(a.out, "tiny-sdxl-configs")
    os.makedirs(cdir, exist_ok=True)
    for name, c in configs.items():
        tiny.write_json(os.path.join(cdir, name + ".json"), c)
    print("wrote %s, %s (%d tensors) and %s" % (root, os.path.join(a.out, "tiny-sdxl.safetensors"), len(single),
                                                cdir))


if __name__ == "__main__":
    main()
