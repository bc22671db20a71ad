"""An independent taming-transformers-style VQ autoencoder in the *original* key layouts
(latent-diffusion vq-f8 and LlamaGen vq-ds8), used as the reference forward pass that the
checkpoint converters must reproduce. Written from the published architecture:
ResnetBlock(norm1, conv1, norm2, conv2[, nin_shortcut]), AttnBlock(norm, q, k, v,
proj_out) with single-head attention scaled by C^-1/2, Downsample = pad (0,1,0,1) + 3×3
conv stride 2, Upsample = nearest ×2 + 3×3 conv, GroupNorm(32, eps=1e-6), swish.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def norm(c):
    return nn.GroupNorm(32, c, eps=1e-6)


class Res(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class Attn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q = self.q(h).flatten(2).transpose(1, 2)  # (b, hw, c)
        k = self.k(h).flatten(2)  # (b, c, hw)
        v = self.v(h).flatten(2)  # (b, c, hw)
        w = torch.softmax(q @ k * c**-0.5, dim=-1)  # (b, hw_q, hw_k)
        out = (v @ w.transpose(1, 2)).view(b, c, hh, ww)
        return x + self.proj_out(out)


class Down(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Up(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    pass


class RefVQ(nn.Module):
    """layout 'ldm' or 'llamagen'; attention on the last (lowest-resolution) level."""

    def __init__(
        self,
        layout,
        ch=32,
        ch_mult=(1, 2),
        n_res=1,
        z_ch=4,
        embed_dim=4,
        n_embed=64,
        in_ch=3,
        attn_levels=None,
    ):
        super().__init__()
        self.layout = layout
        self.n_res = n_res
        n = len(ch_mult)
        attn_levels = {n - 1} if attn_levels is None else set(attn_levels)
        ldm = layout == "ldm"
        blk, res = ("down", "block") if ldm else ("conv_blocks", "res")
        enc = nn.Module()
        enc.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        levels, cin = nn.ModuleList(), ch
        for i, m in enumerate(ch_mult):
            lv = Level()
            rs, ats = nn.ModuleList(), nn.ModuleList()
            for _ in range(n_res):
                rs.append(Res(cin, ch * m))
                cin = ch * m
                if i in attn_levels:
                    ats.append(Attn(cin))
            setattr(lv, res, rs)
            lv.attn = ats
            if i != n - 1:
                lv.downsample = Down(cin)
            levels.append(lv)
        setattr(enc, blk, levels)
        enc.mid = self._mid(cin, ldm)
        enc.norm_out = norm(cin)
        enc.conv_out = nn.Conv2d(cin, z_ch, 3, padding=1)
        self.encoder = enc
        self.quant_conv = nn.Conv2d(z_ch, embed_dim, 1)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(n_embed, embed_dim)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_ch, 1)
        dec = nn.Module()
        dec.conv_in = nn.Conv2d(z_ch, cin, 3, padding=1)
        dec.mid = self._mid(cin, ldm)
        ups = [None] * n
        for i in reversed(range(n)):  # execution order: lowest resolution first
            lv = Level()
            rs, ats = nn.ModuleList(), nn.ModuleList()
            for _ in range(n_res + 1):
                rs.append(Res(cin, ch * ch_mult[i]))
                cin = ch * ch_mult[i]
                if i in attn_levels:
                    ats.append(Attn(cin))
            setattr(lv, res, rs)
            lv.attn = ats
            if i != 0:
                lv.upsample = Up(cin)
            ups[i if ldm else n - 1 - i] = lv  # LDM indexes by level, LlamaGen by order
        setattr(dec, "up" if ldm else "conv_blocks", nn.ModuleList(ups))
        dec.norm_out = norm(cin)
        dec.conv_out = nn.Conv2d(cin, in_ch, 3, padding=1)
        self.decoder = dec
        self.ch_mult = ch_mult
        for p in self.parameters():  # random everything (norm affines too) to catch mix-ups
            nn.init.normal_(p, std=0.2 if p.ndim > 1 else 0.5)
        self.quantize.embedding.weight.data.normal_()

    @staticmethod
    def _mid(c, ldm):
        if ldm:
            m = nn.Module()
            m.block_1 = Res(c, c)
            m.attn_1 = Attn(c)
            m.block_2 = Res(c, c)
            return m
        return nn.ModuleList([Res(c, c), Attn(c), Res(c, c)])

    def _run_mid(self, mid, h):
        mods = [mid.block_1, mid.attn_1, mid.block_2] if self.layout == "ldm" else list(mid)
        for m in mods:
            h = m(h)
        return h

    def _levels(self, part):
        if self.layout != "ldm":
            return list(part.conv_blocks)
        if hasattr(part, "down"):
            return list(part.down)
        return [part.up[i] for i in reversed(range(len(part.up)))]  # level → execution order

    def _res(self, lv):
        return lv.block if self.layout == "ldm" else lv.res

    def encode_pre_quant(self, x):
        e = self.encoder
        h = e.conv_in(x)
        for lv in self._levels(e):
            for j, r in enumerate(self._res(lv)):
                h = r(h)
                if len(lv.attn):
                    h = lv.attn[j](h)
            if hasattr(lv, "downsample"):
                h = lv.downsample(h)
        h = self._run_mid(e.mid, h)
        return self.quant_conv(e.conv_out(F.silu(e.norm_out(h))))

    def codebook(self):
        w = self.quantize.embedding.weight
        return F.normalize(w, dim=-1) if self.layout == "llamagen" else w

    def indices(self, h):
        z = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
        e = self.codebook()
        if self.layout == "llamagen":  # cosine nearest neighbour, as in LlamaGen
            z = F.normalize(z, dim=-1)
        d = (z**2).sum(1, keepdim=True) + (e**2).sum(1) - 2 * z @ e.T
        return d.argmin(1).view(h.shape[0], h.shape[2], h.shape[3])

    def decode_code(self, idx):
        z = self.codebook()[idx].permute(0, 3, 1, 2)
        d = self.decoder
        h = d.conv_in(self.post_quant_conv(z))
        h = self._run_mid(d.mid, h)
        for lv in self._levels(d):
            for j, r in enumerate(self._res(lv)):
                h = r(h)
                if len(lv.attn):
                    h = lv.attn[j](h)
            if hasattr(lv, "upsample"):
                h = lv.upsample(h)
        return d.conv_out(F.silu(d.norm_out(h)))
