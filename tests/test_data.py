"""Datasets from their real on-disk formats, the cache, partitions and batched augmentation."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from pcasgd.app import sources
from pcasgd.app.data import augment_batch, load, partition, training_subset
from pcasgd.errors import ConfigError


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PCASGD_CACHE", str(tmp_path / "cache"))


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    data = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def idx_dataset(folder, compress=True, train=12, test=4):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    parts = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(test) % 10).astype(np.uint8),
    }
    for name, array in parts.items():
        write_idx(folder / (name + suffix), array, compress)
    return parts


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_load_as_uint8_images_with_a_channel(tmp_path, compress):
    parts = idx_dataset(tmp_path / "fm", compress)
    data = load("fashion-mnist", tmp_path / "fm")
    assert data.train_x.shape == (12, 1, 28, 28) and data.train_x.dtype == torch.uint8
    assert torch.equal(data.train_x[:, 0], torch.from_numpy(parts["train-images-idx3-ubyte"]))
    assert data.test_y.tolist() == [0, 1, 2, 3] and data.classes == 10


def test_torchvision_layout_is_found_under_the_data_dir(tmp_path):
    idx_dataset(tmp_path / "FashionMNIST" / "raw")
    assert load("fashion-mnist", tmp_path).train_size == 12


def test_the_decoded_arrays_are_cached_by_the_sources_hash(tmp_path):
    idx_dataset(tmp_path / "fm")
    load("fashion-mnist", tmp_path / "fm")
    load("fashion-mnist", tmp_path / "fm")
    cached = list((tmp_path / "cache" / "datasets").iterdir())
    assert len(cached) == 1
    write_idx(tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz", np.full(4, 3, dtype=np.uint8), True)  # new source
    assert load("fashion-mnist", tmp_path / "fm").test_y.tolist() == [3, 3, 3, 3]
    assert len(list((tmp_path / "cache" / "datasets").iterdir())) == 2


def test_missing_and_corrupt_idx_data_say_where_and_what(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"fashion-mnist not found: .*empty.*apt-get install dataset-fashion-mnist"):
        load("fashion-mnist", tmp_path / "empty")
    idx_dataset(tmp_path / "bad")
    (tmp_path / "bad" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x03" + b"\0" * 20))
    with pytest.raises(ConfigError, match="truncated or corrupt"):
        load("fashion-mnist", tmp_path / "bad")
    (tmp_path / "bad" / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ConfigError, match="cannot be read as an IDX file"):
        load("fashion-mnist", tmp_path / "bad")


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_cifar10_from_an_image_tree_and_from_its_tar_gz_agree(tmp_path):
    tree = tmp_path / "tree"
    for split, count in (("train", 3), ("test", 2)):
        for label, name in enumerate(("airplane", "automobile")):
            (tree / split / name).mkdir(parents=True)
            for i in range(count):
                (tree / split / name / f"{i:04d}.png").write_bytes(png((label * 200, i * 50, 7)))
    from_tree = load("cifar10", tree)
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz") as tar:
        tar.add(tree, arcname="cifar10-jpeg")
    from_archive = load("cifar10", tmp_path / "c.tar.gz")
    assert from_tree.train_x.shape == (6, 3, 32, 32) and from_tree.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(from_tree.train_x, from_archive.train_x) and torch.equal(from_tree.test_y, from_archive.test_y)
    assert from_tree.train_x[3, 0, 0, 0] == 200 and from_tree.train_x[1, 1, 0, 0] == 50


def test_cifar10_from_torchvisions_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": np.full((2, 3072), 9, dtype=np.uint8), "labels": [1, 2]}
        (folder / name).write_bytes(pickle.dumps(entry))
    data = load("cifar10", tmp_path)
    assert data.train_x.shape == (10, 3, 32, 32) and data.test_y.tolist() == [1, 2]
    (folder / "test_batch").write_bytes(b"garbage")
    (tmp_path / "cache").rename(tmp_path / "old-cache")  # force a new decode
    with pytest.raises(ConfigError, match="is not a CIFAR-10 batch"):
        load("cifar10", tmp_path)


def test_cifar10_missing_names_the_places_and_the_archive(tmp_path):
    with pytest.raises(ConfigError, match=r"cifar10 not found: .*cifar-10-batches-py.*cifar10-jpeg.tar.gz"):
        load("cifar10", tmp_path)
    (tmp_path / "x.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(ConfigError, match=r"not a readable \.tar\.gz"):
        load("cifar10", tmp_path / "x.tar.gz")


def test_a_rank_materializes_only_its_rows():
    full = load("digits")
    shard = np.array([5, 1, 9])
    part = load("digits", train_rows=shard)
    assert part.train_x.shape[0] == 3 and part.train_size == full.train_size
    x, y = part.train_batch(np.array([9, 1]))
    assert torch.equal(x, full.train_x[[9, 1]]) and torch.equal(y, full.train_y[[9, 1]])


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "dirichlet:0.05"])
def test_partitions_cover_every_row_once_and_repeat_per_seed(spec):
    labels = np.repeat(np.arange(10), 50)
    shards = partition(labels, 4, spec, seed=3)
    assert sorted(np.concatenate(shards).tolist()) == list(range(500))
    assert all(len(shard) > 0 for shard in shards)
    again = partition(labels, 4, spec, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again, strict=True))


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5"])
def test_a_training_subset_is_the_same_rows_for_every_seed_and_partitioned_whole(spec):
    labels = np.repeat(np.arange(10), 50)
    subset = training_subset(500, 120)
    assert len(subset) == 120 and len(np.unique(subset)) == 120 and np.array_equal(subset, np.sort(subset))
    for seed in (0, 7):
        shards = partition(labels, 4, spec, seed, samples=120)
        assert sorted(np.concatenate(shards).tolist()) == subset.tolist()
        assert all(np.array_equal(shard, np.sort(shard)) for shard in shards)
    assert np.array_equal(training_subset(500, 0), np.arange(500))
    with pytest.raises(ConfigError, match="only 500 samples"):
        partition(labels, 4, spec, 0, samples=501)


def test_dirichlet_with_a_small_alpha_skews_the_classes():
    labels = np.repeat(np.arange(10), 100)
    iid = partition(labels, 4, "iid", 0)
    skewed = partition(labels, 4, "dirichlet:0.1", 0)

    def largest_class_share(shards):
        return np.mean([np.bincount(labels[s], minlength=10).max() / len(s) for s in shards])

    assert largest_class_share(iid) < 0.2 < largest_class_share(skewed)
    with pytest.raises(ConfigError, match="dirichlet:ALPHA"):
        partition(labels, 4, "dirichlet:-1", 0)


def test_augmentation_crops_and_flips_each_image_of_the_batch():
    x = torch.rand(16, 3, 8, 8)
    out = augment_batch(x, torch.Generator().manual_seed(1), padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for i in range(16):
        candidates = [
            (padded[i, :, dy : dy + 8, dx : dx + 8], flip)
            for dy in range(5)
            for dx in range(5)
            for flip in (False, True)
        ]
        matches = [flip for crop, flip in candidates if torch.equal(out[i], crop.flip(2) if flip else crop)]
        assert matches, f"image {i} is no crop/flip of its input"
        flips += matches[0]
    assert 0 < flips < 16  # both branches taken
    assert torch.equal(out, augment_batch(x, torch.Generator().manual_seed(1), padding=2))  # seeded


def test_sources_refuse_non_idx_magic(tmp_path):
    (tmp_path / "f").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ConfigError, match="bad magic number"):
        sources.read_idx(tmp_path / "f")


def test_the_agents_test_subset_is_spread_over_the_classes():
    data = load("digits")
    ordered = type(data)(**{**data.__dict__, "test_y": data.test_y.sort().values})  # stored class by class
    subset = ordered.test_subset(100)
    assert len(subset.test_y) == 100 and len(torch.unique(subset.test_y)) == 10
    assert ordered.test_subset(10_000) is ordered
