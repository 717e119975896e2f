"""`patronage/models` is the pure core: no I/O library, no clock.

A change that makes a model reach Redis, Kafka, the network or the event
loop fails here, before it can make the core untestable without servers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parents[2] / "patronage" / "models"
IO_MODULES = {
    "faust",
    "mode",
    "redis",
    "aiokafka",
    "asyncio",
    "aiohttp",
    "socket",
    "ssl",
    "subprocess",
    "urllib",
    "http",
    "requests",
    "patronage.streams",
}
CLOCK_CALLS = {("time", "time"), ("time", "monotonic"), ("datetime", "now"), ("date", "today")}


def imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.py")), ids=lambda p: p.name)
def test_models_import_no_io_and_read_no_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    bad = {
        name
        for name in imported(tree)
        if any(name == io or name.startswith(io + ".") for io in IO_MODULES)
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"
    calls = {
        (node.func.value.id, node.func.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
    }
    assert not calls & CLOCK_CALLS, f"{path.name} reads the clock: {sorted(calls & CLOCK_CALLS)}"


@pytest.mark.parametrize("name", ["bench", "bench_naive", "bench_segments"])
def test_benchmarks_live_outside_the_package_and_import(name: str) -> None:
    import importlib

    assert not (MODELS.parent / f"{name}.py").exists()
    importlib.import_module(f"benchmarks.{name}")


PACKAGE = MODELS.parent
LONGEST_FUNCTION = 60


def test_no_function_is_longer_than_a_screen() -> None:
    """Long functions were where rules hid in several copies; keep them short."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.name} ({lines} lines)")
    assert long == []
