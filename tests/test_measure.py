"""segtut.measure: parameters, FLOPs known by hand, latency from a fake clock, memory."""

import pytest
import torch
from torch import nn

from segtut import measure

pytestmark = pytest.mark.usefixtures("one_thread")


def test_count_parameters_skips_frozen_weights_and_buffers():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))  # 3*4 + 4 + BN's 4 + 4
    assert measure.count_parameters(model) == 24
    model[0].bias.requires_grad_(False)
    assert measure.count_parameters(model) == 20
    assert measure.count_parameters(model, trainable_only=False) == 24  # running stats never


def test_gflops_of_one_convolution_counts_a_multiply_add_as_two():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False).train()
    # 8 x 10 x 12 outputs, each a sum of 3 * 3 * 3 products: 2 operations per multiply-add.
    assert measure.gflops(conv, (1, 3, 10, 12)) * 1e9 == pytest.approx(2 * 8 * 10 * 12 * 27)
    assert measure.gflops(conv, (2, 3, 10, 12)) * 1e9 == pytest.approx(2 * 2 * 8 * 10 * 12 * 27)
    assert conv.training  # the module's mode is given back


def test_gflops_takes_explicit_inputs_for_a_part_of_a_network():
    head = nn.Conv2d(16, 4, kernel_size=1, bias=False)
    features = torch.randn(1, 16, 5, 7)
    assert measure.gflops(head, inputs=features) * 1e9 == pytest.approx(2 * 4 * 5 * 7 * 16)


class FakeClock:
    """A clock that only moves when the timed function says how long it took."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_latency_is_the_median_of_the_timed_repeats_after_warmup():
    clock = FakeClock()
    durations_ms = iter([500, 400, 300, 5, 1, 3, 2, 4])  # three warm-up calls, then five timed
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((self.training, torch.is_grad_enabled()))
            clock.now += next(durations_ms) / 1000
            return x

    probe = Probe().train()
    timing = measure.latency_ms(probe, torch.zeros(1), warmup=3, repeats=5, clock=clock)
    assert timing["median"] == pytest.approx(3)
    assert timing["min"] == pytest.approx(1) and timing["max"] == pytest.approx(5)
    assert timing["p10"] == pytest.approx(1.4) and timing["p90"] == pytest.approx(4.6)
    assert timing["mean"] == pytest.approx(3) and timing["repeats"] == 5
    assert seen == [(False, False)] * 8  # eval mode, no gradients, every call
    assert probe.training  # mode restored


def test_latency_accepts_a_plain_function_with_several_inputs_and_sets_threads():
    clock = FakeClock()
    calls = []

    def add(a, b):
        calls.append(torch.get_num_threads())
        clock.now += 0.002
        return a + b

    timing = measure.latency_ms(add, (torch.ones(2), torch.ones(2)), warmup=1, repeats=2,
                                threads=1, clock=clock)
    assert timing["median"] == pytest.approx(2) and len(calls) == 3
    assert timing["threads"] == 1
    with pytest.raises(ValueError, match="repeats"):
        measure.latency_ms(add, (torch.ones(2), torch.ones(2)), repeats=0)


def test_latency_of_a_training_step_keeps_gradients_and_the_mode():
    clock = FakeClock()
    model = nn.Linear(2, 1).train()
    seen = []

    def step():
        model(torch.ones(1, 2)).sum().backward()  # fails under no_grad
        seen.append(model.training)
        clock.now += 0.010

    timing = measure.latency_ms(step, inference=False, warmup=1, repeats=3, clock=clock)
    assert timing["median"] == pytest.approx(10) and seen == [True] * 4
    assert model.weight.grad is not None


def test_throughput_is_batch_size_over_the_median_latency(monkeypatch):
    monkeypatch.setattr(measure, "latency_ms", lambda *args, **kwargs: {"median": 250.0})
    assert measure.throughput(nn.Identity(), torch.zeros(8, 3, 4, 4)) == pytest.approx(32)


def test_peak_memory_on_the_cpu_sees_temporaries_and_adds_held_tensors():
    n = 2**18  # float32: 1 MiB

    def step():
        kept = torch.ones(n)
        temporary = torch.ones(n) * 2  # two more MiB live at once with `kept`: 3 MiB peak
        del temporary
        return kept.sum()

    held = torch.zeros(n // 2)  # 0.5 MiB, counted by size
    peak = measure.peak_memory_mib(step, held=[held, held[:10]])  # a view counts once
    assert 3.5 <= peak < 3.6


def test_training_step_memory_counts_weights_and_adam_state():
    model = nn.Conv2d(3, 4, 3, padding=1)
    images, masks = torch.randn(2, 3, 8, 8), torch.randint(0, 4, (2, 8, 8))
    mib = measure.training_step_memory_mib(model, images, masks, nn.functional.cross_entropy)
    weights_mib = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    assert mib > 3 * weights_mib  # weights + two AdamW moments + the step's activations


def test_saved_for_backward_counts_each_storage_once():
    x = torch.randn(1024, 256, requires_grad=True)  # 1 MiB of float32
    assert measure.saved_for_backward_mib(nn.ReLU(), x) == pytest.approx(1.0)  # saves its output
    assert measure.saved_for_backward_mib(nn.Identity(), x) == 0


def test_cost_table_has_one_row_per_model_and_size():
    pd = pytest.importorskip("pandas")
    models = {"wide": nn.Conv2d(3, 8, 3, padding=1, bias=False),
              "narrow": nn.Conv2d(3, 2, 3, padding=1, bias=False)}
    table = measure.cost_table(models, sizes=[(6, 8), (4, 4)], warmup=0, repeats=1)
    assert isinstance(table, pd.DataFrame)
    assert list(table.index) == [("wide", "6x8"), ("wide", "4x4"), ("narrow", "6x8"),
                                 ("narrow", "4x4")]
    assert table.loc[("narrow", "6x8"), "GFLOPs / image"] * 1e9 == pytest.approx(2 * 2 * 48 * 27)
    assert table.loc[("wide", "4x4"), "M params"] == pytest.approx(8 * 27 / 1e6)
    assert (table["ms median"] > 0).all() and table.attrs["threads"] >= 1
