"""experiments/bench_startup.py: its import-time parsing, and one timed command."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "bench_startup.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_startup", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_import_seconds_sums_top_level_imports_only() -> None:
    stderr = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:       100 |        100 |     numpy.core",
            "import time:       200 |     300000 |   numpy",
            "import time:        50 |    1500000 | torch",
            "import time:        10 |     200000 | json",
            "some other line",
        ]
    )
    total, slowest = _module().import_seconds(stderr)
    assert total == 1.7 and slowest == [("torch", 1.5), ("json", 0.2)]


def test_top_level_help_is_timed_with_its_cpu_seconds() -> None:
    module = _module()
    wall, _ = module.run(["--help"])
    assert 0 < wall < 60 and len(module.CPU) == 1 and module.CPU[0] > 0
