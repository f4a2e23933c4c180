"""hack/bench_pods.sh --overload: the script's --help and argument checks, and its Python helper
(hack/bench/overload.py: names, parsing, capacity, recovery, the report) on made-up dnsperf outputs.
Nothing here starts a DNS server or measures anything."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "bench_pods.sh"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_overload", ROOT / "hack" / "bench" / "overload.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # it puts hack/bench on sys.path for pods.py and report.py
    return mod


ov = _load()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30)


def test_help_documents_the_overload_run() -> None:
    r = _run("--help")
    assert r.returncode == 0, r.stderr
    for flag in ("--overload", "--quick", "--ladder", "--step", "--overload-factor", "--drain-max",
                 "--recovery-qps", "--mh-rates", "--miss-zone", "--agent-rev", "--cpu-quota", "--json"):
        assert flag in r.stdout, flag
    assert "set -euo" not in r.stdout  # the comment block only


@pytest.mark.parametrize("args, message", [
    (["--overload", "--ladder", "0 500"], "rates must be 1..200000"),
    (["--overload", "--ladder", "fast"], "rates must be 1..200000"),
    (["--overload", "--miss-zone", "elsewhere"], "--miss-zone is cluster or outside"),
    (["--overload", "--overload-factor", "0"], "--overload-factor must be 1..20"),
    (["--overload", "--cpu-quota", "0"], "needs a CPU quota"),
    (["--bogus"], "unknown argument"),
])
def test_bad_arguments_stop_before_anything_starts(args: list[str], message: str) -> None:
    r = _run(*args)
    assert r.returncode != 0
    assert message in r.stderr


def test_names(tmp_path: Path) -> None:
    assert ov.cmd_names(str(tmp_path), [300, 2000], 10, "cluster") == 0
    hits = (tmp_path / "hit.txt").read_text().splitlines()
    assert len(hits) == ov.HIT_NAMES == len(set(hits))
    assert all(h.endswith(".hit.cluster.local A") for h in hits)
    m300 = (tmp_path / "miss-300.txt").read_text().splitlines()
    m2000 = (tmp_path / "miss-2000.txt").read_text().splitlines()
    assert len(m300) == ov.miss_count(300, 10) > 300 * 10  # dnsperf never wraps around: all misses
    assert len(set(m300)) == len(m300) and not set(m300) & set(m2000)
    assert m300[0] == "r300-0.miss.cluster.local A"
    ov.cmd_names(str(tmp_path), [5], 1, "outside")
    assert (tmp_path / "miss-5.txt").read_text().startswith("r5-0.miss.example.net A\n")


def test_parse_rates() -> None:
    assert ov.parse_rates("250 500, 1000\n") == [250, 500, 1000]
    assert ov.parse_rates("  ") == []


def test_parse_intervals_skips_verbose_lines() -> None:
    text = ("[Status] Sending queries (to 127.0.0.1:15411)\n"
            "> NOERROR web.default.svc.cluster.local A 0.000437\n"
            "1796237212.536354: 997.845809\n"
            "> NXDOMAIN x.cluster.local AAAA 0.5\n"
            "1796237213.541571: 0.000000\n"
            "  Queries per second:   999.889346\n")
    assert ov.parse_intervals(text) == [997.845809, 0.0]


def test_capacity_is_the_most_answered_on_the_ladder() -> None:
    steps = [{"rate": 250, "answered_qps": 250.0}, None, {"rate": 500, "answered_qps": 498.0},
             {"rate": 1000, "answered_qps": 120.0}]
    assert ov.capacity_of(steps) == (498.0, 500)
    assert ov.capacity_of([]) == (0.0, None)


@pytest.mark.parametrize("series, expect", [
    ([100, 100, 99], 1),
    ([3, 40, 95, 100, 100], 3),
    ([100, 10, 100], 3),  # counted from when it stayed answered
    ([100, 100, 20], None),  # not answering at the end
    ([], None),
])
def test_recovered_after(series: list[float], expect: int | None) -> None:
    assert ov.recovered_after(series, 100) == expect


def test_estimate_of_the_default_run_is_about_ten_minutes() -> None:
    typical, worst = ov.estimate(3, 5, 30, [250, 500, 1000, 2000, 3000, 4000], 10, 5, 10, 5, [300, 2000], 10)
    assert 8 * 60 <= typical <= 11 * 60 < worst
    quick, _ = ov.estimate(3, 1, 5, [500, 2000], 2, 1, 2, 2, [300, 2000], 2, idle_secs=1)
    assert quick <= 130


# ---------------------------------------------------------------------------------------------------
# a made-up run: two servers, a ladder of two steps, the overload step, the probe, a hit and a miss run

def _dnsperf(sent: int, completed: int, per_second: list[float], lat: float = 0.001) -> str:
    lines = ["DNS Performance Testing Tool", "[Status] Sending queries (to 127.0.0.1:15411)"]
    lines += [f"> NOERROR h{i}.hit.cluster.local A {lat:.6f}" for i in range(completed)]
    lines += [f"17962372{i:02d}.5: {x:.6f}" for i, x in enumerate(per_second)]
    lines += ["Statistics:", f"  Queries sent:         {sent}",
              f"  Queries completed:    {completed} ({completed / sent:.2%})",
              f"  Queries lost:         {sent - completed} (x%)",
              f"  Response codes:       NOERROR {completed} (100.00%)",
              "  Run time (s):         10.000000", f"  Queries per second:   {completed / 10:.6f}"]
    return "\n".join(lines) + "\n"


def _runfacts(tag: str, rate: int, secs: int, cpu_ms: float, up: int, cg: bool, idle: int | None = None) -> str:
    f = {"rate": rate, "secs": secs, "auth0": 1000, "auth1": 1000 + up, "wall0": 100.0, "wallmid": 100.0 + secs,
         "wall1": 101.0 + secs, "ns0": 0, "nsmid": int(cpu_ms * 1e6 * 0.95), "ns1": int(cpu_ms * 1e6),
         "ticks0": 0, "ticksmid": 0, "ticks1": int(cpu_ms / 10), "rcvbuf_errors": 0,
         "core0": "0 0 0 0 0 0 0 0 0 0", "core1": f"{int(cpu_ms / 10)} 0 0 0 0 0 0 0 0 0"}
    if cg:
        f |= {"cg0": "0 0 0", "cgmid": f"{secs * 10} {secs * 9} 4000000000"}
    if idle is not None:
        f |= {"busy_after": 0 if idle else 10, "idle_after": idle}
    return "".join(f"{tag} {k} {v}\n" for k, v in f.items())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "facts").write_text(
        "run clk_tck 100\nrun qps 5000\nrun ladder_quota 50\nrun overload_factor 4\nrun mh_rates 300\n"
        "run mh_secs 10\nrun step 10\nrun recovery_qps 100\nrun recovery_secs 5\nrun miss_zone cluster\n"
        "agent version nodelocal 0.1.0 (abc1234)\nunbound version unbound 1.17.1\n")
    runs = []
    # agent: answers 500/s at 500, collapses to 100/s at 1000 and at 4x capacity; recovers in the 3rd second
    # unbound: 500/s at 500, 1000/s at 1000 (the top step in full), 1,500/s at 4x 1000
    plan = {
        "agent": {"l500": (500, 10, 5000, 5000, 500, 0), "l1000": (1000, 10, 10000, 1000, 500, 0),
                  "over": (2000, 10, 20000, 1000, 500, 0), "rec": (100, 5, 500, 300, 45, 0),
                  "hit300": (300, 10, 3000, 3000, 90, 0), "miss300": (300, 10, 3000, 3000, 900, 3000)},
        "unbound": {"l500": (500, 10, 5000, 5000, 300, 0), "l1000": (1000, 10, 10000, 10000, 500, 0),
                    "over": (4000, 10, 40000, 15000, 500, 0), "rec": (100, 5, 500, 500, 10, 0),
                    "hit300": (300, 10, 3000, 3000, 60, 60), "miss300": (300, 10, 3000, 3000, 450, 3000)},
    }
    for srv, steps in plan.items():
        runs.append(f"{srv} ladder 500 1000\n{srv} cgroup_threads 3\n{srv} cgroup_threads_outside 0\n")
        for kind, (rate, secs, sent, done, cpu_ms, up) in steps.items():
            tag = f"{srv}.{kind}"
            ladder = kind[0] in "lor"
            runs.append(_runfacts(tag, rate, secs, cpu_ms, up, ladder, idle=1 if kind != "over" else None))
            per_second = [0.0, 40.0, 100.0, 100.0] if tag == "agent.rec" else [done / secs] * (secs - 1)
            (tmp_path / f"{tag}.out").write_text(_dnsperf(sent, done, per_second))
    runs.append("agent.idle secs 3\nagent.idle ns0 1000\nagent.idle ns1 6001000\nagent.idle wall0 100.0\n"
                "agent.idle wall1 103.0\nunbound.idle ticks0 5\nunbound.idle ticks1 5\n"
                "unbound.idle wall0 100.0\nunbound.idle wall1 103.0\n")
    (tmp_path / "runs.facts").write_text("".join(runs))
    return tmp_path


def test_run_result_uses_cpuacct_and_the_load_window(workdir: Path) -> None:
    runs = ov.base.read_facts(workdir / "runs.facts")
    r = ov.run_result(workdir, runs, "agent.l1000", 100.0)
    assert r["answered_qps"] == 100.0 and r["answered_share"] == 0.1 and r["offered_share"] == 1.0
    assert r["cpu_source"] == "cpuacct"
    assert r["cpu_us_per_answer"] == pytest.approx(500e3 / 1000)  # the whole run's CPU per answer
    assert r["cpu_millicores"] == pytest.approx(500 * 0.95 / 10)  # over the -l window only
    assert r["cgroup"]["throttled_share"] == pytest.approx(0.9)
    assert r["lat_p50"] == pytest.approx(0.001)
    assert ov.run_result(workdir, runs, "agent.nothing", 100.0) is None


def test_build_and_render(workdir: Path, tmp_path: Path) -> None:
    data = ov.build(workdir)
    a, u = data["servers"]["agent"], data["servers"]["unbound"]
    assert a["capacity_qps"] == 500 and a["capacity_at_rate"] == 500 and not a["capacity_open"]
    assert a["over_pct_of_capacity"] == pytest.approx(0.2)
    assert a["recovered_after_s"] == 3
    assert u["capacity_qps"] == 1000 and u["capacity_open"]  # its top step was answered in full
    assert u["over_pct_of_capacity"] == pytest.approx(1.5)
    rows = {r["key"]: r for r in data["summary"]}
    assert rows["capacity"]["agent_vs_unbound"] == pytest.approx(0.5)
    assert rows["capacity"]["agent_vs_dnsmasq"] is None  # no dnsmasq in this run
    assert rows["miss300"]["values"]["agent"] == pytest.approx(300.0)
    assert rows["miss300"]["agent_vs_unbound"] == pytest.approx(2.0)
    assert rows["hit300"]["agent_vs_unbound"] == pytest.approx(1.5)
    assert a["idle_millicores"] == pytest.approx(2.0)  # 6 ms in 3 s (cpuacct)
    assert u["idle_millicores"] == 0.0  # ticks when there is no cpuacct
    assert rows["idle"]["agent_vs_unbound"] is None  # no ratio to nothing
    # unbound's hit run sent 2% of its queries upstream: flagged, the agent's not
    assert not any("hit run" in p for p in a["problems"])
    assert any("not all hits" in p for p in u["problems"])
    # the agent lost 90% at 1000/s while at 47.5 of 50 millicores: not flagged as lost below its quota
    assert not any("lost while" in p for p in a["problems"])
    text = ov.render(data)
    assert "summary (the issue's figures)" in text
    assert "capacity >= 1,000 q/s" in text and "extend --ladder" in text
    assert "answering from second 3 on" in text
    assert "agent/unbound" in text and "0.50" in text
    json.dumps(data)  # --json writes it as is
    out = tmp_path / "report.json"
    assert ov.base.cmd_report(str(workdir), str(out), ov.build, ov.render) == 0
    assert json.loads(out.read_text())["servers"]["agent"]["capacity_qps"] == 500
