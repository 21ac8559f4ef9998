"""Performance decisions as pure functions: the CPU thread default and whether torch.compile
pays back (``train.compile: auto``), plus the step function that applies the decision.
No timings are asserted here; speed figures live in benchmarks/."""

from __future__ import annotations

import time

import pytest
import torch

from ddpinn.perf import (
    CompileRecord,
    StepFunction,
    cold_compile_estimate,
    compile_settings,
    contention,
    decide_compile,
    default_threads,
)


# ---------------------------------------------------------------------------------- threads
@pytest.mark.parametrize(
    "cores,local_ranks,expected",
    [
        (2, 1, 1),  # this project's machine: one core stays free for whatever else runs
        (2, 2, 1),
        (1, 1, 1),
        (16, 1, 15),
        (16, 2, 7),
        (16, 32, 1),
    ],
)
def test_default_threads_leave_one_core_of_the_node_free(cores, local_ranks, expected):
    assert default_threads(configured=None, omp_num_threads=None, cores=cores, local_ranks=local_ranks) == expected


def test_configured_threads_win_then_omp_num_threads():
    assert default_threads(configured=2, omp_num_threads="4", cores=2, local_ranks=1) == 2
    assert default_threads(configured=None, omp_num_threads="4", cores=2, local_ranks=1) == 4
    for junk in ("", "0", "two", "-1"):
        assert default_threads(configured=None, omp_num_threads=junk, cores=8, local_ranks=1) == 7


# ---------------------------------------------------------------------------------- compile decision
def test_compile_only_when_the_saving_exceeds_the_compile_time():
    # 20,000 steps at 13.5 ms eager vs 7.5 ms compiled save 120 s.
    assert decide_compile(compile_s=100.0, steps_left=20_000, eager_ms=13.5, compiled_ms=7.5).compile
    assert not decide_compile(compile_s=130.0, steps_left=20_000, eager_ms=13.5, compiled_ms=7.5).compile
    # The README demo's 5,000 steps save 30 s: not worth a cold compile, worth a warm one.
    assert not decide_compile(compile_s=60.0, steps_left=5_000, eager_ms=13.5, compiled_ms=7.5).compile
    assert decide_compile(compile_s=3.0, steps_left=5_000, eager_ms=13.5, compiled_ms=7.5, cached=True).compile


def test_no_compile_without_steps_left_or_without_a_faster_step():
    assert not decide_compile(compile_s=0.1, steps_left=0, eager_ms=10.0, compiled_ms=1.0).compile
    assert not decide_compile(compile_s=0.1, steps_left=-5, eager_ms=10.0, compiled_ms=1.0).compile
    assert not decide_compile(compile_s=0.1, steps_left=10**6, eager_ms=5.0, compiled_ms=5.0).compile


def test_decision_reports_its_figures():
    d = decide_compile(compile_s=60.0, steps_left=5_000, eager_ms=13.5, compiled_ms=7.5)
    assert d.saving_s == pytest.approx(30.0)
    assert "training eager" in d.describe() and "cold compile cache" in d.describe() and "~60 s" in d.describe()


def test_contention_is_wall_time_over_cpu_time_per_thread():
    assert contention(wall_s=1.0, cpu_s=1.0, threads=1) == 1.0
    assert contention(wall_s=1.0, cpu_s=0.25, threads=1) == 4.0  # a quarter of a core
    assert contention(wall_s=1.0, cpu_s=2.0, threads=2) == 1.0  # two threads, two cores
    assert contention(wall_s=1.0, cpu_s=1.0, threads=2) == 2.0
    assert contention(wall_s=1.0, cpu_s=3.0, threads=1) == 1.0  # never below 1
    assert contention(wall_s=1.0, cpu_s=0.0, threads=1) == 1.0  # nothing measured


def test_cold_estimate_grows_with_the_graph():
    assert cold_compile_estimate(240) > cold_compile_estimate(85) > 0


def test_record_knows_a_warm_cache_from_a_cold_one(tmp_path):
    record = CompileRecord.load(tmp_path)
    assert record.estimate("step-a", 100) == (cold_compile_estimate(100), False)
    record.store("step-a", 80.0, cached=False)
    reloaded = CompileRecord.load(tmp_path)
    seconds, cached = reloaded.estimate("step-a", 100)
    assert cached and seconds < 80.0
    reloaded.store("step-a", 2.5, cached=True)
    assert CompileRecord.load(tmp_path).estimate("step-a", 100) == (2.5, True)
    assert CompileRecord.load(tmp_path).estimate("step-b", 100) == (cold_compile_estimate(100), False)


def test_damaged_record_reads_as_empty(tmp_path):
    (tmp_path / "ddpinn_compile_times.json").write_text("{not json")
    assert CompileRecord.load(tmp_path).estimate("x", 10)[1] is False


# ---------------------------------------------------------------------------------- step function
class CompileSpy:
    """Stands in for torch.compile: counts compiles, returns the function unchanged (or a failing one)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls, self.fail, self.dynamic = 0, fail, []

    def __call__(self, fn, mode="default", dynamic=None):
        self.calls += 1
        self.dynamic.append(dynamic)
        if not self.fail:
            return fn

        def broken(*args):
            raise RuntimeError("no compiler")

        return broken


def slow_step(ms: float, *, sleeping: bool = False):
    """A step taking ``ms`` of wall time: busy (CPU time ~ wall time when the process has a core
    of its own) or, with ``sleeping``, idle (wall time without CPU time: what a process that waits
    for a core sees)."""

    def step(x: torch.Tensor) -> torch.Tensor:
        if sleeping:
            time.sleep(ms / 1e3)
        else:
            end = time.perf_counter() + ms / 1e3
            while time.perf_counter() < end:
                pass
        return (x * 2).sum()[None]

    return step


def run_calls(fn: StepFunction, n: int) -> None:
    for _ in range(n):
        fn(torch.ones(3))


@pytest.fixture
def spy(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    s = CompileSpy()
    monkeypatch.setattr(torch, "compile", s)
    return s


def test_auto_stays_eager_when_the_run_is_too_short_to_pay_back(spy):
    messages: list[str] = []
    fn = StepFunction(slow_step(2), mode="auto", total_steps=50, gather=lambda o: [o], message=messages.append, probe_calls=10)
    run_calls(fn, 50)
    assert spy.calls == 0 and fn.mode == "eager" and not fn.compiling
    assert len(messages) == 1 and "training eager" in messages[0]


def test_auto_compiles_a_long_run_after_timing_the_eager_step(spy):
    messages: list[str] = []
    fn = StepFunction(slow_step(5), mode="auto", total_steps=10**7, gather=lambda o: [o], message=messages.append, probe_calls=10)
    run_calls(fn, 10)
    assert spy.calls == 0  # still timing
    run_calls(fn, 1)
    assert spy.calls == 1 and fn.mode == "compiled" and fn.compiling
    fn.compiled_in(42.0)
    assert not fn.compiling and "compiling the training step" in messages[0]
    run_calls(fn, 5)
    assert spy.calls == 1


def test_changing_points_compile_with_dynamic_shapes_and_count_the_recompile(spy, monkeypatch):
    """A run whose points change compiles with dynamic shapes, and its decision charges the
    recompile at the first change."""
    import ddpinn.perf

    monkeypatch.setattr(ddpinn.perf, "contention", lambda *args: 1.0)  # the machine's load varies between the runs
    decisions = {}
    for changing in (False, True):
        messages: list[str] = []
        fn = StepFunction(slow_step(5), mode="auto", total_steps=10**7, gather=lambda o: [o], message=messages.append,
                          probe_calls=10, changing_shapes=changing)
        run_calls(fn, 11)
        decisions[changing] = float(messages[0].split("~")[1].split(" s")[0])
    assert spy.dynamic == [None, True]
    assert decisions[True] == pytest.approx(2 * decisions[False], abs=1.0)  # printed rounded to 1 s


def test_auto_takes_the_slowest_rank(spy):
    # This rank's eager step is fast, another rank reports 1 s per step: compiling pays back.
    fn = StepFunction(slow_step(0), mode="auto", total_steps=10_000, gather=lambda o: [o, (1000.0, o[1])],
                      message=lambda m: None, probe_calls=10)
    run_calls(fn, 11)
    assert fn.mode == "compiled"


def test_auto_expects_a_slow_compile_on_a_busy_machine(spy):
    # Steps that wait (wall time without CPU time) mean the process waits for a core: a compile
    # would wait as long, so a run that compiles when the steps compute stays eager.
    def make(sleeping: bool) -> StepFunction:
        return StepFunction(slow_step(20, sleeping=sleeping), mode="auto", total_steps=10_000,
                            gather=lambda o: [o], message=lambda m: None, probe_calls=10)

    computing, waiting = make(False), make(True)
    run_calls(computing, 11)
    run_calls(waiting, 11)
    assert computing.mode == "compiled" and waiting.mode == "eager"


def test_compile_record_turns_the_next_run_warm(spy, tmp_path):
    # A run long enough to pay back a warm compile (saving ~4 s), not a cold one (the model's
    # fixed cost alone is 5 s): compiles only once the record exists.
    def make():
        return StepFunction(slow_step(2), mode="auto", total_steps=4_000, gather=lambda o: [o], message=lambda m: None,
                            probe_calls=10)

    first = make()
    run_calls(first, 11)
    assert first.mode == "eager"
    trace = first._trace
    CompileRecord.load(tmp_path).store(trace.fingerprint(), 0.1, cached=True)
    second = make()
    run_calls(second, 11)
    assert second.mode == "compiled"


def test_on_compiles_at_the_first_call_and_off_never(spy):
    on = StepFunction(slow_step(0), mode="on", total_steps=1, gather=lambda o: [o], message=lambda m: None)
    run_calls(on, 1)
    assert spy.calls == 1 and on.mode == "compiled" and on.compiling
    off = StepFunction(slow_step(0), mode="off", total_steps=10**9, gather=lambda o: [o], message=lambda m: None)
    run_calls(off, 100)
    assert spy.calls == 1 and off.mode == "eager"


def test_failing_compile_falls_back_to_eager(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch, "compile", CompileSpy(fail=True))
    messages: list[str] = []
    fn = StepFunction(slow_step(0), mode="on", total_steps=10, gather=lambda o: [o], message=messages.append)
    out = fn(torch.ones(3))
    assert float(out) == 6.0 and fn.mode == "eager (torch.compile failed)" and fn.compiling
    assert "torch.compile failed (RuntimeError: no compiler)" in messages[0]
    fn.compiled_in(1.0)
    assert CompileRecord.load(tmp_path).entries == {}


def test_fingerprint_names_the_operators_and_shapes_a_step_ran():
    from ddpinn.perf import TracedOps

    def step(x):
        return torch.tanh(x @ x.T).sum()

    def keys(*shapes):
        out = []
        for shape in shapes:
            trace = TracedOps()
            trace.run(step, torch.ones(shape))
            out.append(trace.fingerprint())
        return out

    same_a, same_b, other_shape = keys((4, 3), (4, 3), (5, 3))
    assert same_a == same_b != other_shape
    trace = TracedOps()
    trace.run(step, torch.ones(4, 3))
    assert len(trace.names) >= 3 and any("tanh" in n for n in trace.names)


# ---------------------------------------------------------------------------------- machine probe
def test_probe_times_one_thread_and_gives_the_threads_back():
    from ddpinn.perf import machine, machine_probe_ms

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ms = machine_probe_ms()
        assert 0 < ms < 10_000 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert machine().endswith(" cores") and len(machine()) > len(" cores")


@pytest.mark.parametrize("device,changing,dynamic", [
    ("cpu", False, None), ("cpu", True, True), ("cuda", False, False), ("cuda", True, True),
])
def test_compile_settings_never_use_cuda_graphs(device, changing, dynamic):
    settings = compile_settings(device, changing)
    # "reduce-overhead" and "max-autotune" record CUDA graphs, which cannot hold the exchange.
    assert settings.mode == "default"
    assert settings.dynamic is dynamic


def test_the_step_function_compiles_with_the_device_settings(spy):
    fn = StepFunction(slow_step(0), mode="on", total_steps=1, gather=lambda o: [o], message=lambda m: None,
                      device_type="cuda")
    fn(torch.zeros(1))
    assert spy.dynamic == [False]
