"""Instructions Redis executes per event to apply the bench backlog: a
figure this machine's noise cannot move.

    python -m benchmarks.bench_redis_instructions [--events 80000] [--batch 20000 300]
        [--lua-from REV ...] [--call function script] [--redis-server PATH]
        [--keep-profile DIR]

Redis CPU time per event varied by a third between runs of the same code on
the shared 2-core VM (12.8-20.3 µs), more than any one change to the apply
script moved it. Here a private redis-server (on a free port of 127.0.0.1,
stopped by its PID at the end) runs under valgrind's callgrind, which counts
the instructions it executes: the same code gives the same count to within
a fraction of a percent.

The backlog is `bench_pipeline`'s (simulated personas, ~60 events a
customer over 90 days), cut into batches of `--batch` records (20,000: a
catch-up's; 300: nearer a live worker's one or two events per customer) and
finished by the worker's `Pipeline` (Redis apply with the partitions' event
clocks, bookkeeping, scoring writes; a producer that only records). The
first half only fills the store; the second half is counted, so customers
have the history a running shop's have.

`--lua-from REV` measures, in the same run, the apply script as it was at a
git revision (only meaningful while the script's arguments and reply are
unchanged): the baseline for a change to the script. A script from before
it had an entry point runs whole as one (`as_library`). `--call script`
calls the apply code with EVALSHA instead of as a Redis function (what a
Redis before 7 gets); `--call function script` measures both. With `--keep-profile`,
callgrind's profile of each measurement is kept there for
`callgrind_annotate --inclusive=yes` (function names need a redis-server
built with symbols: Debian's is stripped; pass one with `--redis-server`).

Needs valgrind (`apt-get install valgrind`). Slow: Redis runs ~50x slower
under callgrind (about a minute per measurement at the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.bench_pipeline import backlog, fresh_pipeline
from patronage.models.batch import Record
from patronage.streams import store as store_module
from patronage.streams.memory import StaticLog
from patronage.streams.settings import Settings

REPO = Path(__file__).resolve().parent.parent
APPLY_PATH = "patronage/streams/lua/apply.lua"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class CountedRedis:
    """A redis-server under callgrind, its counters zeroed and read on demand."""

    def __init__(self, server: str, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={workdir}/callgrind.%p",
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server under valgrind did not start ({server})")
            time.sleep(0.5)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _control(self, option: str) -> None:
        subprocess.run(
            ["callgrind_control", option, str(self.proc.pid)], check=True, capture_output=True
        )

    def zero(self) -> None:
        self._control("-z")

    def instructions(self, keep_as: Path | None) -> int:
        """Instructions since the last zero (callgrind's dump of them)."""
        before = set(self.workdir.glob("callgrind.*"))
        self._control("-d")
        [dump] = set(self.workdir.glob("callgrind.*")) - before
        total = instruction_total(dump.read_text())
        if keep_as is not None:
            shutil.move(dump, keep_as)
        else:
            dump.unlink()
        return total

    def stop(self) -> None:
        # Only the process this script started, by its PID.
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def instruction_total(dump: str) -> int:
    """The instructions a callgrind dump counts (its `summary:` line, else
    the `totals:` line older dumps end with)."""
    for line in ("summary", "totals"):
        found = re.search(rf"^{line}: (\d+)$", dump, re.M)
        if found is not None:
            return int(found[1])
    raise SystemExit("no instruction count in the callgrind dump (is it one?)")


def script_at(revision: str) -> str:
    return subprocess.run(
        ["git", "show", f"{revision}:{APPLY_PATH}"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


async def measure(
    redis: CountedRedis,
    records: list[Record],
    batch: int,
    keep_as: Path | None,
    functions: bool = True,
) -> dict[str, Any]:
    _, _, client, pipe = fresh_pipeline(
        {"PATRONAGE_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0"}
    )
    pipe.store.functions = functions
    # Under callgrind a 20,000-record batch takes longer than the store's
    # 10 s read timeout.
    client.connection_pool.connection_kwargs["socket_timeout"] = None
    chunks = [records[i : i + batch] for i in range(0, len(records), batch)]
    works = [await pipe.prepare(chunk, StaticLog()) for chunk in chunks]
    half = len(works) // 2
    for work in works[:half]:
        await pipe.finish(work)
    redis.zero()
    events = calls = 0
    for work in works[half:]:
        await pipe.finish(work)
        calls += len(work.batch.by_customer)
        events += sum(len(deltas) for deltas in work.batch.by_customer.values())
    total = redis.instructions(keep_as)
    await client.flushdb()
    await client.aclose()
    return {
        "batch": batch,
        "events": events,
        "apply_calls": calls,
        "instructions_per_event": round(total / events),
        "instructions_per_apply_call": round(total / calls),
    }


def as_library(text: str) -> str:
    """An apply script from before the script became a library with an
    entry point (the store loads that as a function or wraps it as a script):
    its whole body made the entry point, helpers and all, so it runs as it
    did, its closures made on every call."""
    if store_module._APPLY_ENTRY in text:
        return text
    shebang, body = text.split("\n", 1)
    return f"{shebang}\n{store_module._APPLY_ENTRY}\n{body}\nend\n"


def _with_apply(text: str) -> Callable[[str], str]:
    """The store's script reader, with `text` as the apply script."""
    current = store_module._lua_source
    text = as_library(text)

    def source(name: str) -> str:
        return text if name == "apply" else current(name)

    return source


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_redis_instructions")
    parser.add_argument("--events", type=int, default=80_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[20_000, 300])
    parser.add_argument("--lua-from", nargs="*", default=[], metavar="REV")
    parser.add_argument("--call", nargs="+", choices=["function", "script"], default=["function"])
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    parser.add_argument("--keep-profile", type=Path, default=None, metavar="DIR")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(
                f"{tool} not found: this benchmark needs valgrind (apt-get install valgrind)"
            )
    records = backlog(args.events, Settings())
    current = store_module._lua_source
    scripts = {"this checkout": None, **{rev: script_at(rev) for rev in args.lua_from}}
    if args.keep_profile is not None:
        args.keep_profile.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-instr-") as workdir:
        redis = CountedRedis(args.redis_server, Path(workdir))
        try:
            for batch in args.batch:
                for name, text in scripts.items():
                    for call in args.call:
                        # The store reads its scripts through _lua_source.
                        store_module._lua_source = current if text is None else _with_apply(text)  # type: ignore[assignment]
                        keep_as = None
                        if args.keep_profile is not None:
                            label = re.sub(r"\W+", "-", name)
                            keep_as = args.keep_profile / f"callgrind.{label}.{call}.batch{batch}"
                        functions = call == "function"
                        result = asyncio.run(measure(redis, records, batch, keep_as, functions))
                        print(
                            json.dumps({"apply_script": name, "call": call, **result}), flush=True
                        )
        finally:
            store_module._lua_source = current
            redis.stop()


if __name__ == "__main__":
    main()
