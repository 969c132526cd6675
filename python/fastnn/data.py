"""Datasets and minibatches: the IDX reader, MNIST and Fashion-MNIST, ``batches``, ``one_hot``.

IDX is the file format of MNIST and Fashion-MNIST: a big-endian header (two zero bytes, a type
byte, the number of dimensions, then one uint32 per dimension) followed by the data in C order,
often gzip-compressed. ``load_idx`` checks every part of it against the file and raises a
ValueError naming the file, so a truncated download or a wrong file never becomes a silently
short dataset. ``fashion_mnist()`` and ``mnist()`` find the files where other tools put them
(or download and verify them) and return ``(train, test)`` :class:`Dataset` objects.

This module holds no kernels: it is plain NumPy (CuPy arrays pass through ``batches`` and
``one_hot`` on their own module).

References
----------
.. [1] Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, "Gradient-based learning applied to
   document recognition", Proc. IEEE 86(11), 1998 (MNIST; the IDX format is described at
   http://yann.lecun.com/exdb/mnist/).
.. [2] H. Xiao, K. Rasul and R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
   Machine Learning Algorithms", arXiv:1708.07747, 2017.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import numbers
import operator
import os
import struct
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastnn._files import atomic_open

__all__ = [
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "Dataset",
    "batches",
    "fashion_mnist",
    "load_idx",
    "mnist",
    "one_hot",
    "save_idx",
]

_log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Fashion-MNIST's class names, indexed by label (Xiao et al. 2017)."""

MNIST_CLASSES = tuple(str(d) for d in range(10))
"""MNIST's class names: the digits ``"0"`` .. ``"9"``."""

# ----------------------------------------------------------------------------------- IDX files

# IDX type byte -> big-endian NumPy dtype (LeCun's format description).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # bytes per read: a corrupt header can never make us allocate its claim up front


class _Corrupt(Exception):
    """Internal: the bytes of an IDX file do not match its header."""


def _read_exact(f, n: int) -> bytearray:
    """Read up to ``n`` bytes in chunks (fewer only at end of file), into a writable buffer."""
    buf = bytearray()
    while len(buf) < n:
        part = f.read(min(_CHUNK, n - len(buf)))
        if not part:
            break
        buf += part
    return buf


def _read_idx(f) -> np.ndarray:
    head = _read_exact(f, 4)
    if len(head) < 4:
        raise _Corrupt(f"file too short for an IDX header ({len(head)} bytes, need 4)")
    zero, code, ndim = struct.unpack(">HBB", head)
    if zero != 0 or code not in _IDX_DTYPES:
        raise _Corrupt(
            f"not an IDX file: magic number 0x{head.hex().upper()} (expected 0x00000801 for "
            "labels, 0x00000803 for images, or generally 0x0000TTDD with type TT in "
            f"{{{', '.join(f'{c:02X}' for c in _IDX_DTYPES)}}} and DD dimensions)"
        )
    raw_dims = _read_exact(f, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise _Corrupt(
            f"truncated header: magic 0x{head.hex().upper()} announces {ndim} dimension(s) "
            f"({4 * ndim} bytes of sizes) but only {len(raw_dims)} bytes follow"
        )
    dims = struct.unpack(f">{ndim}I", raw_dims)
    dtype = _IDX_DTYPES[code]
    count = 1
    for d in dims:
        count *= d
    need = count * dtype.itemsize
    payload = _read_exact(f, need + 1)  # one byte more tells trailing data from an exact fit
    if len(payload) < need:
        raise _Corrupt(
            f"header says shape {dims}: {count} items of {dtype.itemsize} byte(s) = {need} "
            f"bytes of data, but only {len(payload)} bytes follow (truncated file?)"
        )
    if len(payload) > need:
        raise _Corrupt(
            f"header says shape {dims}: {need} bytes of data, but more bytes follow "
            "(wrong or corrupt file?)"
        )
    arr = np.frombuffer(payload, dtype=dtype).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def load_idx(path, *, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a NumPy array, validating it.

    The header is ``00 00 TT DD`` (type byte ``TT``, ``DD`` dimensions) followed by ``DD``
    big-endian uint32 sizes; the data follows in C order. MNIST's labels are ``0x00000801``
    (uint8, 1-D) and its images ``0x00000803`` (uint8, 3-D: N, rows, cols). A gzip stream is
    recognised by its first two bytes ``1F 8B``, whatever the file's suffix.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    ndim : int, optional
        The number of dimensions the caller expects (1 for labels, 3 for images); a file with
        another number raises ValueError.

    Returns
    -------
    numpy.ndarray
        A writable, C-contiguous array of the header's shape, in native byte order: uint8 for
        type 0x08, int8 (0x09), int16 (0x0B), int32 (0x0C), float32 (0x0D), float64 (0x0E).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not IDX (wrong magic number), its header is cut short, its data is
        shorter or longer than the header's sizes say, its gzip stream is truncated or corrupt,
        or ``ndim`` does not match. The message names the file.

    References
    ----------
    .. [1] Y. LeCun et al., "Gradient-based learning applied to document recognition",
       Proc. IEEE 86(11), 1998; format at http://yann.lecun.com/exdb/mnist/.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> p = os.path.join(tempfile.mkdtemp(), "labels.gz")
    >>> save_idx(p, np.array([3, 1, 4, 1, 5], dtype=np.uint8))
    >>> load_idx(p)
    array([3, 1, 4, 1, 5], dtype=uint8)
    """
    path = os.fspath(path)
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        try:
            if compressed:
                with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                    arr = _read_idx(f)
            else:
                arr = _read_idx(raw)
        except _Corrupt as exc:
            kind = "gzip-compressed IDX file" if compressed else "IDX file"
            raise ValueError(f"{kind} {path!r}: {exc}") from None
        except (EOFError, OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise ValueError(
                f"gzip-compressed IDX file {path!r} is truncated or corrupt ({exc}); "
                "delete it and fetch it again"
            ) from exc
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(
            f"IDX file {path!r}: expected {ndim} dimension(s), the header gives {arr.ndim} "
            f"(shape {arr.shape})"
        )
    return arr


def save_idx(path, array, *, compress: bool | None = None) -> None:
    """Write an array as an IDX file, atomically (a temporary file beside it, then a rename).

    Parameters
    ----------
    path : str or os.PathLike
        Target file; missing folders are created. An existing file is replaced only once the new one
        is complete, so a crash never leaves a half-written file under this name.
    array : array_like
        At least 1-D, every dimension below 2**32; dtype uint8, int8, int16, int32, float32
        or float64 (stored big-endian, as the format requires).
    compress : bool, optional
        gzip the file; by default, when ``path`` ends with ``.gz``.

    Raises
    ------
    TypeError
        If the dtype has no IDX type code.
    ValueError
        If the array is 0-D, has more than 255 dimensions or a dimension of 2**32 or more.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> p = os.path.join(tempfile.mkdtemp(), "images-idx3-ubyte")
    >>> save_idx(p, np.zeros((2, 28, 28), dtype=np.uint8))
    >>> load_idx(p).shape
    (2, 28, 28)
    """
    arr = np.asarray(array)
    code = _IDX_CODES.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(
            f"save_idx: dtype {arr.dtype} has no IDX type code "
            "(uint8, int8, int16, int32, float32, float64)"
        )
    if not 1 <= arr.ndim <= 255 or any(d >= 2**32 for d in arr.shape):
        raise ValueError(f"save_idx: cannot store shape {arr.shape} in IDX (1..255 dims < 2**32)")
    path = Path(path)
    if compress is None:
        compress = path.suffix == ".gz"
    header = struct.pack(f">HBB{arr.ndim}I", 0, code, arr.ndim, *arr.shape)
    data = np.ascontiguousarray(arr, dtype=_IDX_DTYPES[code]).tobytes()
    with atomic_open(path) as f:
        if compress:
            # filename= and mtime=0: the gzip header names the target, not the temp file,
            # and the same array always gives the same bytes.
            with gzip.GzipFile(filename=path.name, mode="wb", fileobj=f, mtime=0) as gz:
                gz.write(header)
                gz.write(data)
        else:
            f.write(header)
            f.write(data)


# ------------------------------------------------------------------------------------- Dataset


class Dataset:
    """Images and labels of one split of a labelled dataset.

    Parameters
    ----------
    x : array_like, shape (N, ...)
        Inputs, for the image datasets here float32 in [0, 1]: (N, 784) or (N, 1, 28, 28).
    y : array_like, shape (N,)
        Integer class labels (uint8 for the IDX datasets).
    classes : sequence of str, optional
        Class names indexed by label; by default ``"0"`` .. ``str(max(y))``.
    name : str
        Dataset name, such as ``"fashion-mnist"`` (what a saved model records).
    split : str
        ``"train"`` or ``"test"`` (free text).
    source : str, optional
        Where the data was read from.

    Attributes
    ----------
    x, y, classes, name, split, source
        As above; ``classes`` is a tuple.

    Raises
    ------
    ValueError
        If ``x`` and ``y`` have different lengths or ``y`` is not 1-D.
    TypeError
        If ``y`` is not an integer array, or ``classes`` is not a sequence of names (an int
        such as ``classes=10`` included).

    Examples
    --------
    >>> import numpy as np
    >>> d = Dataset(np.zeros((3, 4), np.float32), np.array([0, 2, 1], np.uint8), name="toy")
    >>> len(d), d.classes
    (3, ('0', '1', '2'))
    >>> xb, yb = d[1:]
    >>> xb.shape, yb.tolist()
    ((2, 4), [2, 1])
    """

    def __init__(self, x, y, classes=None, *, name: str = "", split: str = "", source=None):
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        if not hasattr(y, "shape"):
            y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(f"Dataset: y must be 1-D (N,), got shape {tuple(y.shape)}")
        if np.dtype(y.dtype).kind not in "iu":
            raise TypeError(f"Dataset: labels y must be integers, got dtype {y.dtype}")
        if len(x) != len(y):
            raise ValueError(f"Dataset: x has {len(x)} samples but y has {len(y)}")
        if classes is None:
            classes = [str(i) for i in range(int(y.max()) + 1 if len(y) else 0)]
        elif isinstance(classes, str) or not hasattr(classes, "__len__"):
            raise TypeError(
                f"Dataset: classes must be a sequence of class names, got {classes!r} "
                f"(for numbered classes: classes=[str(i) for i in range(n)])"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise ValueError(
                f"Dataset: labels span {int(y.min())}..{int(y.max())} but there are "
                f"{len(classes)} classes"
            )
        self.x = x
        self.y = y
        self.classes = tuple(classes)
        self.name = name
        self.split = split
        self.source = source

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index):
        """``(x[index], y[index])`` for an integer, slice or index array."""
        return self.x[index], self.y[index]

    def __repr__(self) -> str:
        label = "/".join(s for s in (self.name, self.split) if s) or "unnamed"
        return (
            f"Dataset({label!r}, n={len(self)}, x={self.x.dtype}{tuple(self.x.shape)}, "
            f"y={self.y.dtype}{tuple(self.y.shape)}, classes={len(self.classes)})"
        )


def _to_dataset(images, labels, spec: _Spec, split: str, flatten: bool, source: str) -> Dataset:
    """uint8 images (N, rows, cols) and labels (N,) -> Dataset with float32 x in [0, 1]."""
    what = f"{spec.title} {split} set in {source}"
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{what}: images must be uint8 (N, rows, cols), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{what}: labels must be uint8 (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(
            f"{what}: {len(images)} images but {len(labels)} labels (mismatched or truncated files)"
        )
    if len(labels) and int(labels.max()) >= len(spec.classes):
        raise ValueError(
            f"{what}: label {int(labels.max())} is out of range for {len(spec.classes)} classes"
        )
    n, rows, cols = images.shape
    if (rows, cols) != (28, 28):
        raise ValueError(f"{what}: images must be 28×28, the IDX header says {rows}×{cols}")
    x = images.astype(np.float32).reshape((n, rows * cols) if flatten else (n, 1, rows, cols))
    np.divide(x, np.float32(255), out=x)  # exact at 0 and 255: x stays in [0, 1]
    return Dataset(x, labels, spec.classes, name=spec.name, split=split, source=source)


# ------------------------------------------------------------------------- finding the files

_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

# SHA-256 of the upstream .gz files (keys: the file name without .gz).
#
# Fashion-MNIST: Zalando publishes MD5s only (README of zalandoresearch/fashion-mnist:
# train-images 8d4fb7e6..., train-labels 25c81989..., t10k-images bef4ecab..., t10k-labels
# bb300cfd...). The SHA-256 below are the ones other public downloaders use (Flux.jl's former
# loader among several that list the same values), and they were checked here: the
# Debian package dataset-fashion-mnist ships the same deflate streams under a rewritten gzip
# header (no file name, a 2020 mtime; so the Debian .gz files hash differently), and putting
# back the upstream header (FNAME = the file's name, mtime 2017-08-31 10:50:06 UTC for the
# train files and 10:50:27 for the t10k files, XFL 0, OS 3) reproduces both Zalando's MD5 and
# the SHA-256 below, for each of the four files.
#
# MNIST: the SHA-256 that several independent public downloaders list for the files on the
# mirrors below (LeCun's original files; torchvision checks the same files by MD5: f68b3c2d...,
# d53e105e..., 9fb629c4..., ec29112d...). MNIST cannot be reached from the development machines
# and no local copy exists, so these four could not be recomputed here.
_FASHION_SHA256 = {
    "train-images-idx3-ubyte": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}


@dataclass(frozen=True)
class _Spec:
    """What tells MNIST and Fashion-MNIST apart here."""

    name: str  # also the cache subfolder and what a saved model records
    title: str
    classes: tuple[str, ...]
    subdirs: tuple[str, ...]  # subfolders of --data / $FASTNN_DATA that may hold the files
    torch_dir: str  # torchvision's <root>/<torch_dir>/raw
    keras: str  # under ~/.keras/datasets: a folder of .gz files, or an .npz archive
    debian: Path | None
    mirrors: tuple[str, ...]
    sha256: Mapping[str, str]
    # The first ten training labels of the published files: the two datasets' files have the
    # same names, so a folder of one found while looking for the other is told by these.
    first_labels: tuple[int, ...]


_FASHION = _Spec(
    name="fashion-mnist",
    title="Fashion-MNIST",
    classes=FASHION_MNIST_CLASSES,
    subdirs=("fashion-mnist", "fashion_mnist"),
    torch_dir="FashionMNIST",
    keras="fashion-mnist",
    debian=Path("/usr/share/datasets/fashion-mnist"),
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # S3 website: http only
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ),
    sha256=_FASHION_SHA256,
    first_labels=(9, 0, 0, 3, 0, 2, 7, 2, 5, 5),
)
_MNIST = _Spec(
    name="mnist",
    title="MNIST",
    classes=MNIST_CLASSES,
    subdirs=("mnist",),
    torch_dir="MNIST",
    keras="mnist.npz",
    debian=None,
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    sha256=_MNIST_SHA256,
    first_labels=(5, 0, 4, 1, 9, 2, 1, 3, 1, 4),
)


def _idx_files(folder: Path) -> tuple[dict[tuple[str, str], Path], list[str]]:
    """The IDX files present in ``folder`` (raw preferred over .gz) and the names missing."""
    found, missing = {}, []
    for key, stem in _FILES.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            missing.append(f"{stem}[.gz]")
    return found, missing


def _load_idx_folder(files, spec: _Spec, flatten: bool, folder: Path):
    out = []
    for split in ("train", "test"):
        images = load_idx(files[split, "images"], ndim=3)
        labels = load_idx(files[split, "labels"], ndim=1)
        source = f"{folder}/{{{files[split, 'images'].name}, {files[split, 'labels'].name}}}"
        out.append(_to_dataset(images, labels, spec, split, flatten, source))
    return tuple(out)


def _load_npz(path: Path, spec: _Spec, flatten: bool):
    """A Keras-style ``.npz`` archive holding x_train, y_train, x_test, y_test (uint8)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as exc:
        raise ValueError(f"{path}: not a Keras-style dataset archive (no array {exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path}: unreadable .npz archive ({exc})") from exc
    except (ValueError, AttributeError, TypeError) as exc:  # a lone .npy, pickles, damage
        with open(path, "rb") as f:
            zipped = f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
        why = (
            "another kind of file: not a zip archive"
            if not zipped
            else "it holds pickled Python objects, which fastnn does not load"
            if "pickle" in str(exc)
            else f"a damaged member: {exc}"
        )
        raise ValueError(f"{path}: not an .npz archive of plain arrays ({why})") from None
    odd = [k for k, a in arrays.items() if not isinstance(a, np.ndarray)]
    if odd:  # a zip member that is not an .npy file comes back as bytes
        raise ValueError(f"{path}: not an .npz archive of plain arrays ({odd[0]} is not .npy)")
    return tuple(
        _to_dataset(arrays[f"x_{s}"], arrays[f"y_{s}"], spec, s, flatten, str(path))
        for s in ("train", "test")
    )


def _candidates(spec: _Spec, root: Path, label: str) -> list[tuple[Path, str]]:
    """A user's folder: the files directly in it, in a dataset subfolder, or torchvision-style."""
    subs = dict.fromkeys((*spec.subdirs, f"{spec.torch_dir}/raw", spec.keras))
    return [(root, label)] + [(root / sub, label) for sub in subs]


def _search_list(spec: _Spec, path) -> list[tuple[Path, str]]:
    """Places to look, in order (folders, or .npz files)."""
    if path is not None:
        return _candidates(spec, Path(path).expanduser(), "path given")
    home = Path.home()
    places = []
    if env := os.environ.get("FASTNN_DATA"):
        places += _candidates(spec, Path(env).expanduser(), "$FASTNN_DATA")
    if spec.debian is not None:
        places.append((spec.debian, f"Debian package dataset-{spec.name}"))
    keras_home = Path(os.environ.get("KERAS_HOME") or home / ".keras")
    places.append((keras_home / "datasets" / spec.keras, "Keras"))
    for root in (home / ".cache", home / ".cache" / "torchvision", Path.cwd() / "data"):
        places.append((root / spec.torch_dir / "raw", "torchvision"))
    places.append((home / ".cache" / "fastnn" / spec.name, "fastnn download cache"))
    return places


def _download_dir(spec: _Spec, path) -> Path:
    if path is not None:
        return Path(path).expanduser()
    if env := os.environ.get("FASTNN_DATA"):
        return Path(env).expanduser() / spec.name
    return Path.home() / ".cache" / "fastnn" / spec.name


def _load(spec: _Spec, path, flatten, download, url, sha256, timeout):
    looked = [] if path is not None or os.environ.get("FASTNN_DATA") else ["$FASTNN_DATA: not set"]
    other = _MNIST if spec is _FASHION else _FASHION
    for place, label in _search_list(spec, path):
        if place.suffix == ".npz" and not place.is_file():
            looked.append(f"{place} ({label}): no such file")
            continue
        files, missing = ({}, []) if place.suffix == ".npz" else _idx_files(place)
        if not missing:
            train, test = (
                _load_npz(place, spec, flatten)
                if place.suffix == ".npz"
                else _load_idx_folder(files, spec, flatten, place)
            )
            if tuple(train.y[:10].tolist()) == other.first_labels:  # the same file names
                looked.append(f"{place} ({label}): holds {other.title}, not {spec.title}")
                continue
            return train, test
        if not place.is_dir():
            looked.append(f"{place} ({label}): no such folder")
        elif files:
            looked.append(f"{place} ({label}): incomplete, missing {', '.join(missing)}")
        else:
            looked.append(f"{place} ({label}): no IDX files")
    if download:
        return _download_and_load(spec, _download_dir(spec, path), flatten, url, sha256, timeout)
    raise FileNotFoundError(_not_found_message(spec, looked, path is not None))


def _not_found_message(spec: _Spec, looked: list[str], explicit: bool) -> str:
    how = []
    if spec.debian is not None:
        how.append(f"apt-get install dataset-{spec.name}   (Debian/Ubuntu; installs {spec.debian})")
    fn = "fashion_mnist" if spec is _FASHION else "mnist"
    option = "" if spec is _FASHION else "--dataset mnist "
    how.append(
        "put the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a folder DIR and pass it: "
        f"`fastnn train {option}--data DIR`, fastnn.data.{fn}(DIR), or FASTNN_DATA=DIR"
    )
    how.append(
        f"fastnn.data.{fn}(download=True) fetches them from {spec.mirrors[0]} (SHA-256 verified)"
    )
    where = " in the folder given" if explicit else ""
    return (
        f"{spec.title} not found{where}. Looked in:\n  - "
        + "\n  - ".join(looked)
        + "\nTo get it:\n  - "
        + "\n  - ".join(how)
    )


# ----------------------------------------------------------------------------------- download

_MAX_DOWNLOAD = 256 << 20  # bytes; the largest file (Fashion-MNIST train images) is 26 MB


def _fetch(file_url: str, target: Path, digest: str, timeout: float) -> None:
    """Stream ``file_url`` to a temp file beside ``target``; rename it only if its SHA-256 fits."""
    with atomic_open(target) as f:
        h, size = hashlib.sha256(), 0
        with urllib.request.urlopen(file_url, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                size += len(chunk)
                if size > _MAX_DOWNLOAD:
                    raise ValueError(f"{file_url}: larger than {_MAX_DOWNLOAD} bytes, refused")
                h.update(chunk)
                f.write(chunk)
        if h.hexdigest() != digest.lower():
            raise ValueError(
                f"{file_url}: SHA-256 mismatch (got {h.hexdigest()}, expected {digest}); "
                "the file was discarded"
            )


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _download_and_load(spec: _Spec, folder: Path, flatten, url, sha256, timeout):
    digests = dict(spec.sha256)
    for name, digest in (sha256 or {}).items():
        stem = name.removesuffix(".gz")
        if stem not in digests:
            raise ValueError(
                f"sha256: unknown file name {name!r}; the files are "
                + ", ".join(f"{s}.gz" for s in digests)
            )
        digests[stem] = digest
    bases = [url] if url else list(spec.mirrors)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, digest in digests.items():
        name = f"{stem}.gz"
        target = folder / name
        if target.is_file() and _sha256_of(target) == digest.lower():
            continue  # complete and verified by an earlier call
        errors: list[Exception] = []
        for base in bases:
            file_url = base.rstrip("/") + "/" + name
            _log.info("downloading %s to %s", file_url, target)
            try:
                _fetch(file_url, target, digest, timeout)
                break
            except ValueError as exc:
                errors.append(exc)
            except (OSError, http.client.HTTPException) as exc:  # URLError, HTTPError, timeout
                errors.append(OSError(f"{file_url}: {exc!r}"))
        else:
            detail = "\n  - ".join(str(e) for e in errors)
            kind = ValueError if any(isinstance(e, ValueError) for e in errors) else OSError
            raise kind(f"could not download {spec.title} file {name}:\n  - {detail}")
    files, _ = _idx_files(folder)
    return _load_idx_folder(files, spec, flatten, folder)


# ------------------------------------------------------------------------------------- loaders


def fashion_mnist(path=None, *, flatten=True, download=False, url=None, sha256=None, timeout=60):
    """Load Fashion-MNIST, Zalando's article images: ``(train, test)`` :class:`Dataset` objects.

    train holds 60,000 images, test 10,000, each 28 × 28 grey levels; ``x`` is float32 in
    [0, 1] (pixel / 255), ``y`` uint8 in 0..9, and ``classes`` names the labels: T-shirt/top,
    Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot.

    The first of these places that holds all four files wins:

    1. ``path``, if given (and then only it): a folder holding the IDX files directly, or in
       a ``fashion-mnist`` / ``fashion_mnist`` subfolder, or torchvision-style in
       ``FashionMNIST/raw``; or a Keras-style ``.npz`` file.
    2. ``$FASTNN_DATA``, searched the same way.
    3. The Debian package ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``),
       which installs ``/usr/share/datasets/fashion-mnist``.
    4. Keras's cache: ``datasets/fashion-mnist`` under ``$KERAS_HOME`` or ``~/.keras``.
    5. torchvision's ``FashionMNIST/raw`` under ``~/.cache``, ``~/.cache/torchvision`` or
       ``./data``.
    6. fastnn's download cache, ``~/.cache/fastnn/fashion-mnist``.

    The files have the standard names ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each raw or gzipped (``.gz``).

    Parameters
    ----------
    path : str or os.PathLike, optional
        Folder (or ``.npz`` file) to load from: the command line's ``--data DIR``.
    flatten : bool
        If True, ``x`` has shape (N, 784) (row-major pixels); if False, (N, 1, 28, 28) (NCHW).
    download : bool
        If the dataset is found nowhere, fetch the four ``.gz`` files from ``url`` or the known
        mirrors into ``path``, else ``$FASTNN_DATA/fashion-mnist``, else
        ``~/.cache/fastnn/fashion-mnist``. Each file is checked against its SHA-256 before it
        is renamed into place; files already there and intact are not fetched again.
    url : str, optional
        Base URL to download from instead of the mirrors (file names are appended to it).
    sha256 : dict of str to str, optional
        File name -> hex SHA-256, overriding the built-in table of the upstream files (for a
        mirror that serves, say, re-compressed copies).
    timeout : float
        Seconds to wait for each network operation.

    Returns
    -------
    train, test : Dataset
        ``x`` float32 (N, 784) or (N, 1, 28, 28) in [0, 1]; ``y`` uint8 (N,); N = 60,000 and
        10,000.

    Raises
    ------
    FileNotFoundError
        If no place holds the dataset and ``download`` is False; the message lists every place
        searched and how to get the data.
    ValueError
        If a file found is corrupt, truncated or mismatched (image and label counts differ),
        or a downloaded file fails its SHA-256 (it is deleted).
    OSError
        If no mirror could be reached during a download.

    References
    ----------
    .. [1] H. Xiao, K. Rasul and R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
       Benchmarking Machine Learning Algorithms", arXiv:1708.07747, 2017.
    .. [2] Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, "Gradient-based learning applied to
       document recognition", Proc. IEEE 86(11), 1998 (MNIST, whose format it shares).

    Examples
    --------
    >>> train, test = fashion_mnist()  # doctest: +SKIP
    >>> train  # doctest: +SKIP
    Dataset('fashion-mnist/train', n=60000, x=float32(60000, 784), y=uint8(60000,), classes=10)
    >>> train.classes[train.y[0]]  # doctest: +SKIP
    'Ankle boot'
    """
    return _load(_FASHION, path, flatten, download, url, sha256, timeout)


def mnist(path=None, *, flatten=True, download=False, url=None, sha256=None, timeout=60):
    """Load MNIST, the handwritten digits: ``(train, test)`` :class:`Dataset` objects.

    The same contract as :func:`fashion_mnist` (60,000 + 10,000 images of 28 × 28, ``x``
    float32 in [0, 1], ``y`` uint8 in 0..9), with ``classes`` the digits ``"0"`` .. ``"9"``.
    There is no Debian package; the places searched are: ``path`` (then only it); then
    ``$FASTNN_DATA``, each directly or in an ``mnist`` or ``MNIST/raw`` subfolder or as
    ``mnist.npz``; Keras's ``datasets/mnist.npz`` under ``$KERAS_HOME`` or ``~/.keras``;
    torchvision's ``MNIST/raw`` under ``~/.cache``, ``~/.cache/torchvision`` or ``./data``;
    and fastnn's download cache ``~/.cache/fastnn/mnist``.

    Parameters
    ----------
    path, flatten, download, url, sha256, timeout
        As for :func:`fashion_mnist`; downloads go to ``path``, else ``$FASTNN_DATA/mnist``,
        else ``~/.cache/fastnn/mnist``.

    Returns
    -------
    train, test : Dataset

    Raises
    ------
    FileNotFoundError, ValueError, OSError
        As for :func:`fashion_mnist`.

    References
    ----------
    .. [1] Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, "Gradient-based learning applied to
       document recognition", Proc. IEEE 86(11), 1998.

    Examples
    --------
    >>> train, test = mnist(download=True)  # doctest: +SKIP
    >>> train.x.shape, train.classes[:3]  # doctest: +SKIP
    ((60000, 784), ('0', '1', '2'))
    """
    return _load(_MNIST, path, flatten, download, url, sha256, timeout)


# ------------------------------------------------------------------------ batches and one_hot


def _array_module(a):
    """NumPy, or CuPy for a CuPy array (imported only then: the CPU path never imports it)."""
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def one_hot(labels, classes: int | range, dtype=np.float32):
    """One-hot encode integer class labels.

    ``out[i, k] = 1 if labels[i] == k else 0``.

    Parameters
    ----------
    labels : array_like of int, shape (N,)
        Class indices in ``[0, classes)``; any integer dtype; a NumPy or CuPy array.
    classes : int or range
        Number of classes C (≥ 1), or the labels' values as a range of step 1, as Flux's
        ``onehotbatch(labels, 0:9)``: ``range(10)``, or ``range(1, 11)`` for labels 1..10.
    dtype : dtype
        Output dtype (float32 by default).

    Returns
    -------
    array, shape (N, C)
        On the labels' device (NumPy or CuPy). A labels array of shape S gives S + (C,).

    Raises
    ------
    TypeError
        If ``labels`` are not integers (float labels are an error, never truncated).
    ValueError
        If a label is outside ``[0, classes)`` or ``classes`` < 1.

    Examples
    --------
    >>> one_hot(np.array([0, 2]), 3)
    array([[1., 0., 0.],
           [0., 0., 1.]], dtype=float32)
    """
    xp = _array_module(labels)
    labels = xp.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"one_hot: labels must be integers, got dtype {labels.dtype}")
    first = 0
    if isinstance(classes, range):
        if classes.step != 1:
            raise ValueError(f"one_hot: a range of classes needs step 1, got {classes}")
        first, classes = classes.start, len(classes)
    if isinstance(classes, bool) or not isinstance(classes, numbers.Integral | np.integer):
        raise TypeError(f"one_hot: classes must be an int or a range, got {classes!r}")
    classes = operator.index(classes)
    if classes < 1:
        raise ValueError(f"one_hot: classes must be >= 1, got {classes}")
    flat = labels.reshape(-1)
    if flat.size:
        lo, hi = int(flat.min()), int(flat.max())
        if lo < first or hi >= first + classes:
            bad = lo if lo < first else hi
            raise ValueError(f"one_hot: label {bad} is outside [{first}, {first + classes})")
    if first:
        flat = flat.astype(xp.int64) - first  # in int64: int8 or uint8 labels would wrap
    out = xp.zeros((flat.size, classes), dtype=dtype)
    out[xp.arange(flat.size), flat] = 1
    return out.reshape((*labels.shape, classes))


def batches(x, y, batch_size, shuffle=True, rng=None, drop_last=False) -> Iterator[tuple]:
    """Minibatches ``(xb, yb)`` of one epoch, inputs and labels shuffled together.

    One permutation of ``range(N)`` orders the epoch, and each batch gathers its rows of
    ``x`` and of ``y`` with that same index array (``x[idx]``, ``y[idx]``), so pairs always
    stay together.

    Parameters
    ----------
    x : array, shape (N, ...)
        Inputs; a NumPy or CuPy array (batches come out on the same device).
    y : array, shape (N, ...)
        Targets (labels (N,) or one-hot (N, C)); NumPy or CuPy.
    batch_size : int, "full" or None
        Rows per batch (≥ 1); ``"full"`` or None gives the whole set as one batch.
    shuffle : bool
        Draw a fresh permutation; if False, batches are consecutive slices (views, no copy).
    rng : int, numpy.random.Generator or None
        Seed or generator for the permutation (drawn on the host); None takes a fresh one.
    drop_last : bool
        Drop the last batch if it has fewer than ``batch_size`` rows (kept by default).

    Returns
    -------
    iterator of (xb, yb)
        ``ceil(N / batch_size)`` batches (``floor`` with ``drop_last``); the permutation is
        drawn when the iterator is created, the arguments are checked at the call.

    Raises
    ------
    ValueError
        If ``x`` and ``y`` differ in length (the message names both), or ``batch_size`` < 1.
    TypeError
        If ``batch_size`` is neither an integer, ``"full"`` nor None (a bool is not an
        integer here), or ``x`` or ``y`` is not an array of samples (None, a number).

    Examples
    --------
    >>> x = np.arange(10, dtype=np.float32).reshape(10, 1)
    >>> y = np.arange(10)
    >>> [len(yb) for xb, yb in batches(x, y, 4, rng=0)]
    [4, 4, 2]
    >>> all((xb[:, 0] == yb).all() for xb, yb in batches(x, y, 4, rng=0))
    True
    """
    xp_x, xp_y = _array_module(x), _array_module(y)
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    if not hasattr(y, "shape"):
        y = np.asarray(y)
    for a, name in ((x, "x"), (y, "y")):
        if a.ndim == 0:  # None, a number: len() would fail with "len() of unsized object"
            raise TypeError(
                f"batches: {name} must be an array of samples, shape (N, ...); got {a!r:.40}"
            )
    n, ny = len(x), len(y)
    if n != ny:
        raise ValueError(f"batches: x has {n} samples but y has {ny}; they must be equal")
    if batch_size is None or (isinstance(batch_size, str) and batch_size == "full"):
        size = max(n, 1)
    else:
        try:
            if isinstance(batch_size, bool | np.bool_):  # True is not a batch size of 1
                raise TypeError
            size = operator.index(batch_size)
        except TypeError:
            raise TypeError(
                f'batches: batch_size must be an int, "full" or None, got {batch_size!r}'
            ) from None
        if size < 1:
            raise ValueError(f"batches: batch_size must be >= 1, got {size}")
    stop = n - n % size if drop_last else n
    if not shuffle:
        return ((x[i : i + size], y[i : i + size]) for i in range(0, stop, size))
    perm = np.random.default_rng(rng).permutation(n)
    # The index array goes to each array's device once per epoch, not once per batch.
    idx_x = xp_x.asarray(perm)
    idx_y = idx_x if xp_y is xp_x else xp_y.asarray(perm)
    return ((x[idx_x[i : i + size]], y[idx_y[i : i + size]]) for i in range(0, stop, size))
