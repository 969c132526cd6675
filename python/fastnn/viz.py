"""Pictures: a digit as PNG, a grid of predictions, training curves, the chain as a GIF.

No kernels here: Pillow draws images, matplotlib (Agg, no screen needed) draws plots. Every
file is written atomically.
"""

from __future__ import annotations

import io as _io
import math
from pathlib import Path

import numpy as np

from fastnn._files import atomic_write_bytes

__all__ = ["chain_gif", "plot_history", "prediction_grid", "save_image"]


def _pillow_format(path, *, animated: bool = False) -> str:
    """Pillow's format name for the file's extension (".png" → "PNG")."""
    from PIL import Image

    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    ok = fmt is not None and (not animated or fmt in ("GIF", "PNG", "WEBP"))
    if not ok:
        kinds = ".gif, .png (APNG) or .webp" if animated else ".png, .jpg, .gif, ..."
        raise ValueError(f"{path}: unknown or unsuitable image extension {suffix!r}; use {kinds}")
    return fmt


def _to_uint8(img) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 1:
        side = math.isqrt(a.size)
        if side * side != a.size:
            raise ValueError(f"a flat image needs a square size, got {a.size} pixels")
        a = a.reshape(side, side)
    a = a.reshape(a.shape[-2:]) if a.ndim == 3 and a.shape[0] == 1 else a
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image (or a flat square one), got {a.shape}")
    if a.max(initial=0) <= 1.0:
        a = a * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def save_image(path, img, *, scale: int = 4) -> None:
    """Save a grayscale image (values in [0, 1] or [0, 255]; (28, 28) or flat (784,)) as PNG.

    ``scale`` enlarges each pixel to scale × scale (nearest neighbour) so a 28×28 digit is
    visible. The article's ``test(n)`` saves the test image this way. The file format follows
    the extension (.png, .jpg, ...).

    Raises
    ------
    ValueError
        An image that is not 2-D (or flat and square), or an unknown extension.
    """
    from PIL import Image

    fmt = _pillow_format(path)
    image = Image.fromarray(_to_uint8(img), mode="L")
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buf = _io.BytesIO()
    image.save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue())


def _save_figure(fig, path) -> None:
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in fig.canvas.get_supported_filetypes():
        raise ValueError(f"{path}: matplotlib cannot write {fmt!r} files; use .png, .pdf or .svg")
    buf = _io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_history(history, path) -> None:
    """Plot loss and accuracy per epoch (from ``fit``'s History) into a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    epochs = history["epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, history["loss"], "o-", label="train (mean over the epoch)")
    if "val_loss" in history:
        ax_loss.plot(epochs, history["val_loss"], "o-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy (nats)", title="Loss")
    ax_acc.plot(epochs, [100 * a for a in history["accuracy"]], "o-", label="train")
    if "val_accuracy" in history:
        ax_acc.plot(epochs, [100 * a for a in history["val_accuracy"]], "o-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    _save_figure(fig, path)
    plt.close(fig)


def prediction_grid(path, images, predicted, true, classes, *, columns: int = 8) -> None:
    """A PNG grid of images titled "predicted / true" (red where they differ)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(images)
    rows = max(1, math.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.9))
    for k, ax in enumerate(np.asarray(axes).reshape(-1)):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(_to_uint8(images[k]), cmap="gray", vmin=0, vmax=255)
        ok = predicted[k] == true[k]
        ax.set_title(
            f"{classes[predicted[k]]}\n({classes[true[k]]})",
            fontsize=7,
            color="black" if ok else "red",
        )
    fig.suptitle("predicted (true)", fontsize=9)
    _save_figure(fig, path)
    plt.close(fig)


def chain_gif(
    path, chains, start, target, *, size: int = 320, frame_ms: int = 40, max_frames: int = 500
) -> int:
    """Animate the chain of links: one frame per row of ``chains`` (angles in radians), or
    ``max_frames`` rows evenly spaced (the first and the last included) when there are more:
    every frame is held in memory until the file is written (≈ 0.4 MB each).

    The format follows the extension (.gif; .png writes an animated PNG). Returns the number
    of frames drawn (a GIF writer may merge identical consecutive frames).

    Raises
    ------
    ValueError
        For an extension that cannot hold an animation, or angles that are not finite.
    """
    from PIL import Image, ImageDraw

    fmt = _pillow_format(path, animated=True)
    if not np.all(np.isfinite(chains)):
        raise ValueError("chain_gif: the angles are not all finite")
    start, target = np.asarray(start, float), np.asarray(target, float)
    reach = 4.5
    lo = np.minimum(start, target) - reach
    hi = np.maximum(start, target) + reach
    span = float((hi - lo).max())

    def px(p):
        q = (np.asarray(p) - lo) / span
        return (q[0] * (size - 20) + 10, (1 - q[1]) * (size - 20) + 10)

    chains = np.asarray(chains)
    if len(chains) > max_frames:
        chains = chains[np.linspace(0, len(chains) - 1, max_frames).round().astype(int)]
    frames = []
    for angles in chains:
        img = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(img)
        tx, ty = px(target)
        draw.ellipse((tx - 6, ty - 6, tx + 6, ty + 6), outline="red", width=2)
        points = [start]
        for a in angles:
            points.append(points[-1] + np.array([math.sin(a), math.cos(a)]))
        draw.line([px(p) for p in points], fill="black", width=3)
        for p in points:
            x, y = px(p)
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill="steelblue")
        frames.append(img)
    buf = _io.BytesIO()
    frames[0].save(
        buf, format=fmt, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0
    )
    atomic_write_bytes(path, buf.getvalue())
    return len(frames)
