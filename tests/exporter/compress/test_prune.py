import numpy as np
import pytest
import torch
from torch import nn

from exporter.compress import compress
from exporter.compress.prune import (
    cubic_sparsity,
    layer_sparsity,
    magnitude_masks,
    prunable_weights,
    prune_model,
)
from exporter.compress.rounding import round_to_grid
from exporter.errors import RecipeError
from exporter.models.zoo import SeedCNN
from exporter.recipe import CompressSpec, FinetuneSpec, PruneSpec, RoundSpec


def _model(seed=0):
    torch.manual_seed(seed)
    return SeedCNN(3, (16, 16), 10)


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.75, 0.9])
def test_layer_scope_is_exact_per_layer(sparsity):
    m = _model()
    prune_model(m, sparsity=sparsity, scope="layer", exclude=())
    for row in layer_sparsity(m):
        assert abs(row["zeros"] - sparsity * row["params"]) <= 1, row


@pytest.mark.parametrize("sparsity", [0.3, 0.75, 0.95])
def test_global_scope_is_exact_overall_and_ranks_by_magnitude(sparsity):
    m = _model()
    before = {n: p.detach().clone() for n, p in prunable_weights(m, ["first_conv"]).items()}
    prune_model(m, sparsity=sparsity, scope="global", exclude=["first_conv"])
    after = prunable_weights(m, ["first_conv"])
    total = sum(w.numel() for w in before.values())
    zeros = sum(int((w == 0).sum()) for w in after.values())
    assert abs(zeros - sparsity * total) <= 1
    kept = torch.cat([before[n][after[n] != 0].abs().flatten() for n in before])
    pruned = torch.cat([before[n][after[n] == 0].abs().flatten() for n in before])
    assert pruned.max() <= kept.min(), "a pruned |w| exceeds a kept |w|"


def test_negative_weights_survive():
    # The seed's `w[w < t] = 0` zeroed every negative weight; ranking by |w| must not.
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[-5.0, 0.1, -0.2, 3.0], [0.05, -4.0, 2.0, -0.01]]))
    model = nn.Sequential(lin)
    prune_model(model, sparsity=0.5, scope="layer", exclude=())
    w = lin.weight.detach()
    assert w[0, 0] == -5.0 and w[1, 1] == -4.0
    assert (w == 0).sum() == 4
    assert w[0, 1] == 0 and w[1, 0] == 0 and w[1, 3] == 0 and w[0, 2] == 0


def test_threshold_uses_absolute_value():
    w = torch.tensor([-0.5, -0.05, 0.05, 0.5, 0.1])
    keep = magnitude_masks({"w": w}, threshold=0.1)["w"]
    assert keep.tolist() == [True, False, False, True, True]


def test_biases_and_excluded_layers_untouched():
    m = _model()
    biases = {n: p.detach().clone() for n, p in m.named_parameters() if n.endswith("bias")}
    first = m.features[0].weight.detach().clone()
    last = m.classifier[3].weight.detach().clone()
    prune_model(m, sparsity=0.9, exclude=["first_conv", "last_fc"])
    for n, p in m.named_parameters():
        if n.endswith("bias"):
            assert torch.equal(p, biases[n])
    assert torch.equal(m.features[0].weight, first)
    assert torch.equal(m.classifier[3].weight, last)


def test_exclude_unknown_layer_is_named():
    with pytest.raises(RecipeError, match="no prunable layer named 'fc9'"):
        prunable_weights(_model(), ["fc9"])


def test_cubic_schedule():
    assert cubic_sparsity(0, 0.8, 100) == 0.0
    assert cubic_sparsity(50, 0.8, 100) == pytest.approx(0.8 * (1 - 0.5**3))
    assert cubic_sparsity(100, 0.8, 100) == 0.8
    assert cubic_sparsity(500, 0.8, 100) == 0.8
    values = [cubic_sparsity(t, 0.8, 100) for t in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))


def _data(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, n)
    return x, y


@pytest.mark.parametrize("schedule", ["gradual", "oneshot"])
def test_masks_hold_through_finetuning(schedule, monkeypatch):
    m = _model()
    x, y = _data()
    spec = CompressSpec(
        prune=PruneSpec(sparsity=0.8, scope="global", exclude=[], schedule=schedule),
        finetune=FinetuneSpec(epochs=3, lr=0.05, batch_size=16),
    )
    # Record the zero set after every optimiser step: once zero (after the ramp), stays zero.
    import exporter.compress as comp

    seen = []
    real_train = comp.train

    def spy_train(model, inputs, labels, cfg, *, after_step, **kw):
        def wrapped():
            after_step()
            seen.append({n: (p == 0).clone() for n, p in prunable_weights(model, []).items()})

        return real_train(model, inputs, labels, cfg, after_step=wrapped, **kw)

    monkeypatch.setattr(comp, "train", spy_train)
    result = compress(m, spec, x, y)
    assert abs(result.pruned_fraction - 0.8) < 1e-3
    final = seen[-1]
    ramp_end = int(len(seen) * comp.RAMP_FRACTION) if schedule == "gradual" else 0
    for step in seen[ramp_end + 1 :]:
        for n in final:
            assert torch.equal(step[n], final[n]), f"mask of {n} changed after the ramp"
    if schedule == "gradual":  # sparsity grows during the ramp
        first = sum(int(v.sum()) for v in seen[0].values())
        last = sum(int(v.sum()) for v in final.values())
        assert first < last


def test_finetune_without_data_is_an_error():
    from exporter.errors import DataError

    spec = CompressSpec(prune=PruneSpec(sparsity=0.5), finetune=FinetuneSpec(epochs=1))
    with pytest.raises(DataError, match="needs training data"):
        compress(_model(), spec, None, None)


def test_rounding_grid_step():
    m = _model()
    weights = prunable_weights(m, [])
    prune_model(m, sparsity=0.5, exclude=[])
    zero_before = {n: (w == 0).clone() for n, w in weights.items()}
    steps = round_to_grid(weights, step=0.01)
    for name, w in weights.items():
        q = w.detach() / steps[name]
        assert torch.allclose(q, torch.round(q), atol=1e-4)
        assert (w[zero_before[name]] == 0).all(), "rounding revived a pruned weight"


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_rounding_bits_levels(bits):
    m = _model()
    weights = prunable_weights(m, [])
    steps = round_to_grid(weights, bits=bits)
    for name, w in weights.items():
        levels = torch.unique(torch.round(w.detach() / steps[name]))
        assert levels.abs().max() <= 2 ** (bits - 1) - 1
        assert len(levels) <= 2**bits - 1


def test_compress_with_rounding_recipe():
    m = _model()
    spec = CompressSpec(prune=PruneSpec(sparsity=0.5, exclude=[]), round=RoundSpec(bits=4))
    res = compress(m, spec, None, None)
    assert set(res.rounding) == set(prunable_weights(m, []))
    assert res.pruned_fraction >= 0.5


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.77])
def test_unstructured_global_masks_equal_a_stable_sort_of_abs_w(sparsity):
    """Few distinct magnitudes, so ties are everywhere: exactly round(sparsity * n) weights go,
    the smallest |w| first and, among equal ones, the earliest (layers in order, row-major)."""
    gen = torch.Generator().manual_seed(3)
    weights = {
        "a.weight": torch.randint(-3, 4, (6, 3, 3, 3), generator=gen).float(),
        "b.weight": torch.randint(-3, 4, (10, 54), generator=gen).float(),
    }
    masks = magnitude_masks(weights, sparsity=sparsity, scope="global")
    flat = np.concatenate([w.abs().numpy().ravel() for w in weights.values()])
    k = round(sparsity * flat.size)
    expected = np.ones(flat.size, dtype=bool)
    expected[np.argsort(flat, kind="stable")[:k]] = False
    got = np.concatenate([m.numpy().ravel() for m in masks.values()])
    assert np.array_equal(got, expected)


def _conv_fc(model: nn.Module) -> dict[str, torch.Tensor]:
    """Conv and Linear weights found by module type (not by the code under test)."""
    return {
        f"{name}.weight": m.weight.detach()
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    }


@pytest.mark.parametrize("round_spec", [RoundSpec(step=1 / 64), RoundSpec(bits=4)])
def test_rounding_covers_the_layers_pruning_leaves_dense(round_spec):
    """compress.round applies to every conv / FC weight, first conv and last FC included (the
    default prune.exclude); BatchNorm and biases are left as they were."""
    m = _model()
    before = {n: p.detach().clone() for n, p in m.state_dict().items()}
    grid = _conv_fc(m)
    # the grid each layer must land on, computed from the weights before compress touches them
    alpha = {
        n: round_spec.step or float(w.abs().max()) / (2 ** (round_spec.bits - 1) - 1)
        for n, w in grid.items()
    }
    spec = CompressSpec(
        prune=PruneSpec(sparsity=0.5),  # exclude defaults to first_conv, last_fc
        finetune=FinetuneSpec(epochs=0),
        round=round_spec,
    )
    assert spec.prune.exclude == ["first_conv", "last_fc"]
    res = compress(m, spec, None, None)
    assert set(res.rounding) == set(grid) and len(grid) >= 3
    after = m.state_dict()
    for name, w in _conv_fc(m).items():
        q = w.double() / alpha[name]
        assert (q - q.round()).abs().max() <= 1e-6 * max(1.0, float(q.abs().max())), name
        assert not torch.equal(w, before[name]), f"{name} was not rounded"
    for name, value in before.items():
        if name not in grid:
            assert torch.equal(after[name], value), f"{name} changed"
