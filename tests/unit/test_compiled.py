"""The mypyc-compiled ingest and scoring modules (patronage/compiled.py):
used only while fresh, and preparing and scoring exactly what the sources do.

The suite runs on the compiled modules (`make test` sets PATRONAGE_COMPILED=on),
so every other test checks them too; this file adds what those tests cannot
see: the same records prepared, and the same profiles scored, by both forms
in two processes, compared field by field, and the rules that keep a stale
build from being used.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from patronage import compiled
from patronage.models.batch import PreparedBatch, Record, prepare_batch
from patronage.models.simulate import generate
from patronage.models.timeunits import DAY_MS
from patronage.streams.settings import Settings
from tests.schema_fuzz import TOPIC_OF, mutate, render, schema_corpus
from tests.unit.test_pipeline import as_records

NOW = 1_767_225_600_000  # 2026-01-01
ROOT = Path(__file__).resolve().parents[2]


def _built() -> bool:
    return compiled.stale_reason() is None


# -- which form runs ------------------------------------------------------


def test_the_suite_runs_the_form_it_asked_for() -> None:
    """`make test` asks for the compiled modules: a build that is missing or
    stale fails here rather than leaving the suite on the sources unseen."""
    wanted = compiled.mode()
    if wanted == "on":
        assert compiled.in_use()
    elif wanted == "off":
        assert not compiled.in_use()
    else:
        assert compiled.in_use() == _built()


def _fake_build(tmp_path: Path, sources: Path, **overrides: Any) -> Path:
    build = tmp_path / "build"
    build.mkdir()
    manifest = {
        "cache_tag": sys.implementation.cache_tag,
        "modules": compiled.source_hashes(sources),
    }
    manifest.update(overrides)
    (build / compiled.MANIFEST).write_text(json.dumps(manifest))
    return build


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    copy = tmp_path / "models"
    copy.mkdir()
    for name in compiled.MODULES:
        (copy / f"{name}.py").write_bytes((compiled.SOURCE_DIR / f"{name}.py").read_bytes())
    return copy


def test_a_fresh_build_is_used(tmp_path: Path, sources: Path) -> None:
    assert compiled.stale_reason(_fake_build(tmp_path, sources), sources) is None


def test_an_edited_source_is_named_and_its_build_not_used(tmp_path: Path, sources: Path) -> None:
    build = _fake_build(tmp_path, sources)
    with (sources / "batch.py").open("a") as f:
        f.write("\n# edited after the build\n")
    assert compiled.stale_reason(build, sources) == "sources changed since the build: batch.py"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"cache_tag": "cpython-312"}, "built for cpython-312"),
        (
            {"modules": {}},
            "sources changed since the build: "
            + ", ".join(sorted(f"{n}.py" for n in compiled.MODULES)),
        ),
    ],
)
def test_a_build_for_another_python_or_other_modules_is_not_used(
    tmp_path: Path, sources: Path, overrides: dict[str, Any], expected: str
) -> None:
    reason = compiled.stale_reason(_fake_build(tmp_path, sources, **overrides), sources)
    assert reason is not None and reason.startswith(expected)


def test_no_build_is_said(tmp_path: Path, sources: Path) -> None:
    reason = compiled.stale_reason(tmp_path / "nothing", sources)
    assert reason is not None and reason.startswith("not built")


def test_required_but_stale_stops_the_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nothing = tmp_path / "nothing"
    monkeypatch.setenv(compiled.ENV, "on")
    path: list[str] = []
    with pytest.raises(ImportError, match="PATRONAGE_COMPILED=on"):
        compiled.activate(path, nothing)
    for lenient in ("auto", "off"):
        monkeypatch.setenv(compiled.ENV, lenient)
        assert compiled.activate(path, nothing) is False and path == []


def test_a_bad_value_stops_a_worker_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from patronage.streams.settings import SettingsError, load_settings

    monkeypatch.setenv("PATRONAGE_COMPILED", "yes please")
    with pytest.raises(SettingsError, match="PATRONAGE_COMPILED"):
        load_settings()


# -- the same batch from both forms ----------------------------------------


def _records() -> list[Record]:
    """Real-shaped traffic (the simulator's shops, 90 days) and every kind's
    schema-valid documents with one leaf made adversarial."""
    events, _ = generate(300, 90, seed=11, start_ms=(NOW // DAY_MS - 91) * DAY_MS)
    records = as_records(events, Settings().partitions)
    rng = random.Random(5)
    for kind, docs in schema_corpus(25).items():
        for doc in docs:
            records.append(Record(TOPIC_OF[kind], 0, len(records), None, render(doc)))
            for _ in range(4):
                records.append(Record(TOPIC_OF[kind], 1, len(records), None, mutate(doc, rng)))
    return records


def summary(batch: PreparedBatch) -> dict[str, Any]:
    """Every field of a prepared batch as plain, comparable text."""

    def fields(obj: Any) -> list[str]:
        return [repr(getattr(obj, f.name)) for f in dataclasses.fields(obj)]

    return {
        "by_customer": {c: [fields(d) for d in ds] for c, ds in batch.by_customer.items()},
        "dead_letters": [[repr(k), letter.model_dump_json()] for k, letter in batch.dead_letters],
        "counters": [
            sorted(map(repr, getattr(batch, name).items()))
            for name in ("accepted", "rejected", "corrected", "lines_dropped")
        ],
        "max_event_ts": sorted(map(repr, batch.max_event_ts.items())),
        "partition_of": batch.partition_of,
        "newest": {str(p): t for p, t in batch.newest.items()},
        "records_of": {c: [r.offset for r in rs] for c, rs in batch.records_of.items()},
    }


def summarise(path: str) -> None:
    """In a child process: prepare the pickled records, print the summary."""
    records = pickle.loads(Path(path).read_bytes())
    settings = Settings()
    batch = prepare_batch(
        records, settings.input_topics, settings.rules, NOW, dt.UTC, {("clicks", 1): 2}
    )
    print(json.dumps({"compiled": compiled.in_use(), "summary": summary(batch)}))


def _prepared_by(form: str, path: Path) -> dict[str, Any]:
    env = {**os.environ, compiled.ENV: form}
    code = f"from tests.unit.test_compiled import summarise; summarise({str(path)!r})"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_the_compiled_modules_prepare_what_the_sources_prepare(tmp_path: Path) -> None:
    """A mypyc build checks annotations at run time and may differ where
    Python is lenient (a float where an int was declared, say): that would
    turn good records into dead letters, or change a delta, on the ingest
    path only. Every field of the prepared batch must be equal."""
    if compiled.mode() != "on" and not _built():
        pytest.skip("compiled modules not built (make install builds them)")
    records = _records()
    path = tmp_path / "records.pickle"
    path.write_bytes(pickle.dumps(records))
    source = _prepared_by("off", path)
    built = _prepared_by("on", path)
    assert (source["compiled"], built["compiled"]) == (False, True)
    expected, actual = source["summary"], built["summary"]
    assert len(expected["dead_letters"]) > 100  # the mutations reached validation
    assert sum(map(len, expected["by_customer"].values())) > 5_000
    for part in expected:
        assert actual[part] == expected[part], part


# -- the same scores from both forms ---------------------------------------


def scores_summary() -> dict[str, Any]:
    """In a child process: profiles of a simulated shop (the pipeline over
    its backlog, in memory), a segment model and prediction parameters
    learnt from them, and every profile's decision, features, predictions
    and value; all as text."""
    import numpy as np

    from patronage.models.features import category_spend, features, rfm_inputs
    from patronage.models.predict import clv_many, fit_population, predictions, purchase_history
    from patronage.models.segments import SegmentTrainer, decide, read_checkpoint
    from patronage.models.segments import checkpoint_text as segment_checkpoint
    from patronage.streams.memory import (
        MemoryModelStore,
        MemoryProfileStore,
        RecordingProducer,
        stored_fields,
    )
    from patronage.streams.pipeline import Pipeline

    settings = Settings(lapse_clock="event")
    events, _ = generate(600, 150, seed=21, start_ms=(NOW // DAY_MS - 151) * DAY_MS)
    records = as_records(events, settings.partitions)
    store = MemoryProfileStore(settings.profile_config)
    pipe = Pipeline(
        settings, store, MemoryModelStore(), RecordingProducer(), clock=lambda: NOW / 1000
    )
    pipe.test(records[i : i + 2000] for i in range(0, len(records), 2000))
    profiles = {c: stored_fields(state) for c, state in sorted(store.states.items())}
    half_life = settings.profile_config.half_life_ms
    # warmup_days a float, as the settings give it: compiled, an int 0 is
    # stored as 0.0 (mypyc converts to the declared type), 0 from the sources.
    trainer = SegmentTrainer(seed=3, warmup=100, warmup_days=0.0, n_clusters=5)
    xs = {}
    for customer_id, fields in profiles.items():
        if "last_seen" in fields:
            spend = category_spend(fields)
            xs[customer_id] = features(fields, spend)
            top = max(spend, key=spend.__getitem__) if spend else None
            trainer.learn(customer_id, xs[customer_id], top, rfm_inputs(fields, NOW, half_life))
    model = trainer.freeze(NOW)
    assert model is not None
    again = read_checkpoint(segment_checkpoint(trainer))
    histories = {c: h for c, f in profiles.items() if (h := purchase_history(f, NOW))}
    fitted = fit_population(list(histories.values()), 1, NOW)
    assert not isinstance(fitted, str), fitted
    columns = [np.array(column) for column in zip(*histories.values(), strict=True)]
    values = clv_many(fitted.purchases, fitted.spend, *columns, weeks=365 / 7)
    return {
        "model": model.to_json(),
        "checkpoint": segment_checkpoint(again),
        "parameters": fitted.to_json(),
        "features": {c: sorted(map(repr, x.items())) for c, x in xs.items()},
        "decisions": {
            c: repr(
                decide(profiles[c], x, model, None, 0.1, rfm_inputs(profiles[c], NOW, half_life))
            )
            for c, x in xs.items()
        },
        "predictions": {c: repr(predictions(f, NOW, fitted)) for c, f in profiles.items()},
        "clv_many": [repr(float(v)) for v in values],
    }


def print_scores() -> None:
    print(json.dumps({"compiled": compiled.in_use(), "summary": scores_summary()}, default=repr))


def _scored_by(form: str) -> dict[str, Any]:
    env = {**os.environ, compiled.ENV: form}
    code = "from tests.unit.test_compiled import print_scores; print_scores()"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_the_compiled_modules_score_what_the_sources_score() -> None:
    """Scoring (segments.py, predict.py) compiled: the model learnt, every
    decision, prediction and value equal to the last bit — a compiled float
    path that rounded differently would move customers between segments and
    tiers on the live path only."""
    if compiled.mode() != "on" and not _built():
        pytest.skip("compiled modules not built (make install builds them)")
    source = _scored_by("off")
    built = _scored_by("on")
    assert (source["compiled"], built["compiled"]) == (False, True)
    expected, actual = source["summary"], built["summary"]
    assert len(expected["decisions"]) > 300
    assert sum(d != "None" for d in expected["decisions"].values()) > 100
    assert sum("'available': True" in p for p in expected["predictions"].values()) > 100
    for part in expected:
        assert actual[part] == expected[part], part
