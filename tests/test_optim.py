"""Adam and AdamW against the papers' update rules (NumPy) and torch.optim, gradient-norm clipping
against NumPy and torch's clip_grad_norm_, schedules with warm-up against torch's
LinearLR + SequentialLR, argument checks, training with Adam, and thread-count independence."""

import math
import warnings

import numpy as np
import pytest

import juanji
from juanji import nn, optim

SHAPES = [(3, 4), (3,), (2, 5), (2,)]


def model_for(dtype, seed=0):
    """A model whose parameters have SHAPES, with seeded values (each parameter distinct)."""
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(5, 2))
    model.to(dtype)
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] = rng.standard_normal(p.data.shape)
    return model


def gradient_steps(dtype, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]


def run(opt, params, steps):
    for grads in steps:
        for p, g in zip(params, grads):
            p.grad[...] = g
        opt.step()
    return [p.data.copy() for p in params]


def adam_reference(weights, steps, lr, betas, eps, weight_decay, decoupled):
    """Kingma & Ba's Algorithm 1 with an L2 term in the gradient (Adam) or Loshchilov & Hutter's
    decoupled decay w <- w - lr*wd*w (AdamW), in float64."""
    b1, b2 = betas
    ws = [w.astype(np.float64) for w in weights]
    ms = [np.zeros_like(w) for w in ws]
    vs = [np.zeros_like(w) for w in ws]
    for t, grads in enumerate(steps, start=1):
        for i, g in enumerate(grads):
            g = g.astype(np.float64)
            if decoupled:
                ws[i] = ws[i] - lr * weight_decay * ws[i]
            else:
                g = g + weight_decay * ws[i]
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            m_hat, v_hat = ms[i] / (1 - b1**t), vs[i] / (1 - b2**t)
            ws[i] = ws[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return ws


TOLERANCES = {"float32": {"rtol": 2e-5, "atol": 2e-6}, "float64": {"rtol": 1e-12, "atol": 1e-14}}
ADAM_CASES = [("Adam", 0.0), ("Adam", 0.1), ("AdamW", 0.01), ("AdamW", 0.3)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,weight_decay", ADAM_CASES)
def test_adam_matches_the_papers_update_rules(dtype, name, weight_decay):
    model = model_for(dtype)
    params = model.parameters()
    w0 = [p.data.copy() for p in params]
    steps = gradient_steps(dtype, 6)
    opt = getattr(optim, name)(params, lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay)
    got = run(opt, params, steps)
    expected = adam_reference(w0, steps, 0.05, (0.8, 0.95), 1e-6, weight_decay, decoupled=name == "AdamW")
    for g, e in zip(got, expected):
        assert g.dtype == np.dtype(dtype)
        np.testing.assert_allclose(g, e, **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,weight_decay", ADAM_CASES)
def test_adam_matches_torch(dtype, name, weight_decay):
    torch = pytest.importorskip("torch")
    model = model_for(dtype)
    params = model.parameters()
    tensors = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    steps = gradient_steps(dtype, 5)
    opt = getattr(optim, name)(params, lr=0.01, weight_decay=weight_decay)
    reference = getattr(torch.optim, name)(tensors, lr=0.01, weight_decay=weight_decay)
    got = run(opt, params, steps)
    for grads in steps:
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g)
        reference.step()
    for g, t in zip(got, tensors):
        np.testing.assert_allclose(g, t.detach().numpy(), **TOLERANCES[dtype])


def test_adam_defaults_and_properties():
    params = model_for("float32").parameters()
    adam, adamw = optim.Adam(params), optim.AdamW(params)
    assert isinstance(adam, optim.Optimizer) and isinstance(adamw, optim.Adam)
    assert (adam.lr, adam.betas, adam.eps, adam.weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 0.0)
    assert (adamw.lr, adamw.weight_decay, adamw.max_grad_norm) == (1e-3, 0.01, None)
    adam.lr = 0.5
    assert adam.lr == 0.5
    assert optim.SGD(params, lr=0.1, max_grad_norm=2.0).max_grad_norm == 2.0


def clipped(grads, max_norm):
    norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    factor = max_norm / (norm + 1e-6)
    return [g * factor if factor < 1 else g for g in grads]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("max_norm", [0.5, 3.0, 100.0])
def test_clipping_matches_numpy_and_the_update_uses_the_clipped_gradients(dtype, max_norm):
    model = model_for(dtype)
    params = model.parameters()
    w0 = [p.data.copy() for p in params]
    grads = gradient_steps(dtype, 1)[0]
    got = run(optim.SGD(params, lr=0.1, max_grad_norm=max_norm), params, [grads])
    expected = clipped(grads, max_norm)
    for p, g, e, w, new in zip(params, grads, expected, w0, got):
        np.testing.assert_allclose(p.grad, e, **TOLERANCES[dtype])
        np.testing.assert_allclose(new, w - 0.1 * e, **TOLERANCES[dtype])
        if max_norm == 100.0:  # under the limit: the gradients are left as they are
            np.testing.assert_array_equal(p.grad, g)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_clipping_matches_torch_clip_grad_norm(dtype):
    torch = pytest.importorskip("torch")
    model = model_for(dtype)
    params = model.parameters()
    grads = gradient_steps(dtype, 1, seed=7)[0]
    tensors = [torch.zeros(g.shape, dtype=getattr(torch, dtype), requires_grad=True) for g in grads]
    for t, g in zip(tensors, grads):
        t.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_norm_(tensors, 1.5)
    run(optim.Adam(params, lr=0.0, max_grad_norm=1.5), params, [grads])
    for p, t in zip(params, tensors):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), **TOLERANCES[dtype])


def test_clipped_adam_matches_torch():
    torch = pytest.importorskip("torch")
    model = model_for("float64")
    params = model.parameters()
    tensors = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    steps = [[g * 10 for g in grads] for grads in gradient_steps("float64", 4)]
    got = run(optim.AdamW(params, lr=0.01, max_grad_norm=1.0), params, steps)
    reference = torch.optim.AdamW(tensors, lr=0.01)
    for grads in steps:
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_norm_(tensors, 1.0)
        reference.step()
    for g, t in zip(got, tensors):
        np.testing.assert_allclose(g, t.detach().numpy(), rtol=1e-12, atol=1e-14)


def lrs(schedule, opt, steps):
    out = [opt.lr]
    for _ in range(steps):
        schedule.step()
        out.append(opt.lr)
    return out


def test_warmup_then_step_decay_by_hand():
    opt = optim.SGD(model_for("float32").parameters(), lr=1.0)
    schedule = optim.StepLR(opt, step_size=2, gamma=0.5, warmup_epochs=2)
    # (s+1)/(W+1) for the first W steps, then StepLR from its own epoch 0.
    np.testing.assert_allclose(lrs(schedule, opt, 7), [1 / 3, 2 / 3, 1, 1, 0.5, 0.5, 0.25, 0.25])
    assert schedule.epoch == 7


def test_per_step_schedule_counts_epochs_in_steps():
    opt = optim.Adam(model_for("float32").parameters(), lr=1.0)
    schedule = optim.CosineLR(opt, t_max=2, eta_min=0.0, warmup_epochs=1, steps_per_epoch=2)
    # Past t_max the lr stays at eta_min (torch's CosineAnnealingLR would rise again).
    expected = [1 / 3, 2 / 3, 1.0] + [(1 + math.cos(math.pi * min(k, 4) / 4)) / 2 for k in range(1, 6)]
    np.testing.assert_allclose(lrs(schedule, opt, 7), expected, atol=1e-15)
    assert (schedule.steps, schedule.epoch) == (7, 3)


def test_no_warmup_keeps_the_per_epoch_behaviour():
    opt = optim.SGD(model_for("float32").parameters(), lr=0.4)
    np.testing.assert_allclose(lrs(optim.StepLR(opt, 2, 0.5), opt, 4), [0.4, 0.4, 0.2, 0.2, 0.1])


@pytest.mark.parametrize("kind", ["step", "cosine"])
@pytest.mark.parametrize("warmup,steps_per_epoch", [(1, 1), (3, 1), (2, 3)])
def test_warmup_schedules_match_torch(kind, warmup, steps_per_epoch):
    torch = pytest.importorskip("torch")
    opt = optim.AdamW(model_for("float32").parameters(), lr=0.1)
    reference_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    total = warmup * steps_per_epoch
    if kind == "step":
        schedule = optim.StepLR(opt, step_size=2, gamma=0.3, warmup_epochs=warmup, steps_per_epoch=steps_per_epoch)
        main = torch.optim.lr_scheduler.StepLR(reference_opt, step_size=2 * steps_per_epoch, gamma=0.3)
    else:
        schedule = optim.CosineLR(opt, t_max=4, eta_min=0.01, warmup_epochs=warmup, steps_per_epoch=steps_per_epoch)
        main = torch.optim.lr_scheduler.CosineAnnealingLR(reference_opt, T_max=4 * steps_per_epoch, eta_min=0.01)
    linear = torch.optim.lr_scheduler.LinearLR(reference_opt, start_factor=1 / (total + 1), total_iters=total)
    reference = torch.optim.lr_scheduler.SequentialLR(reference_opt, [linear, main], milestones=[total])
    expected = [reference_opt.param_groups[0]["lr"]]
    steps = total + 4 * steps_per_epoch  # to the cosine's end (torch's would rise again after it)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation notices about its schedulers' internals
        for _ in range(steps):
            reference_opt.step()
            reference.step()
            expected.append(reference_opt.param_groups[0]["lr"])
    np.testing.assert_allclose(lrs(schedule, opt, steps), expected, rtol=1e-9)


BAD_OPTIMIZERS = [
    (lambda p: optim.Adam(p, lr=-1.0), "lr"), (lambda p: optim.AdamW(p, lr=float("nan")), "lr"),
    (lambda p: optim.Adam(p, betas=(1.0, 0.999)), "betas"), (lambda p: optim.AdamW(p, betas=(0.9, -0.1)), "betas"),
    (lambda p: optim.Adam(p, eps=-1e-8), "eps"), (lambda p: optim.AdamW(p, eps=float("inf")), "eps"),
    (lambda p: optim.Adam(p, weight_decay=-0.1), "weight_decay"),
    (lambda p: optim.AdamW(p, weight_decay=float("nan")), "weight_decay"),
    (lambda p: optim.Adam(p, max_grad_norm=0.0), "max_grad_norm"),
    (lambda p: optim.SGD(p, lr=0.1, max_grad_norm=float("inf")), "max_grad_norm"),
    (lambda p: optim.AdamW(p, max_grad_norm=-1.0), "max_grad_norm"),
    (lambda p: optim.StepLR(optim.Adam(p), 1, warmup_epochs=-1), "warmup_epochs"),
    (lambda p: optim.CosineLR(optim.Adam(p), 1, steps_per_epoch=0), "steps_per_epoch"),
]


@pytest.mark.parametrize("make,name", BAD_OPTIMIZERS)
def test_bad_arguments_name_the_argument(make, name):
    with pytest.raises(ValueError, match=f"^{name}: "):
        make(model_for("float32").parameters())


def test_bad_lr_assignment_and_a_bad_schedule_leave_the_lr_alone():
    opt = optim.Adam(model_for("float32").parameters(), lr=0.1)
    with pytest.raises(ValueError, match="^lr: "):
        opt.lr = -0.5
    with pytest.raises(ValueError, match="^step_size: "):
        optim.StepLR(opt, 0, warmup_epochs=3)
    assert opt.lr == 0.1


def test_train_step_with_adam_decreases_the_loss():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 6)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) > 0).astype(np.int64)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = optim.AdamW(model.parameters(), lr=0.01, max_grad_norm=5.0)
    schedule = optim.CosineLR(opt, t_max=40, warmup_epochs=5)
    losses = []
    for _ in range(40):
        losses.append(model.train_step(x, y, nn.CrossEntropyLoss(), opt))
        schedule.step()
    assert losses[-1] < 0.5 * losses[0]


def test_adam_state_restarts_with_a_new_dtype():
    model, fresh = model_for("float32"), model_for("float32", seed=5)
    opt = optim.Adam(model.parameters(), lr=0.01)
    run(opt, model.parameters(), gradient_steps("float32", 3))
    model.to("float64")
    fresh.to("float64")
    for p, q in zip(model.parameters(), fresh.parameters()):
        q.data[...] = p.data
    steps = gradient_steps("float64", 2, seed=9)
    got = run(opt, model.parameters(), steps)
    expected = run(optim.Adam(fresh.parameters(), lr=0.01), fresh.parameters(), steps)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


@pytest.fixture
def restore_threads():
    threads = juanji.get_num_threads()
    yield
    juanji.set_num_threads(threads)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_updates_and_clipping_do_not_depend_on_the_thread_count(name, restore_threads):
    # 300x200 weights: past the size at which the updates and the norm run in parallel.
    rng = np.random.default_rng(11)
    grads = [[rng.standard_normal(s).astype(np.float32) for s in [(200, 300), (200,)]] for _ in range(3)]
    results = []
    for threads in (1, 2):
        juanji.set_num_threads(threads)
        model = nn.Sequential(nn.Linear(300, 200))
        for p in model.parameters():
            p.data[...] = 0.01
        params = model.parameters()
        opt = getattr(optim, name)(params, lr=0.01, max_grad_norm=1.0, **({"momentum": 0.9} if name == "SGD" else {}))
        results.append(run(opt, params, grads) + [p.grad.copy() for p in params])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
