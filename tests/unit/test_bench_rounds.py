"""The latency benchmark's summary over alternating rounds (issue #13's
±20 % is read from it), as a table."""

from __future__ import annotations

import pytest

from benchmarks.bench import latency_rounds

CASES = [
    # (p99 runs per (rate, promotions, load producer), expected rows without the runs)
    (
        {
            (5000, "off", "librdkafka"): [60.0, 70.0, 80.0],
            (5000, "on", "librdkafka"): [66.0, 77.0, 100.0],
        },
        [
            {
                "rate": 5000,
                "promotions": "off",
                "load_producer": "librdkafka",
                "p99_ms_mean": 70.0,
                "p99_ms_median": 70.0,
            },
            {
                "rate": 5000,
                "promotions": "on",
                "load_producer": "librdkafka",
                "p99_ms_mean": 81.0,
                "p99_ms_median": 77.0,
                "vs_off_mean_percent": 15.7,
                "vs_off_median_percent": 10.0,
            },
        ],
    ),
    # No `off` runs at that rate: nothing to compare with.
    (
        {(1000, "on", "librdkafka"): [20.0, 10.0], (5000, "off", "librdkafka"): [50.0]},
        [
            {
                "rate": 1000,
                "promotions": "on",
                "load_producer": "librdkafka",
                "p99_ms_mean": 15.0,
                "p99_ms_median": 15.0,
            },
            {
                "rate": 5000,
                "promotions": "off",
                "load_producer": "librdkafka",
                "p99_ms_mean": 50.0,
                "p99_ms_median": 50.0,
            },
        ],
    ),
    # Faster with promotions than without: a negative difference.
    (
        {(1000, "off", "librdkafka"): [20.0], (1000, "none", "librdkafka"): [15.0]},
        [
            {
                "rate": 1000,
                "promotions": "off",
                "load_producer": "librdkafka",
                "p99_ms_mean": 20.0,
                "p99_ms_median": 20.0,
            },
            {
                "rate": 1000,
                "promotions": "none",
                "load_producer": "librdkafka",
                "p99_ms_mean": 15.0,
                "p99_ms_median": 15.0,
                "vs_off_mean_percent": -25.0,
                "vs_off_median_percent": -25.0,
            },
        ],
    ),
    # `off` offered by another client is not this setting's baseline.
    (
        {(1000, "off", "aiokafka"): [20.0], (1000, "on", "librdkafka"): [10.0]},
        [
            {
                "rate": 1000,
                "promotions": "off",
                "load_producer": "aiokafka",
                "p99_ms_mean": 20.0,
                "p99_ms_median": 20.0,
            },
            {
                "rate": 1000,
                "promotions": "on",
                "load_producer": "librdkafka",
                "p99_ms_mean": 10.0,
                "p99_ms_median": 10.0,
            },
        ],
    ),
]


@pytest.mark.parametrize(("p99s", "expected"), CASES)
def test_latency_rounds_against_off(
    p99s: dict[tuple[int, str, str], list[float]], expected: list[dict[str, object]]
) -> None:
    rows = latency_rounds(p99s)
    assert [r.pop("p99_ms_runs") for r in rows] == list(p99s.values())
    assert rows == expected


def test_the_librdkafka_load_refuses_a_secured_broker_by_name() -> None:
    """It is given the bootstrap address only: against a TLS or SASL broker
    it would fail to connect with nothing saying why."""
    from benchmarks.bench import LibrdkafkaLoad
    from patronage.streams.settings import Settings

    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password="p"
    )
    with pytest.raises(SystemExit, match="PATRONAGE_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT"):
        LibrdkafkaLoad(settings)
