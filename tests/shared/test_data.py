"""Data layer: IDX parsing (incl. corrupt/truncated files), class folders, sampler resume."""

import gzip
import itertools
import os
import struct

import numpy as np
import pytest
import torch
from helpers.data import make_fmnist, make_tree
from PIL import Image

from shared.data import (
    FashionMNIST,
    IDXError,
    ImageFolder,
    ImageFolderError,
    InfiniteSampler,
    adm_center_crop,
    read_images,
    read_labels,
    write_idx,
)
from shared.data.fashion_mnist import FILES


def test_idx_roundtrip_and_header(tmp_path):
    arrays = make_fmnist(tmp_path)
    imgs, lbls = arrays["train"]
    got = read_images(tmp_path / FILES["train"][0])
    assert got.shape == (12, 28, 28) and np.array_equal(got, imgs)
    assert np.array_equal(read_labels(tmp_path / FILES["train"][1]), lbls.astype(np.int64))
    # the header is the documented one: magic 2051, then big-endian sizes
    raw = gzip.decompress((tmp_path / FILES["train"][0]).read_bytes())
    assert struct.unpack(">IIII", raw[:16]) == (2051, 12, 28, 28)
    # uncompressed files are accepted too
    write_idx(tmp_path / "plain", imgs, compress=False)
    assert np.array_equal(read_images(tmp_path / "plain"), imgs)


def test_idx_truncated_data_names_file(tmp_path):
    imgs = np.zeros((4, 28, 28), np.uint8)
    raw = struct.pack(">IIII", 2051, 4, 28, 28) + imgs.tobytes()
    bad = tmp_path / "short.gz"
    bad.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(IDXError, match=r"short\.gz.*truncated.*3136 bytes of data, found 3036"):
        read_images(bad)


def test_idx_truncated_gzip_names_file(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((50, 28, 28), np.uint8))
    blob = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(IDXError, match=r"cut\.gz.*corrupt or truncated gzip"):
        read_images(tmp_path / "cut.gz")


def test_idx_wrong_magic_and_garbage(tmp_path):
    write_idx(tmp_path / "labels.gz", np.zeros((3,), np.uint8))
    with pytest.raises(IDXError, match=r"labels\.gz has magic number 2049.*expected 2051"):
        read_images(tmp_path / "labels.gz")
    (tmp_path / "junk").write_bytes(b"\x01\x02")
    with pytest.raises(IDXError, match="too short"):
        read_images(tmp_path / "junk")
    (tmp_path / "float").write_bytes(struct.pack(">I", 0x00000D01) + struct.pack(">I", 0))
    with pytest.raises(IDXError, match="unsupported header"):
        read_labels(tmp_path / "float")
    with pytest.raises(IDXError, match="does not exist"):
        read_images(tmp_path / "nope.gz")


def test_idx_extra_bytes_and_bad_labels(tmp_path):
    raw = struct.pack(">II", 2049, 2) + bytes([1, 2, 3])
    (tmp_path / "long").write_bytes(raw)
    with pytest.raises(IDXError, match="longer than its header says"):
        read_labels(tmp_path / "long")
    write_idx(tmp_path / "l.gz", np.array([0, 12], np.uint8))
    with pytest.raises(IDXError, match="label 12"):
        read_labels(tmp_path / "l.gz", num_classes=10)


def test_fashion_mnist_dataset_pad_and_resize(tmp_path):
    arrays = make_fmnist(tmp_path)
    ds = FashionMNIST(tmp_path, "test", size=32, strict_count=False)
    assert len(ds) == 5
    img, label = ds[3]
    assert img.dtype == torch.uint8 and img.shape == (1, 32, 32)
    assert label == int(arrays["test"][1][3])
    assert torch.equal(img[0, 2:30, 2:30], torch.from_numpy(arrays["test"][0][3]))
    assert img[0, :2].sum() == 0 and img[0, :, 30:].sum() == 0  # zero border
    small = FashionMNIST(tmp_path, "train", size=16, resize="resize", strict_count=False)
    assert small[0][0].shape == (1, 16, 16)
    # a constant image stays constant under the antialiased resize
    write_idx(tmp_path / FILES["test"][0], np.full((5, 28, 28), 200, np.uint8))
    const = FashionMNIST(tmp_path, "test", size=20, resize="resize", strict_count=False)
    assert (const.images == 200).all()
    with pytest.raises(ValueError, match="centre-pad"):
        FashionMNIST(tmp_path, "test", size=31, strict_count=False)
    with pytest.raises(IDXError, match="expected 10000"):
        FashionMNIST(tmp_path, "test", strict_count=True)


def test_fashion_mnist_mismatch_and_missing(tmp_path):
    make_fmnist(tmp_path)
    write_idx(tmp_path / FILES["test"][1], np.zeros((4,), np.uint8))
    with pytest.raises(IDXError, match="5 images but .* 4 labels"):
        FashionMNIST(tmp_path, "test", strict_count=False)
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        FashionMNIST(tmp_path / "empty", "train")
    with pytest.raises(ValueError, match="unknown Fashion-MNIST split"):
        FashionMNIST(tmp_path, "val")


def test_image_folder_order_and_crop(tmp_path):
    make_tree(tmp_path)
    ds = ImageFolder(str(tmp_path), size=32)
    assert ds.classes == ["ant", "moth", "zebra"]
    assert [lbl for _, lbl in ds.samples] == [0, 0, 1, 1, 2, 2]
    img, label = ds[4]
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8 and label == 2
    ds.verify()


def test_adm_center_crop_geometry():
    # a 600×200 image whose left/right thirds are black and centre third white
    arr = np.zeros((200, 600, 3), np.uint8)
    arr[:, 200:400] = 255
    out = adm_center_crop(Image.fromarray(arr), 64)
    assert out.shape == (64, 64, 3)
    assert out.min() > 200  # the centre crop only sees the white third
    # a greyscale image becomes (size, size) and short side scales exactly to size
    out = adm_center_crop(Image.fromarray(np.full((100, 130), 7, np.uint8)), 50)
    assert out.shape == (50, 50) and (out == 7).all()


def test_image_folder_errors(tmp_path):
    with pytest.raises(ImageFolderError, match="does not exist"):
        ImageFolder(str(tmp_path / "none"))
    with pytest.raises(ImageFolderError, match="no class sub-folders"):
        ImageFolder(str(tmp_path))
    make_tree(tmp_path)
    os.makedirs(tmp_path / "empty_cls")
    with pytest.raises(ImageFolderError, match="empty_cls"):
        ImageFolder(str(tmp_path))
    os.rmdir(tmp_path / "empty_cls")
    (tmp_path / "ant" / "notes.txt").write_text("x")
    with pytest.raises(ImageFolderError, match=r"notes\.txt"):
        ImageFolder(str(tmp_path))
    os.remove(tmp_path / "ant" / "notes.txt")
    (tmp_path / "moth" / "broken.jpg").write_bytes(b"not a jpeg at all")
    ds = ImageFolder(str(tmp_path), size=16)
    with pytest.raises(ImageFolderError, match=r"cannot decode image .*moth.broken\.jpg"):
        ds.verify()


def take(it, k):
    return list(itertools.islice(it, k))


@pytest.mark.parametrize("resume_at", [0, 7, 10, 23, 31])
def test_sampler_resume_equals_uninterrupted(resume_at):
    n = 10
    full = take(iter(InfiniteSampler(n, seed=3)), 40)
    resumed = take(iter(InfiniteSampler(n, seed=3, start=resume_at)), 40 - resume_at)
    assert resumed == full[resume_at:]
    # every epoch is a permutation, epochs differ, seeds differ
    for e in range(4):
        assert sorted(full[e * n : (e + 1) * n]) == list(range(n))
    assert full[:n] != full[n : 2 * n]
    assert take(iter(InfiniteSampler(n, seed=4)), n) != full[:n]


def test_sampler_ranks_partition_global_stream():
    n, world = 9, 3
    full = take(iter(InfiniteSampler(n, seed=1, start=5)), 30)
    per_rank = [take(iter(InfiniteSampler(n, 1, 5, r, world)), 10) for r in range(world)]
    interleaved = [per_rank[i % world][i // world] for i in range(30)]
    assert interleaved == full
    with pytest.raises(ValueError, match="rank 3"):
        InfiniteSampler(n, rank=3, world_size=3)
    with pytest.raises(ValueError, match="non-empty"):
        InfiniteSampler(0)


def test_sampler_in_dataloader_resume():
    data = torch.arange(13)
    ds = torch.utils.data.TensorDataset(data)

    def stream(start, batches):
        dl = torch.utils.data.DataLoader(ds, batch_size=4, sampler=InfiniteSampler(13, 0, start))
        return torch.cat([b[0] for b in itertools.islice(dl, batches)])

    full = stream(0, 6)
    assert torch.equal(stream(8, 4), full[8:])  # resume after 2 batches (8 images seen)


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="Fashion-MNIST not installed"
)
def test_real_fashion_mnist_counts():
    ds = FashionMNIST(split="test")
    assert len(ds) == 10000 and ds.images.shape == (10000, 1, 32, 32)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
