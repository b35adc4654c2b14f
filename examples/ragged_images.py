"""Odd-sized images in one PyTables file: write them, map over them as a dask bag, pick any of them.

Images of shape (h, w, 3) uint8, every one with its own h and w, are streamed
into one file with ``daskh5.write_ragged`` (the flat layout: one compressed
EArray of all the pixels plus ``/images_start_and_stop`` and ``/images_shape``,
readable by plain PyTables).  Then:

* ``daskh5.read_ragged`` gives a dask bag of the images, each with its true
  shape; a per-image function (mean brightness, orientation, ...) is mapped
  over it, partition by partition, each partition one bulk read;
* a derived ragged collection (thumbnails) is computed as a bag and written
  back with ``write_ragged``;
* ``daskh5.open_ragged(...)[i]`` (and lists, slices, boolean masks) reads any
  images by index, without reading the others.

Run ``python examples/ragged_images.py`` (2 000 images up to 400 x 400,
~300 MB of temporary files), ``--images N`` for another count, or
``python examples/ragged_images.py --small --out /tmp/images`` for a tiny run
that keeps its file.  Every result is checked against numpy.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import dask
import numpy as np

import daskh5

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights of R, G, B


def make_image(i: int, max_side: int, seed: int = 0) -> np.ndarray:
    """Image ``i``: a random size, a random overall brightness, a little noise (reproducible)."""
    rng = np.random.default_rng([seed, i])
    h, w = (int(n) for n in rng.integers(max_side // 8, max_side + 1, size=2))
    level = rng.uniform(30, 220)
    tint = rng.uniform(-20, 20, size=3)
    noise = rng.normal(scale=15, size=(h, w, 3))
    return np.clip(level + tint + noise, 0, 255).astype(np.uint8)


def brightness(im: np.ndarray) -> float:
    """Mean luma of one image: the per-image function the bag maps (any numpy code would do)."""
    return float(im.reshape(-1, 3).mean(axis=0) @ LUMA)


def orientation(im: np.ndarray) -> str:
    h, w = im.shape[:2]
    return "portrait" if h > w else "landscape" if w > h else "square"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="300 small images (a second or two)")
    parser.add_argument("--images", type=int, default=None, help="number of images (default 2000)")
    parser.add_argument(
        "--partition-size", default=None, help="bytes per bag partition (64MiB; 64KiB --small)"
    )
    parser.add_argument(
        "--scheduler",
        default="threads",
        help="dask scheduler for the bag: threads (default here), processes (dask's default for bags)",
    )
    parser.add_argument(
        "--out", default=None, help="directory for the file (default: a temporary one, removed)"
    )
    args = parser.parse_args(argv)
    n = args.images or (300 if args.small else 2000)
    max_side = 64 if args.small else 400
    partition_size = args.partition_size or ("64KiB" if args.small else "64MiB")

    with tempfile.TemporaryDirectory(prefix="daskh5-images-") as tmp:
        folder = args.out or tmp
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "images.h5")

        # -- write: a generator is streamed, a batch at a time; the file is
        # written under a temporary name and renamed when complete.
        t0 = time.perf_counter()
        images = (make_image(i, max_side) for i in range(n))
        daskh5.write_ragged(images, path, "/images", mode="w", progress=not args.small)
        print(
            f"wrote {n} images to {path} ({os.path.getsize(path) / 1e6:.1f} MB) in {time.perf_counter() - t0:.2f} s"
        )

        # -- a dask bag of the images, partitions of consecutive images within
        # the byte budget; the tasks hold paths and offsets, never open files,
        # so they run on threads, processes or a distributed cluster.
        bag = daskh5.read_ragged(path, "/images", partition_size=partition_size)
        print(f"read_ragged: {bag.npartitions} partitions of <= {partition_size}")
        # Bags run on processes unless told otherwise; numpy-heavy per-image
        # functions like these release the GIL, so threads are faster here (no
        # start-up, nothing pickled).  Pure-Python functions: use processes.
        t0 = time.perf_counter()
        light, kinds, pixels = dask.compute(  # one pass over the file for all three results
            bag.map(brightness),
            bag.map(orientation).frequencies(),
            bag.map(lambda im: im.shape[0] * im.shape[1]).sum(),
            scheduler=args.scheduler,
        )
        light = np.array(light)
        print(f"mapped over {len(light)} images in {time.perf_counter() - t0:.2f} s ({args.scheduler})")
        print(f"{pixels:,} pixels; orientations: {dict(sorted(kinds))}")
        top = np.argsort(light)[::-1][:3]
        print("brightest images:", ", ".join(f"#{i} ({light[i]:.1f})" for i in top))
        print(f"mean brightness over all images: {light.mean():.2f}")

        # -- ragged out: thumbnails (every 4th pixel) computed as a bag and
        # appended to the same file as a second ragged collection.
        thumbs = bag.map(lambda im: np.ascontiguousarray(im[::4, ::4]))
        with dask.config.set(scheduler="threads"):
            daskh5.write_ragged(thumbs, path, "/thumbs", progress=False)

        # -- random access: only the requested images are read.
        with daskh5.open_ragged(path, "/images") as r, daskh5.open_ragged(path, "/thumbs") as t:
            print(repr(r))
            i = int(top[0])
            im = r[i]
            print(f"image #{i}: shape {im.shape}, brightness {brightness(im):.1f}; thumbnail {t[i].shape}")
            # The shapes are known without reading any pixel: select by shape.
            # (``r[mask]`` takes a boolean mask too; a list of indices reads
            # just those images, in one request.)
            portrait = np.flatnonzero(r.shapes[:, 0] > r.shapes[:, 1])
            assert len(portrait) == dict(kinds).get("portrait", 0)
            tall = r[portrait[:8]]
            print(f"{len(portrait)} portrait images; the first few: {[a.shape for a in tall[:3]]}")
            assert all(a.shape[0] > a.shape[1] for a in tall)
            assert [tuple(s) for s in t.shapes] == [(-(-h // 4), -(-w // 4), 3) for h, w, _ in r.shapes]

            # -- check against numpy: regenerate the images (all of them when
            # small, a sample otherwise).
            check = range(n) if n <= 500 else np.random.default_rng(1).choice(n, 50, replace=False)
            for k in check:
                k = int(k)
                want = make_image(k, max_side)
                np.testing.assert_array_equal(r[k], want)
                np.testing.assert_array_equal(t[k], want[::4, ::4])
                assert abs(light[k] - brightness(want)) < 1e-9
            picked = r[[5, 1, 5]]  # any order, repeats allowed
            np.testing.assert_array_equal(picked[0], make_image(5, max_side))
            assert pixels == int(np.prod(r.shapes[:, :2], axis=1).sum())
        print(f"checked {len(check)} images against numpy")
        daskh5.close_files()


if __name__ == "__main__":
    main()
