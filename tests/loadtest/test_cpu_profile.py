"""The CPU-per-request harness's own arithmetic: py-spy's collapsed stacks to top functions,
CPU time to milliseconds per request. (The harness itself runs servers: not a unit test.)"""

from __future__ import annotations

from pathlib import Path

from loadtest.cpu_profile import PhaseCpu, top_functions


def test_top_functions_counts_own_and_inclusive_samples(tmp_path: Path) -> None:
    collapsed = tmp_path / "full.txt"
    collapsed.write_text(
        "main (/x/typer/main.py:3);serve (/x/lib/python3.11/site-packages/app/web.py:5);"
        "handle (/x/repo/gateway/m.py:10);parse (/x/repo/gateway/body.py:20) 3\n"
        "main (/x/typer/main.py:3);serve (/x/lib/python3.11/site-packages/app/web.py:5);"
        "handle (/x/repo/gateway/m.py:11) 1\n"
        "malformed line\n"
    )
    own, inclusive = top_functions(collapsed)
    assert own[0].split() == ["75.0%", "parse", "(/x/repo/gateway/body.py)"]
    assert own[1].split() == ["25.0%", "handle", "(/x/repo/gateway/m.py)"]
    # One line per function, whatever line of it the sample was on; site-packages cut off;
    # the command line's own frames left out.
    assert sorted(row.split()[1] for row in inclusive) == ["handle", "parse", "serve"]
    assert " 75.0%  parse (/x/repo/gateway/body.py)" in inclusive
    assert "100.0%  serve (app/web.py)" in inclusive


def test_cpu_per_request() -> None:
    phase = PhaseCpu("full", requests=2000, failed=0, elapsed_s=4.0, cpu_s=1.5)
    assert phase.cpu_ms_per_request == 0.75
    assert "0.750 ms/request" in phase.line() and "500 req/s" in phase.line()
