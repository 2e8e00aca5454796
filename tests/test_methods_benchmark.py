"""benchmarks/methods.py's timing loop (the methods' steps interleave, so a slow spell of a shared
machine falls on every method instead of deciding a ratio) and the CPU kind results record."""

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


def test_cpu_kind_names_the_family_model_and_matmul_isa_of_the_first_processor():
    from benchmarks.step_timing import cpu_kind, cpu_name

    cpuinfo = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 1\n"
        "model name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma sha_ni\n\n"
        "processor\t: 1\ncpu family\t: 99\nmodel\t\t: 9\nflags\t\t: avx512f amx_tile\n"
    )
    assert cpu_kind(cpuinfo) == {"family": "23", "model": "1", "isa": ["avx2", "fma"]}
    assert cpu_name(cpuinfo) == "AMD EPYC"
    assert cpu_kind("")["isa"] == [] and cpu_name("") == "unknown"
