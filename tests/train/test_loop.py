"""Training loop: optimizer groups, one FD step by hand, schedules, a tiny fit, FLOPs and latency."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from automl_factor import models
from automl_factor.factorization import (FactorizedLayer, LayerPlan, collapse, factor_parameters, factorize,
                                         uniform_plan)
from automl_factor.train.data import DataBundle, Dataset, load
from automl_factor.train.loop import (TrainConfig, TrainingDiverged, compile_seconds, fit, make_optimizer,
                                      make_schedule, steps_per_epoch, train_one_epoch)
from automl_factor.train.measure import count_flops, latency_ms


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


PLAN = {"1": LayerPlan(rank=3), "3": LayerPlan(kind="deep", rank=2), "5": LayerPlan(rank=2, regularizer="wd")}


def _ids(params):
    return {id(p) for p in params}


def _plan(first: str) -> dict:
    """PLAN with layer "1" decayed by ``first`` (fd, wd or none)."""
    return {**PLAN, "1": PLAN["1"].model_copy(update={"regularizer": first})}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("first", ["fd", "wd", "none"])
def test_make_optimizer_groups_follow_the_plan(first, optimizer) -> None:
    plan = _plan(first)
    fmodel = factorize(_mlp(), plan)
    opt = make_optimizer(fmodel, TrainConfig(optimizer=optimizer, weight_decay=3e-4), plan)
    all_ids = _ids(fmodel.parameters())
    grouped = [_ids(g["params"]) for g in opt.param_groups]
    assert set().union(*grouped) == all_ids and sum(len(g) for g in grouped) == len(all_ids)
    by_decay = {g["weight_decay"]: _ids(g["params"]) for g in opt.param_groups}
    # factors decayed by FD (layer 3, and 1 unless wd/none) or by nothing get no weight decay; all else 3e-4
    undecayed = _ids([fmodel[3].U, fmodel[3].V, fmodel[3].M] + ([fmodel[1].U, fmodel[1].V] if first != "wd" else []))
    assert by_decay[0.0] == undecayed and by_decay[3e-4] == all_ids - undecayed
    assert _ids([fmodel[5].U, fmodel[5].V]) <= by_decay[3e-4]  # "wd" layers keep ordinary decay
    assert _ids(factor_parameters(fmodel, plan, "fd")) == undecayed - (_ids([fmodel[1].U, fmodel[1].V])
                                                                        if first == "none" else set())
    assert isinstance(opt, torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW)
    # without a plan every factorized layer is FD (the paper's recipe)
    no_plan = {g["weight_decay"]: _ids(g["params"]) for g in make_optimizer(fmodel, TrainConfig(), None).param_groups}
    assert no_plan[0.0] == _ids(p for i in (1, 3, 5) for p in fmodel[i].factor_parameters())


def _bundle(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (n,), generator=g)
    split = Dataset(images, labels)
    return DataBundle(train=split, val=None, test=split, num_classes=3, mean=(0.4,), std=(0.3,), crop_padding=0,
                      flip=False)


def _dense_fd(fmodel, plan) -> torch.Tensor:
    return sum(0.5 * m.weight_matrix().square().sum() for name, m in fmodel.named_modules()
               if isinstance(m, FactorizedLayer) and plan[name].regularizer == "fd")


@pytest.mark.parametrize("first", ["fd", "wd", "none"])
def test_one_sgd_step_matches_manual_update(first) -> None:
    lr, wd = 0.1, 0.05
    plan = _plan(first)
    fmodel = factorize(_mlp(), plan)
    with torch.no_grad():  # move off SI so that M != I
        for i, p in enumerate(fmodel.parameters()):
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    bundle = _bundle()
    config = TrainConfig(epochs=1, batch_size=len(bundle.train), lr=lr, momentum=0.0, weight_decay=wd)
    # manual: one full batch (order does not matter for a mean loss without batch norm)
    x = (bundle.train.images.float() - 0.4 * 255) / (0.3 * 255)
    loss = F.cross_entropy(fmodel(x), bundle.train.labels)
    params = list(fmodel.parameters())
    g_loss = torch.autograd.grad(loss, params)
    fd_ids, none_ids = _ids(factor_parameters(fmodel, plan, "fd")), _ids(factor_parameters(fmodel, plan, "none"))
    g_fd = dict(zip(map(id, params), torch.autograd.grad(_dense_fd(fmodel, plan), params, allow_unused=True)))
    expected = []
    for p, g in zip(params, g_loss):
        if id(p) in fd_ids:
            expected.append(p.detach() - lr * (g + wd * g_fd[id(p)]))
        elif id(p) in none_ids:
            expected.append(p.detach() - lr * g)
        else:
            expected.append(p.detach() - lr * (g + wd * p.detach()))
    opt = make_optimizer(fmodel, config, plan)
    schedule = make_schedule(opt, config, steps_per_epoch=1)
    metrics = train_one_epoch(fmodel, bundle, opt, schedule, config, generator=torch.Generator().manual_seed(0),
                              plan=plan)
    assert metrics["images"] == len(bundle.train)
    assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-5)
    for (name, p), want in zip(fmodel.named_parameters(), expected):
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6, msg=name)


def test_one_adamw_step_applies_decoupled_fd() -> None:
    lr, wd = 0.01, 0.5
    fmodel = factorize(_mlp(), PLAN)
    bundle = _bundle()
    config = TrainConfig(epochs=1, batch_size=len(bundle.train), lr=lr, weight_decay=wd, optimizer="adamw")
    fd_params = factor_parameters(fmodel, PLAN)
    g_fd = torch.autograd.grad(_dense_fd(fmodel, PLAN), fd_params)
    before = [p.detach().clone() for p in fd_params]
    # reference: an untouched copy trained with FD switched off and no AdamW decay on the factors
    ref = factorize(_mlp(), PLAN)
    ref.load_state_dict(fmodel.state_dict())
    ref_opt = make_optimizer(ref, config, PLAN)
    fd_ref = _ids(factor_parameters(ref, PLAN))
    assert all(g["weight_decay"] == 0.0 for g in ref_opt.param_groups if _ids(g["params"]) == fd_ref)
    opt = make_optimizer(fmodel, config, PLAN)
    train_one_epoch(fmodel, bundle, opt, make_schedule(opt, config, 1), config,
                    generator=torch.Generator().manual_seed(0), plan=PLAN)
    ref_plan = {name: layer.model_copy(update={"regularizer": "none"}) if layer.regularizer == "fd" else layer
                for name, layer in PLAN.items()}  # FD switched off, factors still free of weight decay
    ref_opt = make_optimizer(ref, config, ref_plan)
    train_one_epoch(ref, bundle, ref_opt, make_schedule(ref_opt, config, 1), config,
                    generator=torch.Generator().manual_seed(0), plan=ref_plan)
    ref_fd = factor_parameters(ref, PLAN)
    for p, r, b, g in zip(fd_params, ref_fd, before, g_fd):
        # Adam's step does not depend on the decoupled FD (applied after the gradient), so the only
        # difference to the FD-free run is −lr·λ·∇FD
        torch.testing.assert_close(p.detach(), r.detach() - lr * wd * g, rtol=1e-5, atol=1e-6)
        assert not torch.equal(p.detach(), b)


@pytest.mark.parametrize("epochs,steps", [(4, 10), (8, 25), (1, 100)])
def test_multistep_schedule(epochs, steps) -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    config = TrainConfig(epochs=epochs, lr=0.2)
    schedule = make_schedule(opt, config, steps)
    total = epochs * steps
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    for step, lr in enumerate(lrs):
        want = 0.2 if step < math.ceil(0.5 * total) else 0.02 if step < math.ceil(0.75 * total) else 0.002
        assert lr == pytest.approx(want, rel=1e-9), step
    assert lrs[total // 2] == pytest.approx(0.02) and lrs[-1] == pytest.approx(0.002)


def test_cosine_schedule_with_warmup() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    epochs, steps = 10, 20
    config = TrainConfig(epochs=epochs, lr=1.0, schedule="cosine", warmup_epochs=1)
    schedule = make_schedule(opt, config, steps)
    lrs = []
    for _ in range(epochs * steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    warm = lrs[:steps]
    assert warm == pytest.approx([(i + 1) / steps for i in range(steps)])
    after = lrs[steps:]
    assert after[0] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(after, after[1:]))
    assert after[-1] < 1e-3
    mid = steps + (epochs * steps - steps) // 2
    assert lrs[mid] == pytest.approx(0.5, abs=1e-9)


def test_multistep_with_warmup_ramps_then_steps() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = make_schedule(opt, TrainConfig(epochs=4, lr=0.1, warmup_epochs=0.5), 10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert lrs[5:20] == pytest.approx([0.1] * 15) and lrs[20] == pytest.approx(0.01) and lrs[30] == pytest.approx(0.001)


@pytest.fixture(scope="module")
def digits():
    return load("digits", train_subset=300)


def _tiny_resnet():
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1, width_multiplier=0.5)
    return factorize(model, uniform_plan(model, rank_scale=0.5))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fit_digits_two_epochs(digits, optimizer) -> None:
    fmodel = _tiny_resnet()
    seen = []
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05 if optimizer == "sgd" else 3e-3, optimizer=optimizer)
    history = fit(fmodel, digits, config, seed=0, on_epoch=lambda e, m: seen.append(e))
    assert [h["epoch"] for h in history] == [1, 2] and seen == [1, 2]
    for h in history:
        assert 0.0 <= h["accuracy"] <= 1.0 and 0.0 <= h["train_accuracy"] <= 1.0
        assert math.isfinite(h["loss"]) and h["images"] == 300


def test_fit_with_huge_lr_diverges(digits) -> None:
    with pytest.raises(TrainingDiverged, match="lr"):
        fit(_tiny_resnet(), digits, TrainConfig(epochs=3, batch_size=64, lr=1e6), seed=0)


def test_count_flops_and_latency() -> None:
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10).eval()
    fmodel = factorize(model, uniform_plan(model, params_ratio=0.1)).eval()
    shape = (1, 3, 8, 8)
    flops_f = count_flops(fmodel, shape)
    flops_c = count_flops(collapse(fmodel), shape)
    flops_d = count_flops(model, shape)
    assert flops_f == flops_c > 0
    assert flops_f < flops_d
    # dense flops by hand: 2 · c_out · c_in · kh · kw · H_out · W_out summed over convs, plus the classifier
    hand = 0
    hooks = []

    def hook(mod, inputs, out):
        nonlocal hand
        if isinstance(mod, nn.Conv2d):
            hand += 2 * mod.weight.numel() * out.shape[-2] * out.shape[-1]
        else:
            hand += 2 * mod.weight.numel()

    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.zeros(shape))
    for h in hooks:
        h.remove()
    assert flops_d == hand
    ms = latency_ms(fmodel, shape, min_run_time=0.01)
    assert isinstance(ms, float) and ms > 0


def _small_convnet():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    return factorize(model, {"3": LayerPlan(rank=3), "8": LayerPlan(kind="deep", rank=4)})


def test_compiled_step_follows_the_eager_trajectory() -> None:
    """torch.compile (inductor, on this CPU) of forward+loss, with closed-form FD and SGD: the same
    per-epoch losses, accuracies and final weights as eager, within rtol 1e-4 (generated kernels may
    sum in another order). 256 training images = 4 full batches, so both see the same batches."""
    data = load("digits", val_fraction=0.2, train_subset=256)
    runs = {}
    for compile_step in (False, True):
        model = _small_convnet()
        config = TrainConfig(epochs=3, batch_size=64, lr=0.05, compile=compile_step)
        runs[compile_step] = (model, fit(model, data, config, seed=0))
    (eager, eager_history), (compiled, compiled_history) = runs[False], runs[True]
    assert compile_seconds(compiled) > 0 and compile_seconds(eager) == 0
    torch.testing.assert_close([h["loss"] for h in compiled_history], [h["loss"] for h in eager_history],
                               rtol=1e-4, atol=0)
    assert [h["accuracy"] for h in compiled_history] == pytest.approx([h["accuracy"] for h in eager_history],
                                                                      abs=2 / len(data.val))
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-4, atol=1e-5, msg=name)


def test_compiled_epoch_drops_the_last_partial_batch() -> None:
    data = load("digits", val_fraction=0.2, train_subset=300)
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, compile=True)
    assert steps_per_epoch(300, config) == 4 and steps_per_epoch(300, config.model_copy(update={"compile": False})) == 5
    assert steps_per_epoch(300, config.model_copy(update={"compile": None}), "cpu") == 5  # default: eager on CPU
    history = fit(_small_convnet(), data, config, seed=0)
    assert history[0]["images"] == 256


@pytest.mark.parametrize("epochs,steps", [(12, 23), (10, 7), (5, 3), (3, 10)])
def test_first_epoch_after_decay_is_the_first_epoch_wholly_at_the_lower_rate(epochs, steps) -> None:
    from automl_factor.train import first_epoch_after_decay

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    schedule = make_schedule(opt, TrainConfig(epochs=epochs, lr=0.2), steps)
    lrs_by_epoch = []
    for _ in range(epochs):
        lrs = []
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            schedule.step()
        lrs_by_epoch.append(lrs)
    wholly_lower = [epoch for epoch, lrs in enumerate(lrs_by_epoch, start=1) if max(lrs) < 0.2]
    assert first_epoch_after_decay("multistep", epochs) == wholly_lower[0]
    assert first_epoch_after_decay("cosine", epochs) is None
