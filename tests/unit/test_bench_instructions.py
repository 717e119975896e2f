"""The instruction-counting benchmark reads callgrind's count and can swap
in the apply script of another commit, leaving the store's other scripts
as they are."""

from __future__ import annotations

import pytest

from benchmarks.bench_redis_instructions import (
    _with_apply,
    as_library,
    instruction_total,
    script_at,
)
from patronage.streams import store

# The head of a dump `callgrind_control -d` wrote (callgrind 3.19).
DUMP = """# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 8162
part: 17

desc: Trigger: dump

positions: line
events: Ir
summary: 2101509963


ob=(4) /usr/lib/x86_64-linux-gnu/libm.so.6
fn=(3578) pow@@GLIBC_2.29
calls=34808 +35
* 2774968

totals: 2104253423
"""


def test_the_count_is_the_dumps_summary() -> None:
    assert instruction_total(DUMP) == 2_101_509_963


def test_a_dump_without_a_summary_gives_its_totals() -> None:
    assert instruction_total(DUMP.replace("summary: 2101509963\n", "")) == 2_104_253_423


def test_a_file_that_is_not_a_dump_is_refused() -> None:
    with pytest.raises(SystemExit, match="no instruction count"):
        instruction_total("positions: line\nevents: Ir\n")


def test_only_the_apply_script_is_swapped() -> None:
    library = store._lua_source("apply")
    source = _with_apply(library)
    assert source("apply") == library
    assert source("base36") == store._lua_source("base36")
    assert source("erase") == store._lua_source("erase")


def test_a_script_from_before_the_entry_point_runs_whole_as_one() -> None:
    old = "#!lua\nlocal P = KEYS[1]  -- profile\nreturn {P}"
    wrapped = as_library(old)
    assert wrapped == (
        "#!lua\nlocal function apply(KEYS, ARGV)\nlocal P = KEYS[1]  -- profile\nreturn {P}\nend\n"
    )
    # ... and the store can load it either way.
    assert store.apply_as_script(wrapped).rstrip().endswith("return {P}")
    name, loaded = store.apply_as_function(wrapped)
    assert loaded.startswith(f"#!lua name={name}\n")
    assert loaded.rstrip().endswith(f"redis.register_function('{name}', apply)")


def test_a_revisions_script_is_read_from_git() -> None:
    assert "P = KEYS[1]  -- profile" in script_at("HEAD")
