"""Every tokenizer backend passes one contract; converters reproduce the original forward."""

import argparse
import contextlib
import sys
import types

import numpy as np
import pytest
import torch
from helpers.data import make_fmnist
from helpers.taming_reference import RefVQ

from shared.tokenizers import (
    SDVQF8,
    FashionVQ,
    FashionVQConfig,
    LlamaGenVQ,
    load_tokenizer,
    to_float,
    train_fashion_vq,
)
from shared.tokenizers.convert import convert_taming_to_diffusers
from shared.tokenizers.layout import CheckpointLayoutError

REF_SIZE = 16  # 2 levels → f=2 → 8×8 grid


def ref_checkpoint(tmp_path, layout):
    torch.manual_seed(0 if layout == "ldm" else 1)
    kw = dict(z_ch=4, embed_dim=4) if layout == "ldm" else dict(z_ch=8, embed_dim=8)
    ref = RefVQ(layout, ch=32, ch_mult=(1, 2), n_res=1, n_embed=64, **kw).eval()
    sd = dict(ref.state_dict())
    if layout == "ldm":  # Lightning checkpoint: discriminator/LPIPS alongside, callback state
        sd["loss.discriminator.main.0.weight"] = torch.zeros(3)
        path = tmp_path / "model.ckpt"
        with lightning_module() as ModelCheckpoint:
            torch.save(
                {
                    "state_dict": sd,
                    "global_step": 7,
                    "pytorch-lightning_version": "1.4.2",
                    "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5)}},
                },
                path,
            )
    else:  # LlamaGen's training checkpoints keep their argparse args
        sd["quantize.codebook_used"] = torch.zeros(65536)
        path = tmp_path / "vq_ds8_c2i.pt"
        torch.save({"model": sd, "steps": 7, "args": argparse.Namespace(codebook_size=64)}, path)
    return ref, str(path)


@contextlib.contextmanager
def lightning_module():
    """A stand-in ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`` class, so a
    checkpoint can name it the way real Lightning checkpoints do (the package is not here)."""
    names = [
        "pytorch_lightning",
        "pytorch_lightning.callbacks",
        "pytorch_lightning.callbacks.model_checkpoint",
    ]
    mods = {n: types.ModuleType(n) for n in names}
    cls = type("ModelCheckpoint", (), {"__module__": names[-1]})
    mods[names[-1]].ModelCheckpoint = cls
    sys.modules.update(mods)
    try:
        yield cls
    finally:
        for n in names:
            sys.modules.pop(n, None)


@pytest.fixture(scope="module")
def fashion_tok(tmp_path_factory):
    """A tiny Fashion VQ trained inside the test on synthetic IDX files."""
    root = tmp_path_factory.mktemp("fmnist")
    make_fmnist(root, n_train=64, n_test=16)
    cfg = FashionVQConfig(
        block_out_channels=(16, 16, 16), steps=6, batch_size=8, restart_every=2, data_root=str(root)
    )
    path = train_fashion_vq(cfg, str(root / "tok"), progress=False)
    return FashionVQ.load(path)


@pytest.fixture(scope="module")
def backends(tmp_path_factory, fashion_tok):
    tmp = tmp_path_factory.mktemp("ckpt")
    _, sd_path = ref_checkpoint(tmp, "ldm")
    _, lg_path = ref_checkpoint(tmp, "llamagen")
    return {
        "fashion-vq": fashion_tok,
        "sd-vq-f8": SDVQF8.load(sd_path, image_size=REF_SIZE),
        "llamagen-vq-ds8": LlamaGenVQ.load(lg_path, image_size=REF_SIZE),
    }


@pytest.mark.parametrize("backend", ["fashion-vq", "sd-vq-f8", "llamagen-vq-ds8"])
def test_tokenizer_contract(backends, backend):
    tok = backends[backend]
    k, d = tok.codebook.shape
    h, w = tok.grid
    g = torch.Generator().manual_seed(0)
    c = torch.randint(0, k, (3, h, w), generator=g)
    z = tok.lookup(c)
    assert z.shape == (3, d, h, w)
    assert torch.equal(tok.quantize(z), c)  # quantize(lookup(c)) == c
    with torch.no_grad():
        ref = tok.decoder(z)
        # decode(c) == decoder(lookup(c))
        assert torch.equal(tok.decode(c), ((ref.clamp(-1, 1) + 1) * 127.5).round().byte())
    imgs = torch.randint(
        0, 256, (2, tok.channels, tok.image_size, tok.image_size), generator=g, dtype=torch.uint8
    )
    idx = tok.encode(imgs)
    assert idx.shape == (2, h, w) and idx.dtype == torch.long
    with torch.no_grad():  # encode == the nearest code by brute force
        h = tok.pre_quant(imgs).permute(0, 2, 3, 1).reshape(-1, d)
        q_idx = torch.cdist(h.double(), tok.codebook.double()).argmin(1)
    assert torch.equal(idx.flatten(), q_idx)
    out = tok.decode(idx)
    assert out.dtype == torch.uint8 and out.shape == imgs.shape


@pytest.mark.parametrize("layout", ["ldm", "llamagen"])
def test_converter_matches_reference_forward(tmp_path, layout):
    ref, path = ref_checkpoint(tmp_path, layout)
    tok = (SDVQF8 if layout == "ldm" else LlamaGenVQ).load(path, image_size=REF_SIZE)
    x = torch.randint(0, 256, (2, 3, REF_SIZE, REF_SIZE), dtype=torch.uint8)
    with torch.no_grad():
        h_ref = ref.encode_pre_quant(to_float(x))
        torch.testing.assert_close(tok.pre_quant(x), h_ref, rtol=1e-4, atol=1e-4)
        idx = ref.indices(h_ref)
        assert torch.equal(tok.encode(x), idx)
        torch.testing.assert_close(
            tok.decoder(tok.lookup(idx)), ref.decode_code(idx), rtol=1e-4, atol=1e-4
        )
    if layout == "llamagen":  # the exposed codebook is the normalised one the decoder consumes
        norms = tok.codebook.norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
        raw = ref.quantize.embedding.weight
        assert not torch.allclose(raw.norm(dim=1), torch.ones(64))
    else:  # a diffusers-format folder of the same model loads identically
        tok.vq.save_pretrained(str(tmp_path / "diffusers"))
        tok2 = SDVQF8.load(str(tmp_path / "diffusers"), image_size=REF_SIZE)
        assert torch.equal(tok2.encode(x), tok.encode(x))


def test_converter_two_level_attention_and_errors(tmp_path):
    ref = RefVQ("ldm", ch=32, ch_mult=(1, 1, 2), n_res=2, attn_levels={1, 2}).eval()
    sd, cfg = convert_taming_to_diffusers(ref.state_dict(), "ldm")
    assert cfg["down_block_types"] == ("DownEncoderBlock2D",) + ("AttnDownEncoderBlock2D",) * 2
    assert cfg["up_block_types"] == ("AttnUpDecoderBlock2D",) * 2 + ("UpDecoderBlock2D",)
    assert cfg["layers_per_block"] == 2 and cfg["block_out_channels"] == (32, 32, 64)
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "m.ckpt")
    tok = SDVQF8.load(str(tmp_path / "m.ckpt"), image_size=16)
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(
            tok.pre_quant(x), ref.encode_pre_quant(to_float(x)), rtol=1e-4, atol=1e-4
        )
    bad = {k: v for k, v in ref.state_dict().items() if k != "quantize.embedding.weight"}
    with pytest.raises(CheckpointLayoutError, match="quantize.embedding.weight"):
        convert_taming_to_diffusers(bad, "ldm")
    with pytest.raises(CheckpointLayoutError, match="no encoder blocks found in llamagen"):
        convert_taming_to_diffusers(ref.state_dict(), "llamagen")  # wrong layout named


def test_missing_weights_say_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="ommer-lab.com/files/latent-diffusion/vq-f8.zip"):
        SDVQF8.load(str(tmp_path / "vq-f8.ckpt"))
    with pytest.raises(FileNotFoundError, match="FoundationVision/LlamaGen"):
        load_tokenizer("llamagen-vq-ds8", str(tmp_path / "vq_ds8_c2i.pt"))
    with pytest.raises(FileNotFoundError, match="train_tokenizer.py"):
        FashionVQ.load(str(tmp_path))
    with pytest.raises(ValueError, match="unknown tokenizer backend"):
        load_tokenizer("magvit")


def test_fashion_training_artifact(fashion_tok):
    meta = fashion_tok.info
    m = meta["test_metrics"]
    assert set(m) >= {"psnr_db", "codebook_usage", "perplexity"}
    assert 0 < m["codebook_usage"] <= 1 and 1 <= m["perplexity"] <= 256
    assert np.isfinite(m["psnr_db"])
    assert fashion_tok.grid == (8, 8) and fashion_tok.codebook.shape == (256, 4)
    assert meta["id"] == fashion_tok.tokenizer_id and meta["backend"] == "fashion-vq"
    assert meta["config"]["steps"] == 6 and "data_root" not in meta["config"]


def test_the_runner_refuses_a_tokenizer_of_another_layout(compose, tmp_path):
    """A 3-level VQModel loaded as "sd-vq-f8" (a 64×64 grid) and a swapped tokenizer
    family are each a one-line RunError before any data or model work, not a silent wrong
    grid or a late traceback."""

    from experiments.runner.build import load_tokenizer as runner_tokenizer
    from experiments.runner.errors import RunError

    _, sd_path = ref_checkpoint(tmp_path, "ldm")  # 2 levels: f=2, not 8
    _, lg_path = ref_checkpoint(tmp_path, "llamagen")
    cfg = compose(["tokenizer=sd_vq_f8", f"tokenizer.path={sd_path}", "tokenizer.image_size=16"])
    expect = r"to a 8x8 grid \(factor 2\), but tokenizer.backend=sd-vq-f8 means factor 8 \(2x2\)"
    with pytest.raises(RunError, match=expect):
        runner_tokenizer(cfg)
    cfg = compose(["tokenizer=sd_vq_f8", f"tokenizer.path={lg_path}", "tokenizer.image_size=16"])
    with pytest.raises(RunError, match="does not load as tokenizer.backend=sd-vq-f8"):
        runner_tokenizer(cfg)


def diffusers_twin(vq):
    """diffusers' own VQModel with the same config and weights."""
    import diffusers

    twin = diffusers.VQModel(**{k: v for k, v in vq.config.to_dict().items()})
    twin.load_state_dict(vq.state_dict(), strict=True)
    return twin.eval()


@pytest.mark.parametrize("backend", ["fashion-vq", "sd-vq-f8", "llamagen-vq-ds8", "two-level-attn"])
def test_vqmodel_equals_diffusers_bit_for_bit(backends, backend, tmp_path):
    """shared/tokenizers/vqmodel.py against diffusers 0.42.1's VQModel, which it replaces:
    the same keys, encode and decode equal bit for bit (fp32 and bf16 autocast, attention
    levels included), the same initial weights from the same seed, and folders written by
    either one load in the other."""
    import diffusers

    from shared.tokenizers.vqmodel import VQModel, load_pretrained

    if backend == "two-level-attn":
        ref = RefVQ("ldm", ch=32, ch_mult=(1, 1, 2), n_res=2, attn_levels={1, 2}).eval()
        torch.save({"state_dict": ref.state_dict()}, tmp_path / "m.ckpt")
        tok = SDVQF8.load(str(tmp_path / "m.ckpt"), image_size=16)
    else:
        tok = backends[backend]
    ours, twin = tok.vq, diffusers_twin(tok.vq)
    assert list(ours.state_dict()) == list(twin.state_dict())
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, tok.channels, tok.image_size, tok.image_size, generator=g) * 2 - 1
    for dtype in (None, torch.bfloat16):
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=dtype is not None):
            h = ours.encode(x)
            assert torch.equal(h, twin.encode(x).latents)
            assert torch.equal(ours.decode(h), twin.decode(h, force_not_quantize=True).sample)
    cfg = ours.config.to_dict()
    torch.manual_seed(3)
    a = VQModel(cfg).state_dict()
    torch.manual_seed(3)
    b = diffusers.VQModel(**cfg).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ours.save_pretrained(str(tmp_path / "ours"))
    theirs = diffusers.VQModel.from_pretrained(str(tmp_path / "ours"), low_cpu_mem_usage=False)
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())
    twin.save_pretrained(str(tmp_path / "theirs"))
    back = load_pretrained(str(tmp_path / "theirs"))
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ours.state_dict().items())


def test_vqmodel_refuses_what_it_does_not_implement(tmp_path):
    import json

    from shared.tokenizers.vqmodel import VQConfig, VQModel, load_pretrained

    with pytest.raises(ValueError, match="norm_type='spatial'"):
        VQConfig.from_dict({"norm_type": "spatial"})
    with pytest.raises(ValueError, match=r"unknown VQModel config key\(s\) \['new_key'\]"):
        VQConfig.from_dict({"new_key": 1, "_diffusers_version": "9"})
    with pytest.raises(ValueError, match="CrossAttnDownBlock2D"):
        VQConfig.from_dict({"down_block_types": ["CrossAttnDownBlock2D"]})
    folder = tmp_path / "m"
    VQModel(block_out_channels=(32,), norm_num_groups=8).save_pretrained(str(folder))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(Exception, match="cannot read"):
        load_pretrained(str(folder))
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="AutoencoderKL, not a VQModel"):
        load_pretrained(str(folder))


# the real checkpoints' shapes: LDM's vq-f8 config (ch 128, ch_mult 1,2,2,4, 2 res blocks,
# attention at 32 px of 256, 16384 codes of dim 4) and LlamaGen's VQ-8 (the same encoder
# widths, z 256, 16384 l2-normalised codes of dim 8, attention on the last level)
REAL = {
    "ldm": dict(
        ch=128, ch_mult=(1, 2, 2, 4), n_res=2, z_ch=4, embed_dim=4, n_embed=16384, attn_levels={3}
    ),
    "llamagen": dict(
        ch=128, ch_mult=(1, 2, 2, 4), n_res=2, z_ch=256, embed_dim=8, n_embed=16384, attn_levels={3}
    ),
}


@pytest.mark.parametrize("layout", ["ldm", "llamagen"])
def test_vqmodel_has_diffusers_layout_at_the_real_checkpoint_shapes(layout):
    """Every real SD vq-f8 / LlamaGen checkpoint loads through shared/tokenizers/vqmodel.py:
    at their full shapes (built on the meta device: no memory, no time) the converted keys
    and shapes are diffusers' VQModel's."""
    import diffusers

    from shared.tokenizers.vqmodel import VQModel

    with torch.device("meta"):
        ref = RefVQ(layout, **REAL[layout])
    sd, config = convert_taming_to_diffusers(ref.state_dict(), layout)
    assert tuple(config["block_out_channels"]) == (128, 256, 256, 512)
    assert config["num_vq_embeddings"] == 16384
    with torch.device("meta"):
        ours, twin = VQModel(config), diffusers.VQModel(**config)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in twin.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["ldm", "llamagen"])
def test_vqmodel_equals_diffusers_at_the_real_checkpoint_shapes(layout):
    """Random weights at the real shapes (68M parameters, 4 s each on a CPU): a 32-px image
    (the convolutions do not care) encodes and decodes bit for bit as diffusers does."""
    from shared.tokenizers.convert import load_into_vqmodel

    torch.manual_seed(0)
    ref = RefVQ(layout, **REAL[layout]).eval()
    sd, config = convert_taming_to_diffusers(ref.state_dict(), layout)
    ours = load_into_vqmodel(sd, config, "random real-shape weights").eval()
    twin = diffusers_twin(ours)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        h = ours.encode(x)
        assert h.shape == (1, REAL[layout]["embed_dim"], 4, 4)  # f = 8
        assert torch.equal(h, twin.encode(x).latents)
        assert torch.equal(ours.decode(h), twin.decode(h, force_not_quantize=True).sample)
