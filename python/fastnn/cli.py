"""The ``fastnn`` command: ``train``, ``predict``, ``chain`` (also ``python -m fastnn``).

A user error (a missing dataset, a bad file, a bad option) is one line on stderr and exit
status 1 (2 for command-line syntax, from argparse), never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
from pathlib import Path

import numpy as np

__all__ = ["main"]

DATASETS = ("fashion-mnist", "mnist")


def _sources(*sets) -> str:
    """Where the datasets were read: "folder/{a, b, c, d}" when they share a folder."""
    sources = [str(getattr(d, "source", None) or "?") for d in sets]
    parts = [src.rsplit("/{", 1) for src in sources]
    if all(len(p) == 2 and p[1].endswith("}") for p in parts) and len({p[0] for p in parts}) == 1:
        return f"{parts[0][0]}/{{{', '.join(p[1][:-1] for p in parts)}}}"
    return " and ".join(sources)


def _batch_size(text: str):
    if text == "full":
        return "full"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'full', got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'full', got {text!r}")
    return value


def _int_at_least(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            wanted = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"expected an integer {wanted}, got {text!r}")
        return value

    return parse


def _check_memory(hidden: int, inputs: int, classes: int) -> None:
    """Refuses a --hidden whose weights would not fit in this machine's memory while training
    (≈ 32 bytes a weight: the float64 draw of the initial weights, the weights, their
    gradients, the fused step's packed and partial copies), instead of being killed by the
    system's out-of-memory killer after minutes."""
    weights = (inputs + 1) * hidden + (hidden + 1) * classes
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not known here: let the allocation tell
        return
    if 32 * weights > 0.8 * memory:
        raise ValueError(
            f"--hidden {hidden}: the model's {weights:,} weights need about "
            f"{32 * weights / 2**30:.1f} GiB while training; this machine has "
            f"{memory / 2**30:.1f} GiB"
        )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _load_dataset(name: str, data_dir):
    from fastnn import data

    loader = data.fashion_mnist if name == "fashion-mnist" else data.mnist
    return loader(data_dir)


def cmd_train(args) -> int:
    import fastnn as fnn
    from fastnn._files import writable_target

    if args.device == "cuda":
        raise RuntimeError(
            "--device cuda: training on the GPU is not supported yet (the CUDA kernels serve "
            "fastnn.ops on CuPy arrays; layers and fit still run on NumPy)"
        )
    if args.threads:
        fnn.set_num_threads(args.threads)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")
    writable_target(out / "model.safetensors")  # a read-only folder: now, not after an epoch
    train, test = _load_dataset(args.dataset, args.data)
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"the {args.dataset} data holds no training or no test images")
    _check_memory(args.hidden, train.x.shape[1], len(train.classes))
    rng = np.random.default_rng(args.seed)
    model = fnn.Sequential(
        fnn.Dense(train.x.shape[1], args.hidden, fnn.relu, rng=rng),
        fnn.Dense(args.hidden, len(train.classes), rng=rng),
    )
    if args.optimizer == "sgd":
        opt = fnn.optim.SGD(model.parameters(), lr=0.1 if args.lr is None else args.lr)
    else:
        opt = fnn.optim.Adam(model.parameters(), lr=1e-3 if args.lr is None else args.lr)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"{train.name}: {len(train):,} training and {len(test):,} test images "
        f"(from {_sources(train, test)})"
    )
    print(model)
    print(
        f"{args.optimizer.upper()} lr {opt.lr}, batch size {args.batch_size}, "
        f"{args.epochs} epochs, {fnn.get_num_threads()} threads, seed {args.seed}"
    )
    metadata = {"dataset": args.dataset, "classes": json.dumps(list(train.classes))}
    checkpoint = out / "model.safetensors"
    # An earlier run's files stay until this run replaces the model (after its first epoch);
    # from then on, stopped or not, the folder holds this run's model, history, curves and
    # predictions of the same epochs.
    history = fnn.train.History()
    previous = _sigterm_as_interrupt()  # for the whole run, the last files' writing included
    try:
        try:
            fnn.fit(
                model,
                train,
                fnn.losses.softmax_cross_entropy,
                opt,
                epochs=args.epochs,
                batch_size=args.batch_size,
                validation=test,
                rng=rng,
                verbose=1,
                checkpoint=checkpoint,
                metadata=metadata,
                history=history,
            )
        except BaseException:
            if history:  # the checkpoint holds this run's last finished epoch
                _save_run(fnn.io.load(checkpoint), history, test, out)
            raise
        if args.epochs == 0:  # nothing trained: the model as initialised, and where it starts
            fnn.io.save(model, checkpoint, metadata=metadata)
            start = fnn.train.evaluate(model, test)
            print(
                f"untrained test accuracy {100 * start['accuracy']:.2f}%, loss {start['loss']:.4f}"
            )
        else:
            print(
                f"final test accuracy {100 * history['val_accuracy'][-1]:.2f}%, "
                f"mean epoch time {np.mean(history['seconds']):.3f} s"
            )
        saved = [checkpoint, *_save_run(model, history, test, out)]
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(f"saved {', '.join(map(str, saved))}")
    return 0


def _sigterm_as_interrupt():
    """While training, SIGTERM (a `kill`, a job scheduler's stop) is handled as Ctrl-C is, so
    the folder is left consistent; returns the handler to restore (None off the main
    thread, where signals cannot be handled)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:
        return None


def _save_run(model, history, test, out: Path) -> list[Path]:
    """The history as JSON, the first 32 test images with the model's predictions, and the
    learning curves (when an epoch finished; a stale curves.png is removed otherwise), each
    written atomically into out; returns the paths written. If one cannot be written (a full
    disk, an interrupt), those not yet written are removed too: an earlier run's file never
    stays beside this run's model."""
    import fastnn as fnn
    from fastnn import viz
    from fastnn._files import atomic_write_bytes

    paths = [out / "history.json", out / "predictions.png", out / "curves.png"]
    done = 0
    try:
        atomic_write_bytes(paths[0], json.dumps(dict(history), indent=1).encode())
        done = 1
        with fnn.no_grad():
            predicted = model(test.x[:32]).argmax(axis=1)
        viz.prediction_grid(paths[1], test.x[:32], predicted, test.y[:32], test.classes)
        done = 2
        if history:
            viz.plot_history(history, paths[2])
            done = 3
    except BaseException:
        for path in paths[done:]:
            with contextlib.suppress(OSError):  # best effort: the error that stopped us wins
                path.unlink(missing_ok=True)
        raise
    if not history:
        paths[2].unlink(missing_ok=True)
    return paths[:done]


def cmd_predict(args) -> int:
    import fastnn as fnn
    from fastnn import viz

    model = fnn.io.load(args.model)
    meta = fnn.io.load_metadata(args.model)
    dataset = meta.get("dataset", "fashion-mnist")
    if dataset not in DATASETS:
        raise ValueError(f"{args.model}: unknown dataset {dataset!r} in its metadata")
    images = dict(zip(("train", "test"), _load_dataset(dataset, args.data), strict=True))[
        args.split
    ]
    if not 0 <= args.index < len(images):
        raise ValueError(
            f"--index must be in [0, {len(images)}) for the {dataset} {args.split} set, got "
            f"{args.index}"
        )
    img, label = images.x[args.index], int(images.y[args.index])
    names = images.classes
    with fnn.no_grad():
        scores = model(img[None])
    if scores.ndim != 2 or scores.shape[1] != len(names):
        raise ValueError(
            f"{args.model}: the model gives outputs of shape {tuple(scores.shape[1:])} per "
            f"image, but the {dataset} {args.split} set has {len(names)} classes"
        )
    predicted = int(scores.argmax(axis=1)[0])
    viz.save_image(args.out, img)
    print(
        f"{args.split} image {args.index}: predicted {predicted} ({names[predicted]}), "
        f"true {label} ({names[label]}); saved {args.out}"
    )
    return 0


def cmd_chain(args) -> int:
    from fastnn import viz
    from fastnn.examples import chain

    start, target = np.zeros(2), np.array([3.0, 3.0])
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging descent is named below
        chains, losses = chain.run(
            steps=args.steps, step_size=args.step_size, rng=args.seed, start=start, target=target
        )
    if not np.isfinite(chains).all():
        first = int(np.argmin(np.isfinite(chains).all(axis=1)))
        raise ValueError(
            f"--step-size {args.step_size:g}: the descent diverged (the angles are not finite "
            f"after step {first}); try a smaller step size"
        )
    frames = viz.chain_gif(args.out, chains, start, target)
    print(
        f"loss {losses[0]:.4f} -> {losses[-1]:.4f} after {args.steps} steps; "
        f"final distance to (3, 3): {np.sqrt(losses[-1]):.4f}; {frames} frames drawn into "
        f"{args.out}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastnn", description="fastnn: neural networks from first principles, at speed."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train the article's MLP (784 -> 32 relu -> 10)",
        description="Train the article's MLP with softmax cross-entropy and "
        "save the model, the loss/accuracy curves and a grid of predictions.",
    )
    p.add_argument(
        "--dataset", choices=DATASETS, default="fashion-mnist", help="which images (fashion-mnist)"
    )
    p.add_argument("--data", metavar="DIR", help="folder with the IDX files (default: search)")
    p.add_argument(
        "--epochs",
        type=_int_at_least(0),
        default=5,
        help="passes over the data (5; 0 saves the untrained model)",
    )
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=128,
        metavar="B",
        help="minibatch size, or 'full' for all 60,000 images per step",
    )
    p.add_argument(
        "--lr", type=_positive_float, default=None, help="learning rate (sgd 0.1, adam 1e-3)"
    )
    p.add_argument(
        "--optimizer", choices=("sgd", "adam"), default="sgd", help="sgd (the default) or adam"
    )
    p.add_argument("--hidden", type=_int_at_least(1), default=32, help="hidden units (32)")
    p.add_argument(
        "--seed", type=_int_at_least(0), default=0, help="initial weights and batch order (0)"
    )
    p.add_argument(
        "--threads",
        type=_int_at_least(1, 1024),
        default=None,
        help="CPU threads (default: all cores)",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="(cpu); cuda: the kernels run on CuPy arrays, but training on a GPU is not "
        "supported yet and says so",
    )
    p.add_argument(
        "--out",
        default="run",
        metavar="DIR",
        help="output folder (run/); the files of an earlier run there are replaced",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "predict",
        help="the article's test(n): classify one image",
        description="Classify image N (0-based) of the test set (or, as the article's "
        "test(n), of the training set) with a saved model; print the predicted class and "
        "save the image.",
    )
    p.add_argument("model", help="a model file saved by 'fastnn train'")
    p.add_argument(
        "--index", type=_int_at_least(0), required=True, metavar="N", help="image, from 0"
    )
    p.add_argument(
        "--split",
        choices=["test", "train"],
        default="test",
        help="which set the image comes from (test; the article's test(n) reads train)",
    )
    p.add_argument("--data", metavar="DIR", help="folder with the IDX files (default: search)")
    p.add_argument("--out", default="image.png", help="image file (.png, .jpg, ...; image.png)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "chain",
        help="the article's chain-of-links gradient-descent demo",
        description="Gradient descent on the angles of 4 links to reach (3, 3); "
        "saves an animated GIF.",
    )
    p.add_argument("--out", default="chain.gif", help="animation file (.gif, or .png for APNG)")
    p.add_argument("--steps", type=_int_at_least(0), default=100, help="descent steps (100)")
    p.add_argument("--step-size", type=_positive_float, default=0.01, help="learning rate (0.01)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="initial angles (0)")
    p.set_defaults(func=cmd_chain)

    # Listed for --help; main() hands "fastnn bench ..." to fastnn.bench.main.
    sub.add_parser(
        "bench", help="time one epoch of the MLP: fastnn vs NumPy vs PyTorch (bench --help)"
    )
    return parser


def main(argv=None) -> int:
    """Entry point of the ``fastnn`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own parser (argparse cannot pass "--x" options through)
        from fastnn import bench

        return bench.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, OSError, RuntimeError, FloatingPointError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"fastnn {args.command}: error: {message}", file=sys.stderr)
        return 1
    except MemoryError as err:  # NumPy's message names the size and shape it could not get
        print(f"fastnn {args.command}: error: out of memory ({err})", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        print(f"fastnn {args.command}: {str(err) or 'interrupted'}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): stop quietly
        sys.stdout = open(os.devnull, "w")
        return 141


if __name__ == "__main__":
    sys.exit(main())
