"""Robustness: the kNN classifier and its soft surrogate, attacks from the libraries on real (tiny) models,
AutoAttack's checks captured, the corruption set, and the attack / corrupt commands."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.robustness.corruptions import CORRUPTIONS, corrupt
from selfsup.evaluate.probes import knn_predict
from selfsup.robustness import attacks as robustness
from selfsup.robustness.attacks import (AttackSpec, AttackSuite, FeatureBank, KNNModel, corruption_report, predict,
                                        robustness_report, run_attack)
from selfsup.models import SmallCNN

from .helpers import run
from .helpers import tiny_cfg


def _blobs(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 1, 12, 12, generator=g) * 0.3
    for i in range(n):
        c = 2 if y[i] == 0 else 7
        x[i, 0, 3:9, c:c + 3] += 0.6
    return x.clamp(0, 1), y


def _trained_cnn():
    torch.manual_seed(0)
    x, y = _blobs(128)
    net = nn.Sequential(SmallCNN(1, (4, 8), pool=1), nn.Linear(8, 2))
    opt = torch.optim.Adam(net.parameters(), 0.02)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval(), x, y


def test_knn_model_matches_the_evaluation_knn_and_bpda_has_its_outputs_and_the_surrogate_gradient():
    torch.manual_seed(0)
    backbone = SmallCNN(1, (4, 8), pool=1).eval()
    bank_x, bank_y = _blobs(80, 1)
    q, _ = _blobs(20, 2)
    with torch.no_grad():
        bank_f, q_f = backbone(bank_x), backbone(q)
    knn = KNNModel(backbone, FeatureBank(bank_f, bank_y), k=5, temperature=0.1)
    assert torch.equal(predict(knn, q), knn_predict(bank_f, bank_y, q_f, 5, 0.1))
    soft = KNNModel(backbone, FeatureBank(bank_f, bank_y), k=5, mode="soft")
    bpda = KNNModel(backbone, FeatureBank(bank_f, bank_y), k=5, temperature=0.1, mode="bpda")
    with torch.no_grad():
        assert torch.equal(bpda(q), knn(q))  # the attacked model is exactly the classifier
    grads = []
    for m in (soft, bpda):
        qq = q.clone().requires_grad_(True)
        m(qq)[:, 0].sum().backward()
        grads.append(qq.grad)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1])
    with pytest.raises(ValueError):
        KNNModel(backbone, FeatureBank(bank_f, bank_y), mode="exact")


def test_gradient_attacks_stay_in_the_ball_and_break_an_undefended_model():
    net, x, y = _trained_cnn()
    clean = float((predict(net, x) == y).float().mean())
    assert clean > 0.9
    acc = {}
    for name in ("fgsm", "pgd"):
        adv, _ = run_attack(AttackSpec(name, eps=0.3), net, x, y)
        assert float((adv - x).abs().max()) <= 0.3 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        acc[name] = float((predict(net, adv) == y).float().mean())
    assert acc["fgsm"] < clean - 0.3 and acc["pgd"] < 0.3 and acc["pgd"] <= acc["fgsm"]
    rep = robustness_report(net, x[:16], y[:16], AttackSuite([0.3], ["fgsm", "pgd", "autoattack"]))
    per = rep["eps"]["0.3"]
    assert per["autoattack"]["accuracy"] <= per["fgsm"]["accuracy"] < rep["clean"]


def test_worst_case_is_per_image_over_the_clean_prediction_and_every_attack(monkeypatch):
    """An image counts as robust only if it is right clean and under every attack: with attack A breaking images 0-2
    and B images 3-4, and both "fixing" image 9 (wrong clean), worst case is 4/10, below min(A, B) = 7/10."""
    x = torch.tensor([0.4, 0.6, 0.4, 0.6, 0.4, 0.6, 0.4, 0.6, 0.4, 0.6]).view(10, 1, 1, 1)
    y = (x.flatten() > 0.5).long()
    y[9] = 0  # misclassified clean
    net = nn.Sequential(nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[-10.0], [10.0]]))
        net[1].bias.copy_(torch.tensor([5.0, -5.0]))  # class 1 iff pixel > 0.5
    flips = {"fgsm": [0, 1, 2, 9], "pgd": [3, 4, 9]}

    def fake_attack(spec, model, xx, yy, *args, **kwargs):
        adv = xx.clone()
        adv[flips[spec.name]] = 1 - adv[flips[spec.name]]  # 0.4 <-> 0.6: across the boundary, within eps = 0.2
        return adv, []

    monkeypatch.setattr(robustness, "run_attack", fake_attack)
    rep = robustness_report(net, x, y, AttackSuite([0.2], ["fgsm", "pgd"]))
    per = rep["eps"]["0.2"]
    assert rep["clean"] == pytest.approx(0.9)
    assert per["fgsm"]["accuracy"] == pytest.approx(0.7) and per["pgd"]["accuracy"] == pytest.approx(0.8)
    assert per["worst_case"]["accuracy"] == pytest.approx(0.4)


def test_knn_is_attacked_by_bpda_and_scored_on_the_real_knn():
    torch.manual_seed(0)
    net, x, y = _trained_cnn()
    backbone = net[0]
    with torch.no_grad():
        f = backbone(x)
    knn, bpda = KNNModel(backbone, FeatureBank(f, y), k=5), KNNModel(backbone, FeatureBank(f, y), k=5, mode="bpda")
    rep = robustness_report(bpda, x[:12], y[:12], AttackSuite([0.3], ["pgd", "square"]))
    per = rep["eps"]["0.3"]
    assert set(per) == {"pgd", "square", "worst_case"}
    assert rep["clean"] == float((predict(knn, x[:12]) == y[:12]).float().mean())
    assert min(per["pgd"]["accuracy"], per["square"]["accuracy"]) < rep["clean"]
    # the surrogate's gradient is what makes PGD work: on the hard kNN alone it is weaker or equal
    hard = robustness_report(knn, x[:12], y[:12], AttackSuite([0.3], ["pgd"]))["eps"]["0.3"]["pgd"]["accuracy"]
    assert per["pgd"]["accuracy"] <= hard


def test_corruptions_are_deterministic_shaped_and_at_least_ten():
    assert len(CORRUPTIONS) >= 10
    x = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    for name in CORRUPTIONS:
        for s in (1, 5):
            a, b = corrupt(x, name, s, seed=3), corrupt(x, name, s, seed=3)
            assert a.shape == x.shape and a.dtype == torch.uint8 and torch.equal(a, b), name
    assert torch.equal(corrupt(x, "invert"), 255 - x)
    assert not torch.equal(corrupt(x, "gaussian_noise", 5, seed=1), corrupt(x, "gaussian_noise", 5, seed=2))
    with pytest.raises(ValueError):
        corrupt(x, "gaussian_noise", 6)


def test_corruption_report_structure_and_clean_accuracy():
    net, x, y = _trained_cnn()
    imgs = (x * 255).round().to(torch.uint8)
    rep = corruption_report(net, imgs[:32], y[:32], ["gaussian_noise", "invert"], severities=(1, 5))
    assert rep["clean"] == pytest.approx(float((predict(net, imgs[:32].float() / 255) == y[:32]).float().mean()))
    assert set(rep["corruptions"]) == {"gaussian_noise", "invert"} and set(rep["corruptions"]["invert"]) == {"1", "5"}
    inverted = float((predict(net, (255 - imgs[:32]).float() / 255) == y[:32]).float().mean())
    assert rep["corruptions"]["invert"] == {"1": pytest.approx(inverted), "5": pytest.approx(inverted)}
    assert inverted < rep["clean"]  # the blob becomes a dark patch on a bright field
    cells = [a for per in rep["corruptions"].values() for a in per.values()]
    assert rep["mean_corruption_accuracy"] == pytest.approx(sum(cells) / 4)


def test_attack_and_corrupt_commands(npz_data, tmp_path):  # noqa: F811
    import yaml

    from selfsup.workflows import pretrain

    r = pretrain(tiny_cfg(npz_data, tmp_path, "rob", max_steps=4), progress=False, evaluate=False)
    out = run("attack", str(r.run_dir), "--classifier", "linear", "--attack", "fgsm,pgd", "--eps", "0.1", "--n", "24")
    assert out.returncode == 0, out.stderr
    rep = json.loads((r.run_dir / "robustness_linear.json").read_text())
    assert rep["n"] == 24 and set(rep["eps"]["0.1"]) == {"fgsm", "pgd", "worst_case"}
    out = run("corrupt", str(r.run_dir), "--classifier", "knn", "--n", "20", "--corruptions", "stripe,fog")
    assert out.returncode == 0, out.stderr
    assert set(json.loads((r.run_dir / "corruptions_knn.json").read_text())["corruptions"]) == {"stripe", "fog"}
    for args, needles in ((["--eps", "2"], ("--eps", "(0, 1]")), (["--attack", "magic"], ("unknown attack 'magic'",)),
                          (["--classifier", "tree"], ("unknown classifier 'tree'",)),
                          (["--device", "cuda:97"], ("device 'cuda:97' is not available",)),
                          (["--device", "gpu9"], ("device 'gpu9' is not a torch device",))):
        bad = run("attack", str(r.run_dir), *args)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert all(n in bad.stderr for n in needles), bad.stderr  # names the option / the rejected value
    bad = run("corrupt", str(r.run_dir), "--device", "cuda:97")
    assert bad.returncode == 2 and "device 'cuda:97' is not available" in bad.stderr, bad.stderr
    assert yaml.safe_load((r.run_dir / "config.yaml").read_text())["name"] == "rob"


def test_robustness_imports_no_other_capability():
    """Robustness stands on the core pipeline only: the classifier it attacks is selfsup.models.classifier's."""
    import ast
    from pathlib import Path

    import selfsup

    others = ("finetune", "streams", "takeaways")
    for path in (Path(selfsup.__file__).parent / "robustness").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = (node.module or "").removeprefix("selfsup.") if node.level != 1 else ""
                assert mod.split(".")[0] not in others, f"{path.name}:{node.lineno} imports {node.module}"


# ---------------------------------------------------------------------------------------------- adversarial training
def test_training_pgd_matches_torchattacks_pgd_on_the_same_model():
    import torchattacks

    from selfsup.robustness.adversarial_training import PGDStart, pgd

    net, x, y = _trained_cnn()
    ours = pgd(lambda z: nn.functional.cross_entropy(net(z), y), x, eps=0.1, steps=7, alpha=0.02,
               start=PGDStart(random=False))
    lib = torchattacks.PGD(net, eps=0.1, alpha=0.02, steps=7, random_start=False)(x, y)
    assert (ours - lib).abs().max() < 1e-5
    assert float((ours - x).abs().max()) <= 0.1 + 1e-6


def test_supervised_adversarial_losses_exceed_the_clean_loss():
    from selfsup.robustness.adversarial_training import SupervisedAdversary, supervised_adversarial_loss
    from selfsup.models.classifier import Classifier
    from selfsup.finetune.objectives import Objective

    net, x, y = _trained_cnn()
    clf = Classifier(net[0], 2, Objective(), epochs=1)
    clf.head = net[1]
    clf.train()
    clean = nn.functional.cross_entropy(clf.head(clf.backbone(x)), y)
    for kind in ("pgd", "trades"):
        torch.manual_seed(0)
        adv = SupervisedAdversary(kind, 0.2, 5, 6.0, seed=0, device=x.device)
        loss = supervised_adversarial_loss(adv, clf, x, y, torch.arange(len(x)))
        assert float(loss.detach()) > float(clean.detach()) and clf.training, kind
        loss.backward()
        assert all(p.grad is not None for p in clf.head.parameters())


def test_self_supervised_adversarial_training_runs_and_rejects_impure_methods(npz_data, tmp_path):  # noqa: F811
    from selfsup.errors import TrainingError
    from selfsup.robustness.adversarial_training import AdversarialSSL
    from selfsup.config import load_config
    from selfsup.methods import build_method
    from selfsup.workflows import pretrain

    cfg = load_config(tiny_cfg(npz_data, tmp_path, "x"))
    torch.manual_seed(0)
    m = build_method(cfg, 1)
    views = [torch.rand(16, 1, 16, 16), torch.rand(16, 1, 16, 16)]
    with torch.no_grad():
        clean = float(m(views))
    pen = AdversarialSSL("instance", eps=0.2, steps=3, device=views[0].device, weight=1.0).penalty(m, views)
    assert float(pen.detach()) > clean  # the attack raised the SSL loss of the pair
    for kind in ("instance", "mi"):
        r = pretrain(tiny_cfg(npz_data, tmp_path, f"adv-{kind}", max_steps=4, adversary={"mode": kind, "steps": 2}),
                     progress=False, evaluate=False)
        rows = [json.loads(ln) for ln in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert any("penalty" in row and row["penalty"] > 0 for row in rows)
    with pytest.raises(TrainingError, match="updates state"):
        pretrain(tiny_cfg(npz_data, tmp_path, "adv-moco", method="moco", max_steps=2,
                          adversary={"mode": "instance"}), progress=False, evaluate=False)


def test_finetune_with_pgd_and_trades(npz_data, tmp_path):  # noqa: F811
    from selfsup.finetune.finetune_workflow import finetune

    from .test_finetune import ft_cfg

    for kind in ("pgd", "trades"):
        res = finetune(ft_cfg(npz_data, tmp_path, f"at-{kind}", "ce", {"batch_size": 32, "lr": 0.2}, noise="none",
                              adversary={"mode": kind, "steps": 2}), progress=False)
        assert res["test_acc_last"] >= 0.95, (kind, res["epochs"])  # still learns the task on attacked images
    run_dir = next(d for d in tmp_path.iterdir() if d.name.startswith("at-pgd"))  # attack the fine-tuned network
    out = run("attack", str(run_dir), "--classifier", "finetuned", "--attack", "fgsm", "--eps", "0.1", "--n", "16")
    assert out.returncode == 0, out.stderr
    rep = json.loads((run_dir / "robustness_finetuned.json").read_text())
    assert rep["n"] == 16 and set(rep["eps"]["0.1"]) == {"fgsm", "worst_case"}
    assert rep["clean"] == 1.0  # the fine-tuned network was attacked (an untrained one scores ~0.5)


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_inference_copy_keeps_outputs_and_input_gradients(name):
    """Attacks run on the BatchNorm-folded channels_last copy: same logits and same input gradient as the model."""
    from selfsup.evaluate.features import inference_copy
    from selfsup.models import build_backbone

    torch.manual_seed(0)
    net = build_backbone(name, 1)
    net.train()
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for _ in range(3):
            net(torch.rand(16, 1, 28, 28) * 2)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    net.eval()
    fused = inference_copy(net, channels_last=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.rand(8, 1, 28, 28, requires_grad=True)
    g_ref, = torch.autograd.grad(net(x).square().sum(), x)
    g, = torch.autograd.grad(fused(x).square().sum(), x)
    torch.testing.assert_close(fused(x), net(x), atol=1e-4, rtol=1e-4)
    cos = F.cosine_similarity(g.flatten(1), g_ref.flatten(1)).min()  # float32 rounding can flip a ReLU: compare
    assert cos > 0.999, cos  # directions, and the sign PGD steps by
    assert (g.sign() == g_ref.sign()).float().mean() > 0.99


def test_run_attack_leaves_the_model_in_eval_mode():
    """torchattacks restores a training-mode model to training mode; BatchNorm would then score the adversarial
    images on batch statistics. run_attack evaluates in eval mode and leaves the model there."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 3))
    net.train()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 3, (8,))
    run_attack(AttackSpec("pgd", 0.05, steps=2), net, x, y)
    assert not net.training and not net[1].training


def test_autoattack_components_run_alone_and_autoattack_is_at_least_as_strong():
    """apgd-ce / apgd-t are AutoAttack-standard's first components alone (to see which one does the work): each stays
    in the ε-ball and breaks an undefended 5-class model; full AutoAttack starts with the same APGD-CE run, so it can
    only be stronger."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).eval()
    x = torch.rand(24, 1, 8, 8)
    with torch.no_grad():
        y = net(x).argmax(1)  # clean accuracy 1 by construction
    rep = robustness_report(net, x, y, AttackSuite([0.2, 0.02], ["apgd-ce", "apgd-t", "autoattack"]))
    assert rep["clean"] == 1.0
    assert all(rep["eps"]["0.2"][a]["accuracy"] == 0 for a in ("apgd-ce", "apgd-t", "autoattack"))
    per = rep["eps"]["0.02"]  # a small ball: some images survive, and the components differ
    assert 0 < per["apgd-t"]["accuracy"] < 1 and 0 < per["apgd-ce"]["accuracy"] < 1
    assert per["autoattack"]["accuracy"] <= min(per["apgd-ce"]["accuracy"], per["apgd-t"]["accuracy"])
    with pytest.raises(ValueError, match="apgd-t"):
        run_attack(AttackSpec("apgd", 0.2), net, x, y)
    three = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()  # AutoAttack without APGD-T (needs 4 classes)
    with pytest.raises(ValueError, match="at least 4 classes"):
        run_attack(AttackSpec("apgd-t", 0.2), three, x, y % 3)
    adv, _ = run_attack(AttackSpec("autoattack", 0.02), three, x, three(x).argmax(1).detach())
    assert float((adv - x).abs().max()) <= 0.02 + 1e-6
