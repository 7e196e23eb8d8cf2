"""Folder decoding (issue 36, point 4): this tree against the code before the one image reader (``--old``, by default
``b722ffc^``, checked out in a temporary git worktree), in one invocation, runs interleaved.

    python -m benchmarks.folder_decoding [--images 2000] [--steps 40] [--batch 32] [--photos 24] [--repeats 2]
    python -m benchmarks.folder_decoding --report-only   # rewrite the section from the stored record

1. Training img/s of the real ``selfsup pretrain`` loop (configs/simclr_fmnist.yaml: SimCLR, the small CNN; batch
   ``--batch``, evaluation off) on a folder of 96×96 RGB JPEGs made from Fashion-MNIST (benchmarks.memory's
   folder): read lazily by ``--workers`` DataLoader workers (``data.in_memory=never``), and decoded into RAM first
   (``data.in_memory=always``). Both are timed the same way, on training steps only: the steady-state img/s between
   the metrics row at step ``--warmup`` (a multiple of 10: the old code writes a row every 10 steps) and the last
   step (the step seconds are the loop's own, recovered from the cumulative ``img_per_s`` of metrics.jsonl), so
   worker start-up and the first steps are left out on both sides.
   The ratio lazy / in-RAM is the target (≥ 0.75), for this tree and for the old code.
2. Images/s of decoding a folder of ``--photos`` synthetic 12-megapixel photos (4000×3000 RGB JPEGs, quality 90:
   smooth gradients, shapes and sensor-like noise; a few carry an EXIF orientation) to ``data.size=128`` through
   ``load_datasets`` (``data.source=folder``, ``data.in_memory=always``: the same call in both trees), each tree
   in its own process, import time excluded. The ratio new / old is the target (≥ 3). The decoded 128 px images
   of the two trees are compared pixel by pixel (mean and max absolute difference, 0–255): the stated tolerance of
   reduced-size JPEG decoding. The old code ignored the EXIF orientation; its images of those photos are turned
   by their orientation before the comparison.

Every child process runs with PYTHONPATH and working directory set to the tree whose code it measures.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from benchmarks import harness
from benchmarks.harness import ROOT, md_table, old_tree
from benchmarks.memory import make_folder

OLD = "418339affd02ab894b3ef6864a7bbb356836c36d"  # b722ffc^: folder decoding before selfsup/data/image_reader.py
CONFIG = ROOT / "configs" / "simclr_fmnist.yaml"
PHOTO = (4000, 3000)  # 12 megapixels
EXIF_ORIENTATION = 0x0112
TURN = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE,
        6: Image.ROTATE_270, 7: Image.TRANSVERSE, 8: Image.ROTATE_90}  # what ImageOps.exif_transpose applies
MODES = {"lazy": "never", "ram": "always"}  # data.in_memory of each training mode
LAZY_TARGET, DECODE_TARGET = 0.75, 3.0
# run in a child with PYTHONPATH and cwd = the tree whose code is measured; argv: root size out.npy
DECODE = ("import json, sys, time; import numpy as np; from selfsup.config import DataConfig; "
          "from selfsup.data import load_datasets; "
          "cfg = DataConfig(source='folder', root=sys.argv[1], size=int(sys.argv[2]), channels=3, in_memory='always'); "
          "t = time.perf_counter(); ds, _ = load_datasets(cfg); s = time.perf_counter() - t; "
          "np.save(sys.argv[3], ds.images.numpy()); "
          "mods = [getattr(m, '__file__', None) for k, m in list(sys.modules.items()) if k.partition('.')[0] == "
          "'selfsup']; "
          "print('@@' + json.dumps({'seconds': s, 'images': len(ds), 'files': list(ds.files), "
          "'modules': [m for m in mods if m]}))")


# ---------------------------------------------------------------------------------------------------------------------
# the photos


def _smooth_field(rng: np.random.Generator) -> Image.Image:
    """A low-frequency colour field (gradients and a few broad waves), made small and upsampled to a photo."""
    h, w = PHOTO[1] // 10, PHOTO[0] // 10
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((h, w, 3), np.float32)
    for c in range(3):
        a, b = rng.uniform(-1, 1, 2)
        field = 128 + 60 * (a * x / w + b * y / h)
        for _ in range(3):
            fx, fy, ph = rng.uniform(0.5, 4, 2).tolist() + [rng.uniform(0, 6.3)]
            field += rng.uniform(10, 30) * np.sin(2 * np.pi * (fx * x / w + fy * y / h) + ph)
        out[..., c] = field
    return Image.fromarray(out.clip(0, 255).astype(np.uint8)).resize(PHOTO, Image.BICUBIC)


def _shapes(im: Image.Image, rng: np.random.Generator, n: int = 14) -> None:
    """Sharp-edged ellipses, rectangles and polygons drawn onto ``im`` (objects in a scene)."""
    draw = ImageDraw.Draw(im)
    w, h = im.size
    for _ in range(n):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, w - 200)), int(rng.integers(0, h - 200))
        x1, y1 = x0 + int(rng.integers(100, w // 3)), y0 + int(rng.integers(100, h // 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            pts = [(int(rng.integers(x0, x1)), int(rng.integers(y0, y1))) for _ in range(5)]
            draw.polygon(pts, fill=colour)


def make_photos(root: Path, n: int, exif: int = 2, seed: int = 0) -> dict[str, int]:
    """``n`` synthetic 12 MP photos (4000×3000 RGB JPEGs, quality 90) under ``root``; the last ``exif`` of them carry
    an EXIF orientation (6: turned 90°, 3: 180°, alternating). Returns {file name: orientation} of those."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 6, (PHOTO[1], PHOTO[0], 3)).clip(-127, 127).astype(np.int16)  # sensor-like, shifted per photo
    oriented = {}
    for i in range(n):
        im = _smooth_field(rng)
        _shapes(im, rng)
        shift = (int(rng.integers(0, PHOTO[1])), int(rng.integers(0, PHOTO[0])))
        a = (np.asarray(im, dtype=np.int16) + np.roll(noise, shift, axis=(0, 1))).clip(0, 255).astype(np.uint8)
        name = f"photo{i:03d}.jpg"
        kw = {}
        if i >= n - exif:
            orientation = 6 if (n - i) % 2 else 3
            ex = Image.Exif()
            ex[EXIF_ORIENTATION] = orientation
            kw["exif"] = ex
            oriented[name] = orientation
        Image.fromarray(a).save(root / name, quality=90, **kw)
    return oriented


# ---------------------------------------------------------------------------------------------------------------------
# the child processes


def _env(tree: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(tree)}


def steady(rows: list[dict], batch: int, warmup: int) -> tuple[float, int, int]:
    """(img/s, first step, last step) of the steps after the metrics row at step ``warmup``: the first row at or
    after it, before the last, at a multiple of 10 (the rows the old code writes too, so both trees time the same
    steps) or, where the log interval has none, any row. Each row's cumulative ``img_per_s`` gives the step seconds
    so far (step × batch / img_per_s). Without such a row, the whole run (from step 0)."""
    rows = sorted((r for r in rows if "img_per_s" in r), key=lambda r: r["step"])
    last = rows[-1]
    after = [r for r in rows if warmup <= r["step"] < last["step"]]
    start = next((r for r in after if r["step"] % 10 == 0), after[0] if after else None)

    def seconds(r):
        return r["step"] * batch / r["img_per_s"]

    s0, a = (seconds(start), start["step"]) if start else (0.0, 0)
    return (last["step"] - a) * batch / (seconds(last) - s0), a, last["step"]


def train_in(tree: Path, folder: Path, mode: str, args, out: Path) -> dict:
    """One ``selfsup pretrain`` (no evaluation) of ``tree``'s code on the 96 px folder, read as ``mode`` says;
    the steady-state img/s, and the files it loaded when ``tree`` is this one."""
    name = f"{tree.name}-{mode}"
    shutil.rmtree(out / name, ignore_errors=True)
    cmd = [sys.executable, "-m", "selfsup.cli", "pretrain", "--config", str(CONFIG), "--no-eval", f"name={name}",
           f"output_dir={out}", "data.source=folder", f"data.root={folder}", "data.size=96", "data.channels=3",
           f"data.in_memory={MODES[mode]}", f"data.workers={args.workers}", f"train.max_steps={args.steps}",
           f"train.batch_size={args.batch}", "train.monitor_every_epochs=1000", "train.monitor_samples=256",
           "train.checkpoint_every_steps=100000"]
    deps = out / f"{name}.deps.json"
    ours = tree.resolve() == ROOT
    t = time.perf_counter()
    p = subprocess.run(harness.traced(cmd, deps) if ours else cmd, env=_env(tree), cwd=tree, capture_output=True,
                       text=True)
    call = time.perf_counter() - t
    if p.returncode:
        sys.exit(f"pretrain ({tree}, {mode}) failed:\n{p.stderr[-3000:]}")
    ts = json.loads((out / name / "train_summary.json").read_text())
    rows = [json.loads(ln) for ln in (out / name / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    img_s, a, b = steady(rows, args.batch, args.warmup)
    return {"img_s": img_s, "window": [a, b], "img_s_all_steps": ts["images_per_second"],
            "step_seconds": ts["step_seconds"], "train_seconds": ts["train_seconds"], "steps": ts["steps"],
            "call_seconds": call, "modules": json.loads(deps.read_text()) if ours else []}


def decode_in(tree: Path, photos: Path, size: int, npy: Path) -> dict:
    """``load_datasets`` of the photo folder at ``size`` px by ``tree``'s code, in a fresh process: seconds, img/s;
    the decoded images go to ``npy``."""
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", DECODE, str(photos), str(size), str(npy)], env=_env(tree), cwd=tree,
                       capture_output=True, text=True)
    call = time.perf_counter() - t
    if p.returncode:
        sys.exit(f"decoding the photos ({tree}) failed:\n{p.stderr[-3000:]}")
    r = json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("@@"))[2:])
    files = [Path(f).resolve() for f in r.pop("modules")] if tree.resolve() == ROOT else []
    mods = [f.relative_to(ROOT).as_posix() for f in files if f.is_relative_to(ROOT)]
    return {**r, "img_s": r["images"] / r["seconds"], "call_seconds": call, "modules": mods}


def pixel_difference(old: Path, new: Path, files: list[str], oriented: dict[str, int]) -> dict:
    """Mean and max |new − old| (0–255) of the decoded images, overall and per photo; the old code's image of a
    photo with an EXIF orientation is first turned by it (the old code ignored the orientation)."""
    a, b = np.load(old), np.load(new)
    per = []
    for i, f in enumerate(files):
        x = a[i].transpose(1, 2, 0)
        if f in oriented:
            x = np.asarray(Image.fromarray(x).transpose(TURN[oriented[f]]))
        d = np.abs(b[i].transpose(1, 2, 0).astype(np.int16) - x.astype(np.int16))
        per.append({"file": f, "mean": float(d.mean()), "max": int(d.max()), "exif": oriented.get(f)})
    return {"mean": float(np.mean([p["mean"] for p in per])), "max": max(p["max"] for p in per), "per_photo": per}


# ---------------------------------------------------------------------------------------------------------------------
# the measurement


def _train_round(trees: dict[str, Path], folder: Path, args, out: Path, rec: dict, modules: set) -> None:
    for mode in MODES:
        for side, tree in trees.items():
            r = train_in(tree, folder, mode, args, out)
            modules.update(r.pop("modules"))
            rec["train"]["runs"][side][mode].append(r)
            print(f"train {side:3s} {mode:4s}: {r['img_s']:6.1f} img/s (steps {r['window'][0]}–{r['window'][1]}; "
                  f"all steps {r['img_s_all_steps']:.1f}; process {r['call_seconds']:.0f} s)", flush=True)


def _decode_round(trees: dict[str, Path], photos: Path, args, tmp: Path, rec: dict, modules: set) -> None:
    for side, tree in trees.items():
        r = decode_in(tree, photos, args.size, tmp / f"{side}.npy")
        modules.update(r.pop("modules"))
        files = r.pop("files")
        rec["decode"]["files"] = files
        rec["decode"]["runs"][side].append(r)
        print(f"decode {side:3s}: {r['img_s']:6.2f} img/s ({r['images']} photos in {r['seconds']:.1f} s; process "
              f"{r['call_seconds']:.0f} s)", flush=True)


def run(args, store: dict, results: Path) -> dict:
    started, tmp = time.perf_counter(), Path(tempfile.mkdtemp(prefix="selfsup-decoding-"))
    old = subprocess.check_output(["git", "rev-parse", args.old], cwd=ROOT, text=True).strip()
    rec = {"old": old, "new": harness.git_rev(), "load_1min": [os.getloadavg()[0]],
           "train": {"images": args.images, "steps": args.steps, "batch": args.batch, "workers": args.workers,
                     "warmup": args.warmup, "runs": {s: {m: [] for m in MODES} for s in ("old", "new")}},
           "decode": {"photos": args.photos, "size": args.size, "megapixels": PHOTO[0] * PHOTO[1] / 1e6,
                      "runs": {"old": [], "new": []}}}
    modules: set = set()
    try:
        print(f"writing {args.images} 96 px JPEGs and {args.photos} 12 MP photos to {tmp} ...", flush=True)
        make_folder(tmp / "jpeg96", args.images, 96)
        rec["decode"]["exif"] = make_photos(tmp / "photos", args.photos, min(2, args.photos))
        with old_tree(old, tmp / "old") as old_code:
            trees = {"old": old_code, "new": ROOT}
            for i in range(args.repeats):
                rec["load_1min"].append(os.getloadavg()[0])
                _train_round(trees, tmp / "jpeg96", args, tmp / "runs", rec, modules)
                _decode_round(trees, tmp / "photos", args, tmp, rec, modules)
        rec["decode"]["difference"] = pixel_difference(tmp / "old.npy", tmp / "new.npy", rec["decode"]["files"],
                                                       rec["decode"]["exif"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {**harness.stamp(configs=[CONFIG], modules=sorted(modules)), **rec,
           "seconds": time.perf_counter() - started}
    print("\n" + sections(out)["folder_decoding"])
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the section


def _best(xs: list[dict]) -> float:
    return max(x["img_s"] for x in xs)


def _each(xs: list[dict], digits: int = 1) -> str:
    return ", ".join(f"{x['img_s']:.{digits}f}" for x in xs)


def lazy_ratios(rec: dict) -> dict[str, dict]:
    """Per tree: best lazy / best in-RAM img/s, and the ratio of each repeat's pair."""
    out = {}
    for side, runs in rec["train"]["runs"].items():
        pairs = [a["img_s"] / b["img_s"] for a, b in zip(runs["lazy"], runs["ram"])]
        out[side] = {"best": _best(runs["lazy"]) / _best(runs["ram"]), "each": pairs}
    return out


def _verdict(value: float, target: float) -> str:
    return f"meets the ≥ {target:g} target" if value >= target else f"misses the ≥ {target:g} target"


def _train_part(rec: dict) -> list[str]:
    t, ratios = rec["train"], lazy_ratios(rec)
    rows = [[f"{side} ({rec[side][:7]})", mode, f"{_best(runs[mode]):.1f}", _each(runs[mode]),
             ", ".join(f"{r['window'][0]}–{r['window'][1]}" for r in runs[mode]),
             ", ".join(f"{r['img_s_all_steps']:.1f}" for r in runs[mode])]
            for side, runs in t["runs"].items() for mode in MODES]
    new, old = ratios["new"], ratios["old"]
    return ["### Training from a 96×96 JPEG folder: lazy vs in RAM", "",
            f"configs/simclr_fmnist.yaml (SimCLR, small CNN), batch {t['batch']}, {t['steps']} steps, "
            f"{t['images']} images (Fashion-MNIST upscaled to 96×96, tinted RGB, JPEG q90); lazy = "
            f"`data.in_memory=never`, `data.workers={t['workers']}`; in RAM = `data.in_memory=always`. img/s: steady "
            f"state over the steps after the metrics row at step {t['warmup']} (\"steps timed\": the same window on "
            "both sides, the whole run when it is shorter), from the loop's own step times; the last column counts "
            "every step.", "",
            md_table(["code", "data", "img/s (best)", "img/s (each run)", "steps timed", "img/s, all steps"], rows),
            "",
            f"Lazy / in RAM, best runs: this tree {new['best']:.2f} (each repeat: "
            f"{', '.join(f'{x:.2f}' for x in new['each'])}), which {_verdict(new['best'], LAZY_TARGET)}; "
            f"the old code {old['best']:.2f} (each repeat: {', '.join(f'{x:.2f}' for x in old['each'])})."]


def _decode_part(rec: dict) -> list[str]:
    d = rec["decode"]
    runs, diff = d["runs"], d["difference"]
    ratio = _best(runs["new"]) / _best(runs["old"])
    rows = [[f"{side} ({rec[side][:7]})", f"{_best(runs[side]):.2f}", _each(runs[side], 2),
             ", ".join(f"{r['seconds']:.1f}" for r in runs[side])] for side in ("old", "new")]
    worst = max(diff["per_photo"], key=lambda p: p["mean"])
    return ["### Decoding 12 MP photos to 128 px", "",
            f"{d['photos']} synthetic {d['megapixels']:.0f}-megapixel photos (4000×3000 RGB JPEG q90: gradients, "
            f"shapes, noise; {len(d['exif'])} with an EXIF orientation) read by `load_datasets` "
            f"(`data.source=folder`, `data.size={d['size']}`, `data.in_memory=always`) in a fresh process per run, "
            "import time excluded.", "",
            md_table(["code", "img/s (best)", "img/s (each run)", "seconds (each run)"], rows), "",
            f"New / old, best runs: {ratio:.2f}×, which {_verdict(ratio, DECODE_TARGET)}.", "",
            f"Tolerance (this tree's 128 px images against the old code's, 0–255 units, the old images of the "
            f"{len(d['exif'])} EXIF-oriented photos turned by their orientation first): mean absolute difference "
            f"{diff['mean']:.2f} over the {len(diff['per_photo'])} photos (the largest per-photo mean "
            f"{worst['mean']:.2f}, {worst['file']}), largest single-pixel difference {diff['max']}."]


def sections(rec: dict) -> dict:
    if not rec:  # not measured yet
        return {"folder_decoding": None}
    load = rec.get("load_1min", [])
    body = ["## Folder decoding: lazy training from JPEGs, and 12 MP photos at 128 px", "",
            f"This tree ({rec['new']}) against the code before the one image reader ({rec['old'][:10]}, "
            f"`--old`), runs interleaved in one invocation on {rec['machine']}."
            + (f" 1-min load average before each round: {', '.join(f'{x:.1f}' for x in load)}." if load else ""), "",
            *_train_part(rec), "", *_decode_part(rec)]
    return {"folder_decoding": "\n".join(body)}


def summary(rec: dict) -> list[dict]:
    if not rec:
        return []
    runs, new = rec["train"]["runs"]["new"], lazy_ratios(rec)["new"]["best"]
    d = rec["decode"]["runs"]
    ratio = _best(d["new"]) / _best(d["old"])
    return [harness.summary_row(f"img/s: lazy vs in-RAM 96 px folder; 12 MP → {rec['decode']['size']} px vs old",
                                f"{_best(runs['lazy']):.0f} / {_best(d['new']):.1f} img/s",
                                f"{_best(runs['ram']):.0f} / {_best(d['old']):.1f} ({rec['old'][:7]})",
                                f"{new:.2f}× (≥ {LAZY_TARGET:g}) / {ratio:.1f}× (≥ {DECODE_TARGET:g})", rec,
                                "folder_decoding")]


def add_arguments(ap) -> None:
    ap.add_argument("--old", default=OLD, help="git ref of the code before the reader work (default: b722ffc^)")
    ap.add_argument("--images", type=int, default=2000, help="96 px JPEGs in the training folder")
    ap.add_argument("--steps", type=int, default=40, help="training steps per run")
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the steady-state img/s")
    ap.add_argument("--batch", type=int, default=32, help="train.batch_size (small: the default run fits ~6 min "
                    "on 2 cores)")
    ap.add_argument("--workers", type=int, default=2, help="data.workers of the lazy runs")
    ap.add_argument("--photos", type=int, default=24, help="12 MP JPEGs in the decoding folder")
    ap.add_argument("--size", type=int, default=128, help="data.size the photos are decoded to")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of old, new (interleaved); tables: best and all")


BENCH = harness.Benchmark("folder_decoding", sections, run=run, add_arguments=add_arguments, summary=summary,
                          doc=__doc__)

if __name__ == "__main__":
    harness.main(BENCH)
