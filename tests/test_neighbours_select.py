"""`selfsup neighbours` / `selfsup select`: exact nearest neighbours and near-duplicates against brute force, chunked
equal to unchunked; k-centre greedy's order on a hand-made set and its 2-approximation of the optimal covering radius;
typicality's one densest point per cluster; the CLI's files and its one-line errors."""
import csv
import itertools
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from selfsup.cli import app
from selfsup.config import ModelConfig
from selfsup.takeaways.collection import FeatureExtraction, embed_images, open_collection
from selfsup.takeaways.neighbours import NeighbourQuery, find_neighbours, near_duplicates, nearest
from selfsup.takeaways.select import Selection, kcenter_greedy, select_from_collection, select_to_label
from selfsup.models import build_backbone, load_backbone, save_backbone


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------ nearest neighbours
def test_nearest_matches_brute_force_and_excludes_self():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(53, 8, generator=g)
    queries = torch.cat([bank[[4, 30, 52]], torch.randn(4, 8, generator=g)])
    exclude = [4, 30, 52, -1, -1, -1, -1]
    sims, idx = nearest(bank, queries, 5, exclude_self=exclude, chunk=3, bank_chunk=11)
    u, qu = _unit(bank), _unit(queries)
    brute = qu @ u.T
    for q, ex in enumerate(exclude):
        order = [i for i in np.argsort(-brute[q]) if i != ex][:5]
        assert idx[q].tolist() == order
        np.testing.assert_allclose(sims[q].numpy(), brute[q, order], atol=1e-5)
    assert all(ex not in idx[q].tolist() for q, ex in enumerate(exclude))
    # without exclusion a query that is a row of the collection finds itself first, similarity 1
    s0, i0 = nearest(bank, bank[[4]], 1)
    assert i0.item() == 4 and s0.item() == pytest.approx(1.0, abs=1e-6)
    # k larger than the collection: every other row, in order
    s_all, i_all = nearest(bank[:6], bank[:1], 10, exclude_self=[0])
    assert sorted(i_all[0].tolist()) == [1, 2, 3, 4, 5]


def test_near_duplicates_are_the_brute_force_pairs_and_chunking_changes_nothing():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(40, 16, generator=g)
    f = torch.cat([f, f[3:4] * 2.5, f[17:18], f[17:18] + 1e-3 * torch.randn(1, 16, generator=g)])  # rows 40, 41, 42
    pairs = near_duplicates(f, 0.999)
    assert {(i, j) for i, j, _ in pairs} == {(3, 40), (17, 41), (17, 42), (41, 42)}
    u = _unit(f)
    brute = [(i, j) for i in range(len(u)) for j in range(i + 1, len(u)) if u[i] @ u[j] >= 0.999]
    assert sorted((i, j) for i, j, _ in pairs) == brute
    assert [s for *_, s in pairs] == sorted((s for *_, s in pairs), reverse=True)
    for t in (0.999, 0.5, 0.3):
        whole, chunked = near_duplicates(f, t, chunk=4096), near_duplicates(f, t, chunk=7)
        a, b = sorted(whole), sorted(chunked)  # in (i, j) order: equal similarities may swap (3 and 40 are copies)
        assert [p[:2] for p in a] == [p[:2] for p in b]
        np.testing.assert_allclose([p[2] for p in a], [p[2] for p in b], atol=1e-6)
        np.testing.assert_allclose([p[2] for p in a], [u[i] @ u[j] for i, j, _ in a], atol=1e-5)
        assert len(whole) == int(((u @ u.T)[np.triu_indices(len(u), 1)] >= t).sum())


# ------------------------------------------------------------------------------------------------------- selection
def _covering_radius(u, centres):
    d = np.linalg.norm(u[:, None, :] - u[None, centres, :], axis=2)
    return d.min(1).max()


def test_kcenter_takes_the_centre_then_the_corners_of_the_square():
    # a 5x5 grid on the plane z = 1 (l2-normalised by kcenter): centre, corners, the rest
    grid = [(x, y, 1.0) for x in (-1, -0.5, 0, 0.5, 1) for y in (-1, -0.5, 0, 0.5, 1)]
    f = torch.tensor(grid)
    centre = grid.index((0, 0, 1.0))
    corners = {grid.index((x, y, 1.0)) for x in (-1, 1) for y in (-1, 1)}
    picks = kcenter_greedy(f, 6, start="mean")
    assert picks[0] == centre
    assert set(picks[1:5]) == corners
    # then an edge midpoint: on the unit sphere its squared distance to the nearest pick (a corner) is
    # 2 - 2·2/√6 ≈ 0.367, the largest left ((0.5, 1): 2 - 2·2.5/(1.5·√3) ≈ 0.076; (0.5, 0.5): ≈ 0.114)
    assert grid[picks[5]][:2] in {(1, 0), (-1, 0), (0, 1), (0, -1)}
    # seeded random start: reproducible, and another seed starts elsewhere
    assert kcenter_greedy(f, 4, seed=3) == kcenter_greedy(f, 4, seed=3)
    assert len({kcenter_greedy(f, 1, seed=s)[0] for s in range(6)}) > 1


def test_kcenter_covering_radius_is_within_twice_the_optimum():
    rng = np.random.default_rng(0)
    for trial in range(8):
        if trial % 2:  # spread-out points plus a bulk
            x = np.concatenate([rng.normal(size=(3, 4)) * 3, rng.normal(size=(9, 4))])
        else:  # three tight groups of four: the optimum is one centre per group
            x = np.repeat(rng.normal(size=(3, 4)), 4, axis=0) + rng.normal(scale=0.05, size=(12, 4))
        u = _unit(x)
        opt = min(_covering_radius(u, list(c)) for c in itertools.combinations(range(len(u)), 3))
        for seed in range(3):
            picks = select_to_label(torch.tensor(x, dtype=torch.float32), 3, "kcenter", seed)
            assert len(set(picks)) == 3
            assert _covering_radius(u, picks) <= 2 * opt + 1e-6, (trial, seed)


def _brute_typicality(u, k=20):
    d = np.linalg.norm(u[:, None] - u[None], axis=2)
    np.fill_diagonal(d, np.inf)
    kk = min(k, len(u) - 1)
    return 1 / np.sort(d, axis=1)[:, :kk].mean(1)


def test_typical_takes_the_densest_point_of_each_blob_largest_first():
    rng = np.random.default_rng(2)
    sizes = [40, 30, 25, 12]
    blobs, owner = [], []
    for b, n in enumerate(sizes):
        centre = np.zeros(6)
        centre[b] = 1.0
        blobs.append(centre + rng.normal(scale=0.08, size=(n, 6)) * rng.uniform(0.3, 1.5, size=(n, 1)))
        owner += [b] * n
    x = np.concatenate(blobs)
    owner = np.array(owner)
    picks = select_to_label(torch.tensor(x, dtype=torch.float32), 4, "typical", seed=0)
    assert [owner[p] for p in picks] == [0, 1, 2, 3]  # one per blob, largest blob first
    u = _unit(x)
    for b in range(4):
        members = np.flatnonzero(owner == b)
        assert picks[b] == members[np.argmax(_brute_typicality(u[members]))]


def test_random_is_seeded_and_distinct():
    f = torch.randn(100, 4)
    a = select_to_label(f, 30, "random", seed=5)
    assert a == select_to_label(f, 30, "random", seed=5)
    assert a != select_to_label(f, 30, "random", seed=6)
    assert len(set(a)) == 30 and all(0 <= i < 100 for i in a)


# ---------------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A run directory holding a random-init small CNN (16x16 greyscale) and a folder of 40 digits in 4 class
    folders plus two exact copies (planted duplicates)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("nbr")
    run = root / "run"
    run.mkdir()
    cfg = ModelConfig(widths=[8, 16], pool=2)
    save_backbone(run, build_backbone("cnn", 1, widths=(8, 16), pool=2), cfg, 1, image_size=16)
    d = load_digits()
    src = root / "images"
    for c in range(4):
        (src / f"c{c}").mkdir(parents=True)
        for i in np.flatnonzero(d.target == c)[:10]:
            img = Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((16, 16), Image.BILINEAR)
            img.save(src / f"c{c}" / f"d{i:04d}.png")
    first0, first2 = sorted((src / "c0").iterdir())[0], sorted((src / "c2").iterdir())[3]
    shutil.copy(first0, src / "c0" / "copy_a.png")
    shutil.copy(first2, src / "c2" / "copy_b.png")
    planted = {frozenset({f"c0/{first0.name}", "c0/copy_a.png"}), frozenset({f"c2/{first2.name}", "c2/copy_b.png"})}
    return run, src, planted, first0


def _csv_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_neighbours_cli_writes_the_grid_and_tables(collection, tmp_path):
    torch.set_num_threads(1)
    run, src, planted, original = collection
    out = tmp_path / "nb"
    r = CliRunner().invoke(app, ["neighbours", str(run), "--source", str(src), "--sample", "5", "--k", "3",
                                 "--threshold", "0.9999", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = _csv_rows(out / "neighbours.csv")
    assert len(rows) == 15 and [int(x["rank"]) for x in rows] == [1, 2, 3] * 5
    assert all(x["query"] != x["id"] for x in rows)
    for q in range(5):
        s = [float(x["similarity"]) for x in rows[3 * q:3 * q + 3]]
        assert s == sorted(s, reverse=True)
    dups = _csv_rows(out / "duplicates.csv")
    assert {frozenset({x["id_a"], x["id_b"]}) for x in dups} == planted
    # the planted copies are the only pairs at or above the threshold: brute force over the embedded folder
    ds = open_collection(run, source=src)
    u = _unit(embed_images(load_backbone(run), ds.images, FeatureExtraction(size=16), progress=False).numpy())
    assert int(((u @ u.T)[np.triu_indices(len(u), 1)] >= 0.9999).sum()) == 2
    with Image.open(out / "neighbours.png") as im:
        assert im.size[1] > im.size[0] / 4  # 5 rows of 4 images
    # a query image from the collection: its copy first (similarity 1), never itself
    res = find_neighbours(run, src, NeighbourQuery([original], k=4), threshold=0.9999, progress=False)
    assert res.query_index[0] == ds.files.index(f"c0/{original.name}")
    assert res.ids[int(res.idx[0, 0])] == "c0/copy_a.png" and float(res.sims[0, 0]) == pytest.approx(1, abs=1e-5)
    assert res.query_index[0] not in res.idx[0].tolist()


def test_select_cli_writes_the_ranked_labelled_list(collection, tmp_path):
    torch.set_num_threads(1)
    run, src, _, _ = collection
    out = tmp_path / "pick.csv"
    r = CliRunner().invoke(app, ["select", str(run), "--source", str(src), "--n", "6", "--strategy", "kcenter",
                                 "--out", str(out), "--seed", "1"])
    assert r.exit_code == 0, r.output
    rows = _csv_rows(out)
    assert list(rows[0]) == ["rank", "id", "label", "class"]
    ds = open_collection(run, source=src)
    feats = embed_images(load_backbone(run), ds.images, FeatureExtraction(size=16), progress=False)
    expect = select_to_label(feats, 6, "kcenter", 1)
    assert [x["id"] for x in rows] == [ds.files[i] for i in expect]
    assert [x["class"] for x in rows] == [ds.files[i].split("/")[0] for i in expect]
    assert [int(x["label"]) for x in rows] == [int(ds.labels[i]) for i in expect]
    again = select_from_collection(run, src, Selection(6, "kcenter", seed=1), progress=False)
    assert [x["id"] for x in again] == [x["id"] for x in rows]


@pytest.mark.parametrize("args, needle", [
    (["neighbours", "{run}", "--source", "{src}"], "--query"),
    (["neighbours", "{run}", "--source", "{src}", "--sample", "3", "--query", "{src}/c0/copy_a.png"], "--sample"),
    (["neighbours", "{root}/missing", "--source", "{src}", "--sample", "3"], "missing"),
    (["neighbours", "{run}", "--source", "{src}", "--sample", "3", "--k", "0"], "--k"),
    (["neighbours", "{run}", "--source", "{src}", "--query", "{root}/nope.png"], "nope.png"),
    (["select", "{run}", "--source", "{src}", "--n", "3", "--strategy", "coreset"], "coreset"),
    (["select", "{run}", "--source", "{src}", "--n", "500"], "500"),
])
def test_bad_input_is_one_line_and_exit_2(collection, args, needle):
    run, src, _, _ = collection
    args = [a.format(run=run, src=src, root=run.parent) for a in args]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith("error:") and needle in r.output


def test_kcenter_dense_skips_the_outliers_plain_kcenter_picks_first():
    """Two tight groups of 40 points plus 4 far, isolated outliers: plain k-centre spends its first picks on the
    outliers; kcenter_dense keeps the densest half, so it picks only group points, in k-centre order there."""
    g = torch.Generator().manual_seed(0)
    groups = torch.cat([torch.tensor([1.0, 0, 0]) + 0.05 * torch.randn(40, 3, generator=g),
                        torch.tensor([0.8, 0.6, 0]) + 0.05 * torch.randn(40, 3, generator=g)])
    outliers = torch.tensor([[0, 0, 1.0], [0, 0, -1.0], [-1.0, 0, 0], [0, -1.0, 0]])
    f = torch.cat([groups, outliers])
    plain = kcenter_greedy(f, 5, seed=0)
    assert sorted(plain[1:]) == [80, 81, 82, 83]  # after its first point: every outlier before the other group
    dense = select_to_label(f, 4, "kcenter_dense", seed=0)
    assert all(i < 80 for i in dense) and len(set(dense)) == 4
    assert {i < 40 for i in dense} == {True, False}  # both groups covered
