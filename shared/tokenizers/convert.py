"""Convert taming-style VQ checkpoints (LDM vq-f8, LlamaGen vq-ds8) into diffusers' VQModel layout.

Both originals share taming-transformers' Encoder/Decoder (ResnetBlock: norm1, conv1,
norm2, conv2, nin_shortcut; AttnBlock: norm, q, k, v, proj_out as 1×1 convs; Downsample
with (0,1,0,1) padding; nearest Upsample + conv; GroupNorm(32, eps=1e-6)); they differ in
module names:

    LDM       encoder.down.{i}.block.{j}   encoder.mid.block_1/attn_1/block_2   decoder.up.{level}
    LlamaGen  encoder.conv_blocks.{i}.res.{j}   encoder.mid.{0,1,2}   decoder.conv_blocks.{order}

LDM's decoder.up is indexed by resolution level (up.{n−1} runs first); LlamaGen's and
diffusers' decoder blocks are in execution order. The architecture (channels, levels,
blocks per level, attention levels, codebook) is read from the tensor shapes, so no
config file is needed.
"""

from __future__ import annotations

import re

import torch

from .layout import CheckpointLayoutError

LEAF = {
    "nin_shortcut": "conv_shortcut",
    "norm": "group_norm",
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "proj_out": "to_out.0",
}
LAYOUTS = ("ldm", "llamagen")


def _levels(sd, prefix: str, layout: str):
    """Per level of ``encoder``: (number of res blocks, has attention)."""
    blk, res = ("down", "block") if layout == "ldm" else ("conv_blocks", "res")
    pat = re.compile(rf"^{prefix}\.{blk}\.(\d+)\.{res}\.(\d+)\.")
    counts: dict[int, set] = {}
    for k in sd:
        m = pat.match(k)
        if m:
            counts.setdefault(int(m[1]), set()).add(int(m[2]))
    attn = {int(m[1]) for k in sd if (m := re.match(rf"^{prefix}\.{blk}\.(\d+)\.attn\.\d+\.", k))}
    return [(len(counts[i]), i in attn) for i in sorted(counts)]


def infer_config(sd: dict, layout: str) -> dict:
    """diffusers VQModel kwargs from a taming-style state dict."""
    need = [
        "encoder.conv_in.weight",
        "encoder.conv_out.weight",
        "decoder.conv_out.weight",
        "quantize.embedding.weight",
        "quant_conv.weight",
    ]
    missing = [k for k in need if k not in sd]
    if missing:
        raise CheckpointLayoutError(
            f"state dict has no key(s) {missing}; expected a {layout} taming-style VQ checkpoint"
        )
    enc = _levels(sd, "encoder", layout)
    if not enc:
        example = "encoder.down.0.block.0" if layout == "ldm" else "encoder.conv_blocks.0.res.0"
        raise CheckpointLayoutError(
            f"no encoder blocks found in {layout} layout (expected keys like {example}.*); "
            "is this checkpoint from the other tokenizer family?"
        )
    blocks = {n for n, _ in enc}
    if len(blocks) != 1:
        raise CheckpointLayoutError(f"levels have different block counts {blocks}")
    res_key = "block" if layout == "ldm" else "res"
    blk_key = "down" if layout == "ldm" else "conv_blocks"
    ch_out = [
        sd[f"encoder.{blk_key}.{i}.{res_key}.0.conv1.weight"].shape[0] for i in range(len(enc))
    ]
    n_embed, embed_dim = sd["quantize.embedding.weight"].shape
    attn_levels = [a for _, a in enc]
    return dict(
        in_channels=sd["encoder.conv_in.weight"].shape[1],
        out_channels=sd["decoder.conv_out.weight"].shape[0],
        down_block_types=tuple(
            "AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn_levels
        ),
        up_block_types=tuple(
            "AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn_levels)
        ),
        block_out_channels=tuple(ch_out),
        layers_per_block=blocks.pop(),
        latent_channels=sd["encoder.conv_out.weight"].shape[0],
        num_vq_embeddings=n_embed,
        vq_embed_dim=embed_dim,
        norm_num_groups=32,
    )


def _rename(key: str, layout: str, n_levels: int) -> str | None:
    if layout == "ldm":
        rules = [
            (r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets."),
            (r"^encoder\.down\.(\d+)\.attn\.", r"encoder.down_blocks.\1.attentions."),
            (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
            (r"^(en|de)coder\.mid\.block_1\.", r"\1coder.mid_block.resnets.0."),
            (r"^(en|de)coder\.mid\.attn_1\.", r"\1coder.mid_block.attentions.0."),
            (r"^(en|de)coder\.mid\.block_2\.", r"\1coder.mid_block.resnets.1."),
        ]
        m = re.match(r"^decoder\.up\.(\d+)\.(block|attn|upsample)\.(.*)$", key)
        if m:  # level → execution order
            part = {"block": "resnets", "attn": "attentions", "upsample": "upsamplers.0"}[m[2]]
            key = f"decoder.up_blocks.{n_levels - 1 - int(m[1])}.{part}.{m[3]}"
    else:
        rules = [
            (r"^encoder\.conv_blocks\.(\d+)\.res\.", r"encoder.down_blocks.\1.resnets."),
            (r"^encoder\.conv_blocks\.(\d+)\.attn\.", r"encoder.down_blocks.\1.attentions."),
            (
                r"^encoder\.conv_blocks\.(\d+)\.downsample\.",
                r"encoder.down_blocks.\1.downsamplers.0.",
            ),
            (r"^decoder\.conv_blocks\.(\d+)\.res\.", r"decoder.up_blocks.\1.resnets."),
            (r"^decoder\.conv_blocks\.(\d+)\.attn\.", r"decoder.up_blocks.\1.attentions."),
            (r"^decoder\.conv_blocks\.(\d+)\.upsample\.", r"decoder.up_blocks.\1.upsamplers.0."),
            (r"^(en|de)coder\.mid\.0\.", r"\1coder.mid_block.resnets.0."),
            (r"^(en|de)coder\.mid\.1\.", r"\1coder.mid_block.attentions.0."),
            (r"^(en|de)coder\.mid\.2\.", r"\1coder.mid_block.resnets.1."),
        ]
    for pat, rep in rules:
        key = re.sub(pat, rep, key)
    key = re.sub(r"^(en|de)coder\.norm_out\.", r"\1coder.conv_norm_out.", key)
    parts = key.split(".")
    if (
        len(parts) >= 3
        and parts[-2] in LEAF
        and (".attentions." in key or parts[-2] == "nin_shortcut")
    ):
        parts[-2] = LEAF[parts[-2]]
        key = ".".join(parts)
    return key


def convert_taming_to_diffusers(sd: dict, layout: str) -> tuple[dict, dict]:
    """(diffusers state dict, VQModel config). LlamaGen's codebook is L2-normalised here."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    sd = {
        k: v for k, v in sd.items() if not k.startswith("loss.") and k != "quantize.codebook_used"
    }
    config = infer_config(sd, layout)
    n_levels = len(config["block_out_channels"])
    out = {}
    for k, v in sd.items():
        nk = _rename(k, layout, n_levels)
        if ".attentions." in nk and nk.endswith(".weight") and v.ndim == 4:
            v = v[:, :, 0, 0]  # 1×1 conv → linear
        out[nk] = v
    if layout == "llamagen":
        emb = out["quantize.embedding.weight"]
        out["quantize.embedding.weight"] = torch.nn.functional.normalize(emb.float(), dim=-1)
    return out, config


def load_into_vqmodel(sd: dict, config: dict, source: str):
    """Build a VQModel (diffusers' layout) and load a converted state dict strictly."""
    from .vqmodel import VQModel, load_into

    return load_into(VQModel(config), sd, f"{source} (converted)")
