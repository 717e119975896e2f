"""The apply library's two forms, and which FUNCTION LOAD refusals send the
store to EVALSHA: only a server without functions or a user not allowed
them. Anything else (a library that does not compile) is raised, not hidden
behind the slower path."""

from __future__ import annotations

import pytest
from redis.exceptions import NoPermissionError, ResponseError

from patronage.streams import store


@pytest.mark.parametrize(
    ("refusal", "falls_back"),
    [
        (ResponseError("unknown command 'FUNCTION', with args beginning with: 'LOAD' "), True),
        (
            NoPermissionError("this user has no permissions to run the 'function|load' command"),
            True,
        ),
        (ResponseError("Error compiling function: user_function:12: '=' expected"), False),
        (ResponseError("Library 'patronage_apply_x' already exists"), False),
    ],
)
def test_which_refusals_fall_back_to_scripts(refusal: ResponseError, falls_back: bool) -> None:
    assert store._functions_unavailable(refusal) is falls_back


def test_the_library_runs_as_a_script_at_the_scripts_own_level() -> None:
    code = store._lua("apply")
    script = store.apply_as_script(code)
    assert store._APPLY_ENTRY not in script
    assert script.rstrip().endswith("due and string.format('%.17g', due) or ''}")
    name, library = store.apply_as_function(code)
    assert library.startswith(f"#!lua name={name}\n")
    assert library.rstrip().endswith(f"redis.register_function('{name}', apply)")
    with pytest.raises(ValueError, match="entry point"):
        store.apply_as_script("#!lua\nreturn 1\n")
