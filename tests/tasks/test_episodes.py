"""Labelled pools, class splits, N-way K-shot episodes and the GaussianClusters oracle."""

import math

import numpy as np
import pytest
import torch

import bayesmeta as bm
from bayesmeta.tasks import Episodes, GaussianClusters, LabelledPool


def _pool(classes=6, per_class=10, dim=3):
    x = torch.arange(classes * per_class * dim, dtype=torch.float32).reshape(-1, dim)
    return LabelledPool.from_arrays(x, [i // per_class for i in range(classes * per_class)])


def test_episodes_have_k_distinct_examples_per_class_with_consistent_labels():
    pool = _pool()
    b = Episodes(pool, ways=4).sample(50, shots=2, num_query=3, generator=torch.Generator().manual_seed(0))
    assert b.x_support.shape == (50, 8, 3) and b.x_query.shape == (50, 12, 3)
    assert b.labels[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and int(b.params["ways"][0]) == 4
    ids = torch.cat([b.x_support, b.x_query], 1)[..., 0] / 3  # example id (rows are consecutive numbers)
    cls = torch.cat([b.y_support, b.y_query], 1)[..., 0]
    origin = (ids // 10).long()  # the pool class of each example
    for t in range(50):
        assert len(set(ids[t].tolist())) == 20  # no example twice in an episode
        for c in range(4):  # one pool class per episode label, a different one per label
            assert len(set(origin[t][cls[t] == c].tolist())) == 1
        assert len({int(origin[t][cls[t] == c][0]) for c in range(4)}) == 4
    # every pool class is used, labels are assigned in random order
    first = origin[:, 0]
    assert len(set(first.tolist())) == 6


def test_split_keeps_classes_and_groups_disjoint():
    pool = LabelledPool.digits(rotations=True)
    assert pool.num_classes == 40 and pool.x_dim == 64 and float(pool.x.max()) <= 1.0
    train, val, test = pool.split((0.6, 0.2, 0.2), seed=0)
    digit = lambda p: {c.split("/")[0] for c in p.classes}  # noqa: E731
    assert (len(digit(train)), len(digit(val)), len(digit(test))) == (6, 2, 2)
    assert not (digit(train) & digit(test)) and not (digit(val) & digit(test))
    assert train.num_classes == 24 and test.num_classes == 8  # a digit's 4 rotations stay together
    assert len(train) + len(val) + len(test) == len(pool)
    # the 90-degree rotation of an image is its own class: rot90 of the rot0 image
    zero = pool.x[pool.label == pool.classes.index("0/rot0")][0].reshape(8, 8)
    ninety = pool.x[pool.label == pool.classes.index("0/rot90")][0].reshape(8, 8)
    assert torch.equal(torch.rot90(zero, 1, (0, 1)), ninety)


def test_bad_pools_and_requests_are_clear_errors():
    pool = _pool(classes=3, per_class=4)
    with pytest.raises(ValueError, match="3 classes, fewer than ways=5"):
        Episodes(pool, ways=5)
    with pytest.raises(ValueError, match="shots \\+ num_query = 6"):
        Episodes(pool, ways=3).sample(2, shots=1, num_query=5)
    with pytest.raises(ValueError, match="example 1 has label 0.5"):
        LabelledPool.from_arrays(torch.zeros(3, 2), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="example 2 .* non-finite"):
        LabelledPool.from_arrays(torch.tensor([[0.0], [1.0], [math.nan]]), [0, 1, 1])
    with pytest.raises(ValueError, match="3 classes cannot be cut into 4 parts"):
        pool.split((0.25, 0.25, 0.25, 0.25))
    with pytest.raises(ValueError, match="sum to 1"):
        pool.split((0.5, 0.6))


@pytest.mark.parametrize("n, fractions", [(3, (0.6, 0.2, 0.2)), (4, (0.7, 0.2, 0.1)), (5, (0.1, 0.1, 0.8)),
                                          (10, (0.6, 0.2, 0.2))])
def test_split_gives_every_part_a_class_and_uses_all(n, fractions):
    parts = _pool(classes=n, per_class=2).split(fractions)
    sizes = [p.num_classes for p in parts]
    assert min(sizes) >= 1 and sum(sizes) == n
    if n == 10:
        assert sizes == [6, 2, 2]


def test_csv_table(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,species\n" + "".join(f"{i},{2 * i},{'xy'[i % 2]}\n" for i in range(8)))
    pool = LabelledPool.from_csv(path, label="species")
    assert pool.classes == ["x", "y"] and pool.x.shape == (8, 2) and pool.counts.tolist() == [4, 4]
    assert LabelledPool.from_csv(path, label="species", features=["b"]).x_dim == 1
    with pytest.raises(ValueError, match="no column 'kind'"):
        LabelledPool.from_csv(path, label="kind")
    path.write_text("a,species\n1,x\noops,y\n")
    with pytest.raises(ValueError, match="line 3: column 'a' is not a number: 'oops'"):
        LabelledPool.from_csv(path, label="species")
    path.write_text("a,species\n1,x\n2\n")
    with pytest.raises(ValueError, match="line 3: no label in column 'species'"):
        LabelledPool.from_csv(path, label="species")
    path.write_text("a,species\n1,x\nnan,y\n")
    with pytest.raises(ValueError, match="line 3: a feature is not finite"):
        LabelledPool.from_csv(path, label="species")
    with pytest.raises(ValueError, match="label column 'species' cannot also be a feature"):
        LabelledPool.from_csv(path, label="species", features=["a", "species"])
    path.write_bytes("\ufeffa,species\n1,3\n2,4\n".encode())  # a spreadsheet's byte-order mark
    assert LabelledPool.from_csv(path, label="a").classes == [1, 2]


def _png(path, value, size=(6, 5)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(path)


def test_image_tree_with_groups_and_rotations(tmp_path):
    for g in ("alpha", "beta"):
        for c in ("c1", "c2"):
            for i in range(3):
                _png(tmp_path / g / c / f"{i}.png", 40 * i)
    pool = LabelledPool.from_images(tmp_path, size=4, rotations=True)
    assert pool.num_classes == 16 and len(pool) == 48 and pool.x_dim == 16
    assert pool.groups["alpha/c1/rot90"] == "alpha"
    a, b = pool.split((0.5, 0.5))
    assert {pool.groups[c] for c in a.classes}.isdisjoint({pool.groups[c] for c in b.classes})
    flat = LabelledPool.from_images(tmp_path / "alpha", size=(3, 2))
    assert flat.classes == ["c1", "c2"] and flat.x_dim == 6
    assert torch.allclose(flat.x[1], torch.full((6,), 40 / 255))


def test_image_tree_errors_name_the_file_or_folder(tmp_path):
    _png(tmp_path / "a" / "0.png", 0)
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match="class folder .*b.* holds no images"):
        LabelledPool.from_images(tmp_path)
    (tmp_path / "b" / "0.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read .*0.png"):
        LabelledPool.from_images(tmp_path)
    (tmp_path / "b" / "0.png").unlink()
    _png(tmp_path / "b" / "1.png", 9)
    (tmp_path / "b" / "._1.png").write_bytes(b"resource fork")  # hidden files and folders are skipped
    (tmp_path / "a" / ".ipynb_checkpoints").mkdir()
    assert LabelledPool.from_images(tmp_path, size=2).classes == ["a", "b"]
    _png(tmp_path / "c" / "x" / "0.png", 0)
    with pytest.raises(ValueError, match="mixed layout"):
        LabelledPool.from_images(tmp_path)


@pytest.mark.parametrize("stray", ["stray.png", "README.txt", "alpha/notes.txt"])
def test_a_file_beside_the_class_folders_is_an_error_naming_it(tmp_path, stray):
    """The docs: a folder mixing class folders and files is an error (not a file silently left out)."""
    for c in ("c1", "c2"):
        _png(tmp_path / "alpha" / c / "0.png", 10)
        _png(tmp_path / "beta" / c / "0.png", 20)
    (tmp_path / stray).write_bytes(b"x")
    with pytest.raises(ValueError, match=rf"{stray.split('/')[-1]}' is a file beside the class folders"):
        LabelledPool.from_images(tmp_path)
    (tmp_path / stray).unlink()
    (tmp_path / ".DS_Store").write_bytes(b"x")  # hidden files stay skipped
    assert LabelledPool.from_images(tmp_path, size=2).num_classes == 4


def test_a_16_bit_greyscale_image_keeps_its_grey_levels(tmp_path):
    from PIL import Image

    levels = np.array([[0, 16384], [32768, 65535]], dtype=np.uint16)
    (tmp_path / "a").mkdir()
    Image.fromarray(levels).save(tmp_path / "a" / "0.png")  # a 16-bit PNG (mode I;16)
    with Image.open(tmp_path / "a" / "0.png") as im:
        assert im.mode.startswith("I")
    _png(tmp_path / "b" / "0.png", 255, size=(2, 2))
    pool = LabelledPool.from_images(tmp_path, size=2)
    expected = np.round(levels / 65535 * 255) / 255  # scaled to 8 bits, not clipped to white at 255
    np.testing.assert_allclose(pool.x[0].numpy(), expected.reshape(-1), atol=1e-6)
    assert pool.x[1].tolist() == [1.0] * 4


@pytest.mark.parametrize("size", [0, -3, (4, 0), 2.5, True])
def test_a_bad_image_size_is_our_error_naming_size(tmp_path, size):
    _png(tmp_path / "a" / "0.png", 0)
    with pytest.raises(ValueError, match=r"images: size must be an int >= 1"):
        LabelledPool.from_images(tmp_path, size=size)


def _predictive_by_marginals(xs, xq, tau2, s2):
    """p(x_q | class support xs) = p(xs, x_q) / p(xs): each dimension's points share a N(0, tau2) mean."""
    def log_marginal(pts):  # [n, d]
        n = pts.shape[0]
        cov = s2 * torch.eye(n, dtype=torch.float64) + tau2
        mvn = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=torch.float64), cov)
        return mvn.log_prob(pts.T).sum()
    return log_marginal(torch.cat([xs, xq[None]])) - (log_marginal(xs) if len(xs) else 0.0)


def test_gaussian_clusters_oracle_matches_an_independent_computation():
    fam = GaussianClusters(ways=3, dim=2, prior_std=1.2, noise_std=0.7)
    b = fam.sample(2, shots=2, num_query=1, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 1] = False  # task 1's class 0 has a single support example
    pred = fam.oracle_predict(b.x_support, b.y_support, b.x_query, mask)
    for t in range(2):
        for j in range(3):
            xq = b.x_query[t, j].double()
            logs = torch.stack([_predictive_by_marginals(
                b.x_support[t][(b.labels[t] == c) & mask[t]].double(), xq, 1.44, 0.49) for c in range(3)])
            expected = torch.softmax(logs, 0)
            assert torch.allclose(pred.probs[t, j].double(), expected, atol=1e-5)


def test_gaussian_clusters_oracle_is_calibrated():
    fam = GaussianClusters()
    b = fam.sample(2000, shots=1, num_query=5, generator=torch.Generator().manual_seed(4))
    ev = bm.evaluate(fam.oracle_predict, {1: b}, oracle=False)
    s = ev.summary[0]
    # 50 000 query points: the exact predictive's ECE is sampling noise only (measured 0.006)
    assert s["ece"] < 0.015 and abs(s["accuracy"] - 0.572) < 0.02
    assert s["selective"]["area"] > s["accuracy"]  # confidence ranks correctness


def test_evaluate_takes_shots_per_class_and_refuses_a_bare_episode_batch():
    fam = GaussianClusters(ways=3, dim=2)
    b = fam.sample(4, shots=2, num_query=2)
    ev = bm.evaluate(fam.oracle_predict, {2: b}, oracle=False)
    assert ev.summary[0]["num_tasks"] == 4 and "ece_classwise" in ev.summary[0]
    assert "mse" not in ev.summary[0] and "coverage_90" not in ev.summary[0]
    with pytest.raises(ValueError, match="dict \\{shots per class: TaskBatch\\}"):
        bm.evaluate(fam.oracle_predict, b, shots=(1,), oracle=False)
