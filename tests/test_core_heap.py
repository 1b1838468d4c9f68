"""core/heap.py: glibc keeps freed memory in the heap while the CPU trainer runs, and gets its defaults
back afterwards, whatever happens inside; the trainer uses it on a CPU and its numbers do not change."""
import pytest

from bsegn.core import heap


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, parameter, value):
        self.calls.append(("mallopt", parameter, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


def test_inside_nothing_is_mmapped_or_trimmed_and_the_defaults_come_back_even_on_an_error():
    libc = FakeLibc()
    with pytest.raises(RuntimeError, match="inside"):
        with heap.heap_reuse(libc=libc) as on:
            assert on
            assert libc.calls == [("mallopt", heap.M_MMAP_MAX, 0), ("mallopt", heap.M_TRIM_THRESHOLD, heap.NEVER_TRIM)]
            raise RuntimeError("inside")
    assert libc.calls[2:] == [("mallopt", heap.M_MMAP_MAX, heap.DEFAULT_MMAP_MAX),
                              ("mallopt", heap.M_TRIM_THRESHOLD, heap.DEFAULT_TRIM_THRESHOLD), ("malloc_trim", 0)]


def test_off_when_not_enabled_or_not_glibc(monkeypatch):
    libc = FakeLibc()
    with heap.heap_reuse(False, libc=libc) as on:
        assert not on
    assert libc.calls == []
    monkeypatch.setattr(heap.platform, "system", lambda: "Darwin")
    assert heap.glibc() is None
    with heap.heap_reuse() as on:
        assert not on


def test_the_cpu_trainer_trains_inside_it_and_its_losses_do_not_depend_on_it(monkeypatch):
    from test_generative_training import TINY, gaussian_benchmark, make_trainer

    import bsegn.generative.trainer as trainer_module
    from bsegn.generative.config import BSeGNConfig

    data = gaussian_benchmark()
    config = BSeGNConfig(epochs=1, iterations_per_epoch=3, lambda_cyc=0.1, **TINY)
    asked = []
    real = trainer_module.heap_reuse

    def recording(enabled=True):
        asked.append(enabled)
        return real(enabled)

    monkeypatch.setattr(trainer_module, "heap_reuse", recording)
    reused = make_trainer(data, config).fit()
    assert asked == [True]
    monkeypatch.setattr(trainer_module, "heap_reuse", lambda enabled=True: real(False))
    plain = make_trainer(data, config).fit()
    for key in plain.history[0]:
        if key != "seconds":
            assert reused.history[0][key] == plain.history[0][key], key
