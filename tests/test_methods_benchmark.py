"""benchmarks/methods.py's timing loop: the methods' steps interleave, so a slow spell of a shared
machine falls on every method instead of deciding a ratio."""

from benchmarks.methods import measure


def _run(name: str, times: list[float], calls: list[str]) -> dict:
    it = iter(times)

    def step() -> float:
        calls.append(name)
        return next(it)

    return {"method": name, "first_step_s": 9.0, "step": step, "state": {"loss": 0.5}}


def test_steps_interleave_and_rows_report_each_methods_median():
    calls: list[str] = []
    runs = [_run("full", [2.0, 2.4, 2.2], calls), _run("lora", [1.5, 1.9, 1.6], calls)]
    rows = measure(runs, steps=3)
    assert calls == ["full", "lora"] * 3
    assert [r["method"] for r in rows] == ["full", "lora"]
    assert [r["median_step_s"] for r in rows] == [2.2, 1.6]
    assert rows[1]["step_times_s"] == [1.5, 1.9, 1.6]
    assert all("step" not in r and "state" not in r and r["loss"] == 0.5 for r in rows)
