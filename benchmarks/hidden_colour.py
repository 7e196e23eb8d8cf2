"""The hidden colour under transparency (issue 34): on a real-shaped folder of RGBA objects whose transparent pixels
store a colour that goes with the class, is the accuracy driven by that hidden colour? And do a 20-image and a
700-image folder train with the README's CPU folder command unchanged?

    python -m benchmarks.hidden_colour [--images 700] [--seeds 2] [--control-seeds 1] [--keep DIR]
    python -m benchmarks.hidden_colour --images 120 --seeds 1 --max-steps 3 --results /tmp/hc.json   # a smoke run
    python -m benchmarks.hidden_colour --report-only    # the section from benchmarks/results/hidden_colour.json

The folders are made by this script from Fashion-MNIST (its first nine classes; objects upscaled to 56×56): each image
is an RGBA PNG whose alpha is the object's mask (soft edges), whose object pixels are an opaque colour drawn per image
independently of the class (shaded by the garment's grey levels), and whose fully transparent pixels store a *hidden*
RGB colour:

- **correlated**: the hidden colour is the class's own (one of nine colours, black and white among them: the
  reported icons were 639 on black and 161 on white);
- **shuffled**: the same images, the hidden colour drawn from the same nine independently of the class;
- **leak control, correlated / shuffled**: the same two, written as RGB with the hidden colour visible, i.e. what
  ``convert("RGB")`` made of them before transparency was composited: it shows that the comparison can see a leak.

Each folder is a ``train/<class>/`` + ``test/<class>/`` layout (80 / 20 % per class), and its ``train/`` holds the
odd files of a real collection as well: symlinked duplicates, a 16-bit grey PNG, a CMYK JPEG, a palette PNG with a
transparent index, an EXIF-rotated JPEG, a 4000×3000 JPEG, an SVG and an XML file. A truncated PNG is added to a
copy of the correlated folder only: the README command is run on that copy unchanged (its exit code and last error
line are recorded) and with ``data.skip_bad_images=true``.

Every training run is the README's CPU folder command, ``selfsup pretrain --config configs/simclr_folder_cpu.yaml
data.root=FOLDER``, in a child process, with only ``output_dir``, ``name`` and ``seed`` added (``--max-steps`` adds
``train.max_steps`` for smoke runs and is recorded). From each run's ``eval.json``: the encoder's kNN (test) and the
raw pixels' kNN (test); from its ``config.yaml`` / ``train_summary.json``: the batch size and epochs it chose, its
steps and wall time. A 20-image folder (2 classes × 10 RGBA objects, no test split) is trained the same way.

The noise rule: a difference correlated − shuffled is *within noise* when it is at most twice σ, the larger of (a)
the standard error of the difference of the two means over seeds, √(s₁²/n + s₂²/n), and (b) the binomial standard
deviation of the difference of two accuracies on the N test images, √(2 p̄ (1 − p̄) / N).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from benchmarks import harness
from benchmarks.harness import ROOT, md_table
from selfsup.data import FMNIST_CLASSES, fashion_mnist

CONFIG = ROOT / "configs" / "simclr_folder_cpu.yaml"
README_COMMAND = "selfsup pretrain --config configs/simclr_folder_cpu.yaml data.root=FOLDER"
SIZE = 56  # the objects' side in pixels
CLASSES = 9  # Fashion-MNIST's first nine classes
PALETTE = [(0, 0, 0), (255, 255, 255), (220, 30, 30), (30, 160, 40), (30, 60, 220), (240, 200, 20),
           (200, 40, 200), (20, 200, 210), (128, 128, 128)]  # the hidden colours, one per class when correlated
VARIANTS = {"correlated": (True, False), "shuffled": (False, False),
            "leak-correlated": (True, True), "leak-shuffled": (False, True)}  # name: (hidden = class's, RGB leak)
TEST_FRACTION = 0.2
SMALL = (2, 10)  # the small folder: classes × images, no test split


# ---------------------------------------------------------------------------------------------------------------------
# the folders


def class_dir(y: int) -> str:
    """A class's folder name: its Fashion-MNIST name, '/' replaced ("T-shirt/top" would be two folders)."""
    return FMNIST_CLASSES[y].replace("/", "-")


def objects(n: int, classes: int = CLASSES, seed: int = 0) -> dict:
    """``n`` Fashion-MNIST training objects of the first ``classes`` classes (as even as possible): grey levels
    upscaled to SIZE, labels, an object colour per image (independent of the class) and a split per image."""
    ds = fashion_mnist("train")
    labels = ds.labels.numpy()
    per = [n // classes + (c < n % classes) for c in range(classes)]
    idx = np.concatenate([np.flatnonzero(labels == c)[:k] for c, k in enumerate(per)])
    rng = np.random.default_rng(seed)
    grey = np.stack([np.asarray(Image.fromarray(ds.images[i, 0].numpy()).resize((SIZE, SIZE), Image.BILINEAR))
                     for i in idx])
    test = np.concatenate([np.arange(k) >= k - round(k * TEST_FRACTION) for k in per])
    return {"grey": grey, "labels": labels[idx], "colour": rng.integers(40, 221, (len(idx), 3)), "test": test,
            "index": idx}


def hidden_colours(labels: np.ndarray, correlated: bool, seed: int = 1) -> np.ndarray:
    """The colour stored under each image's transparent pixels: its class's, or drawn independently of it."""
    pal = np.array(PALETTE)
    if correlated:
        return pal[labels % len(pal)]
    return pal[np.random.default_rng(seed).integers(0, len(pal), len(labels))]


def rgba(grey: np.ndarray, colour, hidden) -> np.ndarray:
    """One object as H×W×4: alpha the mask (soft edges), the object's colour shaded by its grey levels where
    alpha > 0, the hidden colour under the fully transparent pixels."""
    alpha = np.clip(grey.astype(np.float32) * 3, 0, 255).astype(np.uint8)
    shade = 0.35 + 0.65 * grey.astype(np.float32)[..., None] / 255
    rgb = np.where(alpha[..., None] > 0, np.clip(np.asarray(colour) * shade, 0, 255), np.asarray(hidden))
    return np.dstack([rgb.astype(np.uint8), alpha])


def write_images(root: Path, objs: dict, hidden: np.ndarray, leak: bool = False, split: bool = True) -> None:
    """Every object as root/<train|test>/<class>/NNNNN.png (``split``; else root/<class>/): RGBA, or (``leak``) the
    RGB that a reader dropping the alpha channel saw."""
    for i, (g, y) in enumerate(zip(objs["grey"], objs["labels"])):
        d = (root / ("test" if objs["test"][i] else "train") if split else root) / class_dir(y)
        d.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(rgba(g, objs["colour"][i], hidden[i]), "RGBA")
        (im.convert("RGB") if leak else im).save(d / f"{int(objs['index'][i]):05d}.png")


ODD_IMAGES = ("odd-16bit-grey.png", "odd-cmyk.jpg", "odd-palette-transparent.png", "odd-exif-rotated.jpg",
              "odd-large-4000x3000.jpg")


def odd_image(name: str, g: np.ndarray, colour, hidden) -> tuple[Image.Image, dict]:
    """One of ODD_IMAGES made from one object, with the keyword arguments of its ``save``."""
    on_white = Image.alpha_composite(Image.new("RGBA", (SIZE, SIZE), (255, 255, 255, 255)),
                                     Image.fromarray(rgba(g, colour, hidden), "RGBA")).convert("RGB")
    if name == "odd-16bit-grey.png":
        return Image.fromarray(g.astype(np.uint16) * 257), {}
    if name == "odd-cmyk.jpg":
        return on_white.convert("CMYK"), {"quality": 92}
    if name == "odd-palette-transparent.png":  # index 0: the hidden colour, transparent; 1..128: shades
        pal = Image.fromarray(np.where(g > 0, 1 + g // 2, 0).astype(np.uint8), "P")
        pal.putpalette([int(v) for v in hidden] + [int(c * (0.35 + 0.65 * k / 127)) for k in range(128)
                                                   for c in colour])
        return pal, {"transparency": 0}
    if name == "odd-exif-rotated.jpg":  # orientation 6: shown turned 90° clockwise, so stored turned back
        exif = Image.Exif()
        exif[0x0112] = 6
        return on_white.transpose(Image.Transpose.ROTATE_90), {"quality": 92, "exif": exif}
    big = Image.new("RGB", (4000, 3000), (255, 255, 255))
    big.paste(on_white.resize((3000, 3000), Image.BILINEAR), (500, 0))
    return big, {"quality": 90}


def write_odd_files(train: Path, objs: dict, hidden: np.ndarray, duplicates: int = 3) -> list[str]:
    """The odd files of a real collection in ``train``'s class folders (each image made from a training object and
    put in its class); returns their paths relative to ``train``."""
    tr = np.flatnonzero(~objs["test"])
    made = []
    for k, name in enumerate(ODD_IMAGES):
        i = tr[(k * 97 + 5) % len(tr)]
        rel = Path(class_dir(objs["labels"][i])) / name
        im, kw = odd_image(name, objs["grey"][i], objs["colour"][i], hidden[i])
        im.save(train / rel, **kw)
        made.append(rel.as_posix())
    classes = sorted({class_dir(y) for y in objs["labels"][tr]})
    for k in range(duplicates):  # relative symlinks to images of the same class
        src = sorted((train / classes[k % len(classes)]).glob("[0-9]*.png"))[k // len(classes)]
        link = src.parent / f"odd-duplicate-{k}.png"
        link.symlink_to(src.name)
        made.append(link.relative_to(train).as_posix())
    (train / classes[0] / "odd-drawing.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>\n')
    (train / classes[-1] / "odd-metadata.xml").write_text("<?xml version='1.0'?><album><photo/></album>\n")
    return made + [f"{classes[0]}/odd-drawing.svg", f"{classes[-1]}/odd-metadata.xml"]


def write_broken(train: Path) -> str:
    """A PNG cut to half its bytes (a copy interrupted mid-file) in the first class's folder; its relative path."""
    d = sorted(p for p in train.iterdir() if p.is_dir())[0]
    src = sorted(d.glob("[0-9]*.png"))[-1]
    data = src.read_bytes()
    (d / "odd-truncated.png").write_bytes(data[:len(data) // 2])
    return f"{d.name}/odd-truncated.png"


def make_variant(root: Path, objs: dict, variant: str) -> dict:
    """The folder of one VARIANTS entry; returns what it holds (image counts and the odd files)."""
    correlated, leak = VARIANTS[variant]
    hidden = hidden_colours(objs["labels"], correlated)
    write_images(root, objs, hidden, leak)
    odd = write_odd_files(root / "train", objs, hidden)
    return {"train": int((~objs["test"]).sum()), "test": int(objs["test"].sum()), "odd_files": odd,
            "hidden_matches_class": float((hidden == np.array(PALETTE)[objs["labels"] % len(PALETTE)])
                                          .all(1).mean())}


def make_small(root: Path, seed: int = 0) -> dict:
    """The small folder: SMALL[0] classes × SMALL[1] RGBA objects under root/<class>/, hidden colour the class's, no
    test split."""
    objs = objects(SMALL[0] * SMALL[1], classes=SMALL[0], seed=seed)
    objs["test"][:] = False
    write_images(root, objs, hidden_colours(objs["labels"], True), split=False)
    return {"images": len(objs["labels"]), "classes": SMALL[0]}


# ---------------------------------------------------------------------------------------------------------------------
# the runs


def readme_command(folder: Path, name: str, out: Path, seed: int, extra=()) -> list[str]:
    """The README's CPU folder command on ``folder`` (``selfsup pretrain``, as ``python -m selfsup.cli``), with only
    the run's place, its seed and ``extra`` added."""
    return [sys.executable, "-m", "selfsup.cli", "pretrain", "--config", CONFIG.relative_to(ROOT).as_posix(),
            f"data.root={folder}",
            f"output_dir={out}", f"name={name}", f"seed={seed}", *extra]


def _last_data_counts(metrics: Path) -> dict:
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()] if metrics.exists() else []
    return next((r["data_counts"] for r in reversed(rows) if "data_counts" in r), {})


def pretrain_run(folder: Path, name: str, out: Path, seed: int, extra=()) -> dict:
    """One README-command run in a child process: exit code, wall time, the batch / epochs / steps it used, the
    files the data left out, and the encoder's and raw pixels' kNN (test) where it evaluated."""
    shutil.rmtree(out / name, ignore_errors=True)
    deps = out / f"{name}.deps.json"
    cmd = readme_command(folder, name, out, seed, extra)
    t0 = time.perf_counter()
    proc = subprocess.run(harness.traced(cmd, deps), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    row = {"name": name, "seed": seed, "returncode": proc.returncode, "wall_seconds": time.perf_counter() - t0,
           "command": " ".join(["selfsup", *cmd[3:]]),
           "modules": json.loads(deps.read_text()) if deps.exists() else []}
    run = out / name
    if proc.returncode:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        row["error"] = (lines[-1] if lines else "").replace(str(folder), "FOLDER")
        return row
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    ev = json.loads((run / "eval.json").read_text())
    row.update(batch_size=cfg["train"]["batch_size"], epochs=cfg["train"]["epochs"],
               steps=json.loads((run / "train_summary.json").read_text())["steps"],
               data_counts=_last_data_counts(run / "metrics.jsonl"), knn_ssl=ev.get("ssl", {}).get("knn_test"),
               knn_raw=ev.get("raw_pixels", {}).get("knn_test"), note=ev.get("note"),
               train_seconds=ev.get("train", {}).get("train_seconds"), eval_seconds=ev.get("eval_seconds"))
    return row


def broken_runs(base: Path, out: Path, seed: int, extra=()) -> dict:
    """The correlated folder plus a truncated PNG: the README command on it unchanged, then with
    ``data.skip_bad_images=true``."""
    folder = base / "correlated-broken"
    shutil.copytree(base / "correlated", folder, symlinks=True)
    broken = write_broken(folder / "train")
    unchanged = pretrain_run(folder, f"hc-broken-s{seed}", out, seed, extra)
    skipped = pretrain_run(folder, f"hc-broken-skip-s{seed}", out, seed, [*extra, "data.skip_bad_images=true"])
    return {"file": broken, "unchanged": unchanged, "skip_bad_images": skipped}


def measure(base: Path, out: Path, args) -> dict:
    """Every folder written under ``base`` and every run, into one record."""
    extra = [f"train.max_steps={args.max_steps}"] if args.max_steps else []
    variants = [v for v in args.variants.split(",") if v]
    objs = objects(args.images)
    folders = {v: make_variant(base / v, objs, v) for v in variants}
    runs = {}
    for v in variants:
        runs[v] = []
        for s in range(args.control_seeds if VARIANTS[v][1] else args.seeds):
            runs[v].append(pretrain_run(base / v, f"hc-{v}-s{s}", out, s, extra))
            print(_line(runs[v][-1]), flush=True)
    small = {**make_small(base / "small"), "run": pretrain_run(base / "small", "hc-small-s0", out, 0, extra)}
    print(_line(small["run"]), flush=True)
    broken = broken_runs(base, out, 0, extra) if "correlated" in folders and not args.no_broken else None
    for r in (broken or {}).values():
        print(_line(r) if isinstance(r, dict) else f"broken file: {r}", flush=True)
    every = [*(r for rs in runs.values() for r in rs), small["run"], *((broken["unchanged"], broken["skip_bad_images"])
                                                                     if broken else ())]
    modules = sorted({m for r in every for m in r.pop("modules") if m})
    seeds = list(range(max(args.seeds, args.control_seeds)))
    return {**harness.stamp(configs=[CONFIG], seeds=seeds, modules=modules, load_average=os.getloadavg()),
            "readme_command": README_COMMAND, "max_steps": args.max_steps, "images": args.images,
            "size": SIZE, "folders": folders, "runs": runs, "small": small, "broken": broken}


def _line(r: dict) -> str:
    keys = ("name", "returncode", "batch_size", "epochs", "steps", "knn_ssl", "knn_raw", "wall_seconds", "error")
    return " | ".join(f"{k} {r[k]:.3f}" if isinstance(r.get(k), float) else f"{k} {r[k]}" for k in keys if k in r)


def run(args, store: dict, results: Path) -> dict:
    base = args.keep or Path(tempfile.mkdtemp(prefix="selfsup-hidden-colour-"))
    if args.keep and base.exists() and any(base.iterdir()):
        raise SystemExit(f"--keep {base}: give an empty or new folder (the folders are written there)")
    try:
        return measure(base, args.out / "hidden_colour", args)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


def add_arguments(ap) -> None:
    ap.add_argument("--images", type=int, default=700, help="objects in each variant's folder, train + test")
    ap.add_argument("--seeds", type=int, default=2, help="runs per variant (seeds 0 .. N-1)")
    ap.add_argument("--control-seeds", type=int, default=1, help="runs per leak-control variant (its raw-pixel "
                    "kNN does not depend on the training seed)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    ap.add_argument("--max-steps", type=int, default=None, help="add train.max_steps=N to every run: smoke runs "
                    "only (the command is then not the README's unchanged, and the section says so)")
    ap.add_argument("--no-broken", action="store_true", help="skip the truncated-PNG runs")
    ap.add_argument("--keep", type=Path, help="write the folders here (an empty or new folder) and keep them")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench", help="where the run directories go")


# ---------------------------------------------------------------------------------------------------------------------
# the section


def stats(rows: list[dict], key: str) -> tuple[float, float, int] | None:
    """(mean, std over seeds, n) of ``key`` over the runs that finished with it."""
    xs = [r[key] for r in rows if r.get(key) is not None]
    return (*harness.mean_std(xs), len(xs)) if xs else None


def compare(a: list[dict], b: list[dict], key: str, n_test: int) -> dict | None:
    """a − b in ``key``, σ by the module's noise rule and whether |a − b| ≤ 2σ."""
    sa, sb = stats(a, key), stats(b, key)
    if sa is None or sb is None:
        return None
    diff = sa[0] - sb[0]
    se = math.sqrt(sa[1] ** 2 / sa[2] + sb[1] ** 2 / sb[2])
    p = (sa[0] + sb[0]) / 2
    sigma = max(se, math.sqrt(2 * p * (1 - p) / n_test))
    return {"diff": diff, "sigma": sigma, "seed_se": se, "within_noise": abs(diff) <= 2 * sigma}


def pct(s: tuple[float, float, int] | None) -> str:
    return "–" if s is None else f"{100 * s[0]:.2f} ± {100 * s[1]:.2f} %"


def pp(c: dict | None) -> list[str]:
    if c is None:
        return ["–", "–", "–"]
    return [f"{100 * c['diff']:+.2f} pp", f"{200 * c['sigma']:.2f} pp", "yes" if c["within_noise"] else "**no**"]


VARIANT_TEXT = {"correlated": ("the class's", "RGBA: composited on white"),
                "shuffled": ("independent of the class", "RGBA: composited on white"),
                "leak-correlated": ("the class's", "RGB: hidden colour visible (the old reader)"),
                "leak-shuffled": ("independent of the class", "RGB: hidden colour visible (the old reader)")}


def accuracy_tables(rec: dict) -> list[str]:
    runs, n_test = rec["runs"], next(iter(rec["folders"].values()))["test"]
    rows = [[v, *VARIANT_TEXT[v], len(rs), pct(stats(rs, "knn_ssl")), pct(stats(rs, "knn_raw"))]
            for v, rs in runs.items()]
    out = [md_table(["variant", "hidden colour", "what the reader gets", "runs", "encoder kNN (test)",
                     "raw pixels kNN (test)"], rows), ""]
    cmp = []
    for label, a, b in (("background composited", "correlated", "shuffled"),
                        ("leak control", "leak-correlated", "leak-shuffled")):
        if a in runs and b in runs:
            cmp.append([label, *pp(compare(runs[a], runs[b], "knn_ssl", n_test)),
                        *pp(compare(runs[a], runs[b], "knn_raw", n_test))])
    if cmp:
        out += [md_table(["correlated − shuffled", "encoder", "2σ", "within noise", "raw pixels", "2σ",
                          "within noise"], cmp), ""]
    return out


def _folder_row(label: str, images: str, r: dict) -> list:
    counts = r.get("data_counts", {}).get("train", {})
    left = f"{counts.get('skipped', 0)} unreadable, {counts.get('ignored', 0)} not images" if counts else "–"
    return [label, images, r["returncode"], r.get("batch_size", "–"), r.get("epochs", "–"), r.get("steps", "–"),
            f"{r['wall_seconds']:.0f}", left, r.get("error", "").replace("|", "/")[:160] or "–"]


def folder_table(rec: dict) -> list[str]:
    f = next(iter(rec["folders"].values()))
    big = f"{f['train']} + {len(f['odd_files']) - 2} odd / {f['test']}"
    rows = [_folder_row(f"{rec['small']['images']}-image folder", f"{rec['small']['images']} / none",
                        rec["small"]["run"])]
    first = next(iter(rec["runs"].values()))
    rows += [_folder_row(f"{rec['images']}-image folder ({next(iter(rec['runs']))}, seed {r['seed']})", big, r)
             for r in first]
    b = rec.get("broken")
    if b:
        big = f"{f['train']} + {len(f['odd_files']) - 2} odd + 1 truncated / {f['test']}"
        rows += [_folder_row("+ truncated PNG, unchanged", big, b["unchanged"]),
                 _folder_row("+ truncated PNG, `data.skip_bad_images=true`", big, b["skip_bad_images"])]
    return [md_table(["folder", "train / test images", "exit code", "batch", "epochs", "steps", "wall s",
                      "left out of train (run's count)", "error"], rows), ""]


def verdict(rec: dict) -> str:
    """The sentence the numbers give (computed, not written by hand)."""
    runs, n_test = rec["runs"], next(iter(rec["folders"].values()))["test"]
    parts = []
    for label, a, b in (("With the background composited", "correlated", "shuffled"),
                        ("In the leak control", "leak-correlated", "leak-shuffled")):
        for who, key in (("the encoder's", "knn_ssl"), ("the raw pixels'", "knn_raw")):
            c = compare(runs.get(a, []), runs.get(b, []), key, n_test) if a in runs and b in runs else None
            if c:
                parts.append(f"{label}, {who} kNN differs by {100 * c['diff']:+.2f} pp (correlated − shuffled), "
                             f"{'within' if c['within_noise'] else 'outside'} noise (2σ = {200 * c['sigma']:.2f} pp)")
    return ". ".join(parts) + "." if parts else ""


def folder_intro(rec: dict) -> str:
    load = rec.get("timings", {}).get("load_average")
    also = (f", and on the {rec['images']}-image folder with a truncated PNG added (its last error line shown)"
            if rec.get("broken") else "")
    return (f"The README command on a {rec['small']['images']}-image and a {rec['images']}-image folder{also}; wall s: "
            "the whole command, evaluation included" + (f", the host's 1/5/15-min load average at the end being "
                                              f"{'/'.join(f'{x:.1f}' for x in load)}" if load else "") + ":")


def sections(rec: dict) -> dict:
    if not rec.get("folders"):  # no record yet
        return {"hidden_colour": None}
    f = next(iter(rec["folders"].values()))
    smoke = (f"**A smoke run: `train.max_steps={rec['max_steps']}` was added to every command, so these are not "
             "the README command's numbers.**" if rec.get("max_steps") else "")
    body = ["## Hidden colour under transparency: a real-shaped RGBA folder", "",
            f"Fashion-MNIST objects of {CLASSES} classes as {rec['size']}×{rec['size']} RGBA PNGs (alpha: the "
            "object's mask; object colour drawn per image; under the fully transparent pixels a hidden colour, one "
            f"of {len(PALETTE)} with black and white among them), {f['train']} training / {f['test']} test "
            "images in a `train/<class>/` + `test/<class>/` layout, with the odd files of a real folder in `train/` "
            f"({', '.join(Path(o).name for o in f['odd_files'])}). Every run is the README's command "
            f"`{rec['readme_command']}` with only `output_dir`, `name` and `seed` added (seeds "
            f"{', '.join(map(str, rec['seeds']))}). Mean ± std over seeds.", ""]
    body += ([smoke, ""] if smoke else []) + accuracy_tables(rec)
    body += ["σ: the larger of the standard error of the difference over seeds and the binomial std of a difference "
             f"of two accuracies on the {f['test']} test images, √(2p̄(1−p̄)/N); within noise: |difference| ≤ 2σ. "
             + verdict(rec), "", folder_intro(rec), ""] + folder_table(rec)
    return {"hidden_colour": "\n".join(body)}


def summary(rec: dict) -> list[dict]:
    if not rec.get("folders"):
        return []
    runs, n_test = rec["runs"], next(iter(rec["folders"].values()))["test"]
    if not {"correlated", "shuffled", "leak-correlated", "leak-shuffled"} <= set(runs):
        return []
    enc = compare(runs["correlated"], runs["shuffled"], "knn_ssl", n_test)
    leak = compare(runs["leak-correlated"], runs["leak-shuffled"], "knn_raw", n_test)
    if enc is None or leak is None:
        return []
    return [harness.summary_row("hidden colour: kNN, class-correlated − shuffled",
                                f"encoder {100 * enc['diff']:+.2f} pp (2σ {200 * enc['sigma']:.2f})",
                                f"leak control, raw pixels {100 * leak['diff']:+.2f} pp",
                                "within noise" if enc["within_noise"] else "outside noise", rec, "hidden_colour")]


BENCH = harness.Benchmark("hidden_colour", sections, run=run, add_arguments=add_arguments, summary=summary,
                          doc=__doc__)

if __name__ == "__main__":
    harness.main(BENCH)
