"""Settings from the environment (prefix PATRONAGE_), validated at start-up."""

from __future__ import annotations

import datetime as dt
import os
import re
import ssl
import zoneinfo
from collections.abc import Mapping
from decimal import Decimal
from functools import cached_property
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from patronage.models.kinds import INPUT_KINDS, KINDS
from patronage.models.lapse import LapseRules
from patronage.models.profile import ProfileConfig
from patronage.models.timeunits import DAY_MS
from patronage.models.validate import Rules


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PATRONAGE_", extra="ignore", frozen=True)

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    # TLS (SSL / SASL_SSL): CA to verify the brokers against (system CAs when
    # unset); a client certificate + key when the brokers require mutual TLS.
    kafka_ssl_ca_file: str | None = None
    kafka_ssl_cert_file: str | None = None
    kafka_ssl_key_file: str | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True
    group_id: str = "patronage"
    topic_prefix: str = ""
    topic_clicks: str = "clicks"
    topic_purchases: str = "purchases"
    topic_store_receipts: str = "store-receipts"
    topic_customer_attributes: str = "customer-attributes"
    topic_dlq: str = "events-dlq"
    topic_segment_changes: str = "segment-changes"
    topic_lapse_alerts: str = "lapse-alerts"
    topic_erasure_requests: str = "erasure-requests"
    topic_erasure_confirmations: str = "erasure-confirmations"
    partitions: int = Field(8, ge=1, le=1024)
    replication_factor: int = Field(1, ge=1, le=16)

    # Redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_username: str | None = None  # a Redis ACL user; the default user when unset
    redis_password: SecretStr | None = None
    redis_cluster: bool = False  # PATRONAGE_REDIS_URL names one node of the cluster
    redis_tls_ca_file: str | None = None  # CA to verify a rediss:// server against
    key_prefix: str = "patronage"

    # Worker
    # A cap, reached only when behind (a live worker's batches are what
    # arrived within batch_within_s): more of a customer's events per apply
    # call drains a backlog faster; each 10k records cost ~30 MB while in hand.
    batch_max: int = Field(20_000, ge=1, le=100_000)
    batch_within_s: float = Field(0.1, gt=0, le=60)
    # How long the broker gathers records before answering a fetch of the
    # input topics; 0: at the first record (Kafka's default). Answered at
    # the first record, a live worker fetched a record or two at a time.
    fetch_wait_ms: int = Field(5, ge=0, le=500)
    # Batches of at least this many records are validated in the worker's
    # prepare process while the batch before them is finished (a second
    # core's worth of Python when catching up); smaller ones, as a live
    # worker's are, in the worker itself, without the hop.
    prepare_process: bool = True
    prepare_process_min_records: int = Field(2_000, ge=1, le=100_000)
    # Prepare processes, so as many large batches prepared ahead: preparing
    # set a catching-up worker's pace with one (docs/benchmarks.md, "Two
    # prepare processes"). All start with the worker (fitpool.FitProcess.start).
    prepare_processes: int = Field(2, ge=1, le=16)
    # The mypyc-compiled ingest and scoring modules (patronage/compiled.py), read when
    # patronage.models is first imported; validated here so a typo stops start-up.
    compiled: Literal["auto", "on", "off"] = "auto"
    # How far below the worker the learner's fit process runs (nice(2)
    # steps): on a saturated host its refits, which can wait, took the CPU
    # live events needed. 0: the worker's own priority.
    fit_niceness: int = Field(10, ge=0, le=19)
    commit_interval_s: float = Field(1.0, gt=0, le=60)
    session_timeout_s: float = Field(30.0, ge=6, le=300)
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=1, le=65535)
    data_dir: str = ".patronage"
    log_level: Literal["debug", "info", "warn", "error"] = "info"
    redis_retry_max_s: float = Field(5.0, gt=0, le=300)
    lag_interval_s: float = Field(5.0, gt=0, le=3600)
    web_token: SecretStr | None = None
    # "none" opens the web endpoints (personal data under /profiles) on a
    # non-loopback address without a token: only ever on purpose.
    web_auth: Literal["token", "none"] = "token"

    # Inactive profiles expire after this many days without an update (0 = never).
    retention_days: float = Field(0.0, ge=0, le=36_500)

    # Profile semantics
    default_zone: str = "UTC"
    half_life_days: float = Field(30.0, gt=0, le=3650)
    map_cap: int = Field(32, ge=1, le=1000)
    session_window: int = Field(32, ge=1, le=10_000)
    # Events other than orders count once if re-sent within this much event
    # time of the customer's newest event; orders and receipts count once for
    # life, by order_id / store_id + receipt_id.
    dedupe_window_days: float = Field(7.0, gt=0, le=3650)
    # ... keeping at most this many event ids per customer (9 bytes each).
    dedupe_max_events: int = Field(4096, ge=16, le=1_000_000)

    # Lapse alerts
    lapse_min_visits: int = Field(6, ge=2, le=1000)
    lapse_min_tenure_days: float = Field(90.0, ge=0, le=3650)
    # Lapses are judged between visit days: a threshold under a day is not one.
    lapse_min_gap_days: float = Field(14.0, ge=1, le=3650)
    lapse_gap_multiplier: float = Field(3.0, gt=0, le=100)
    lapse_clock: Literal["wall", "event"] = "wall"
    # Event clock (models/clock.py): a partition's clock is the slowest of its
    # activity topics; lapses are judged at that clock minus this lateness,
    # for disorder within one topic (a till uploading late, a retry queue).
    lapse_event_lateness_s: float = Field(86_400.0, ge=0, le=86_400 * 30)
    # An activity topic that delivered nothing for this long stops holding its
    # partitions' clocks back (a shop without tills, a quiet night).
    lapse_input_idle_s: float = Field(300.0, gt=0, le=86_400)
    lapse_sweep_interval_s: float = Field(5.0, gt=0, le=3600)
    lapse_sweep_batch: int = Field(1000, ge=1, le=100_000)
    lapse_sweep_slice: int = Field(100, ge=1, le=100_000)

    # Segments
    segments: int = Field(5, ge=2, le=12)
    segment_hysteresis: float = Field(0.1, ge=0, lt=1)
    # Customers sampled before the first model, and at most in the sample.
    segment_warmup: int = Field(500, ge=10, le=1_000_000)
    segment_sample_customers: int = Field(10_000, ge=100, le=1_000_000)
    # ... and days of activity behind the longest-active sampled customer: a
    # model learnt on a young population re-labels customers as it matures.
    segment_warmup_days: float = Field(90.0, ge=0, le=3650)
    # A new version is promoted at most once per interval, and only when a
    # segment centre moved at least this far (in standard deviations).
    segment_promote_interval_s: float = Field(300.0, gt=0, le=86_400)
    segment_promote_min_shift: float = Field(0.05, ge=0, le=10)
    segment_refresh_interval_s: float = Field(2.0, gt=0, le=3600)
    # Customers re-scored per slice after a promotion; ingest runs between slices.
    segment_rescore_slice: int = Field(50, ge=10, le=10_000)
    # Share of the worker's time a re-scoring (promotion) or re-valuing
    # (refit) pass may take; it rests between slices to stay under it, and
    # takes less while ingest is busy (pacing.pass_share). 1: no rests,
    # every idle moment of the loop.
    background_pass_share: float = Field(0.25, gt=0, le=1)
    segment_seed: int = 42
    # Share of customers (by id hash) whose every update feeds the learner;
    # it keeps each sampled customer's latest state. Past ~50,000 customers a
    # share that still yields `segment_sample_customers` saves messages.
    segment_learn_sample: float = Field(1.0, gt=0, le=1)
    # How long the learner's vectors gather in the worker before they go
    # out together (sooner when a message is full or the input is idle; 0:
    # a message a batch). A live worker made ~140 batches a second at 1k
    # events/s; a message each, sent, fetched and handed to the learner,
    # cost ~30 % of its CPU (docs/benchmarks.md).
    segment_features_interval_s: float = Field(0.25, ge=0, le=60)
    topic_segment_features: str = "segment-features"

    # Predictions: the annual rate future value is discounted at (CLV), and
    # how often the learner refits the population parameters
    prediction_discount_rate: float = Field(0.10, ge=0, le=1)
    prediction_refit_interval_s: float = Field(3600.0, gt=0, le=7 * 86_400)
    # Value tiers and at-risk moments judged on every apply (off: only at read time).
    predictions_live: bool = True
    # A buyer is `at_risk` once p_alive falls below this with no purchase since.
    prediction_at_risk_threshold: float = Field(0.3, gt=0, lt=1)

    # Identity stitching (docs/identity.md): links and unlinks arrive on
    # `identities` (one partition: one worker applies them, in order); each
    # change of the people they make goes out on `identity-changes`.
    identity_stitching: bool = True
    topic_identities: str = "identities"
    topic_identity_changes: str = "identity-changes"
    # A link beyond these is refused to the DLQ (a shared tablet, a store's
    # guest card); 1 customer per identifier: a second claim is refused, not merged.
    identity_max_identifiers_per_customer: int = Field(20, ge=1, le=1000)
    identity_max_customers_per_identifier: int = Field(1, ge=1, le=1000)
    # Nodes (customers and identifiers) read around a link at most.
    identity_max_component: int = Field(2000, ge=10, le=100_000)
    # Persons kept in each worker's cache (emptied when any person changes).
    identity_cache_size: int = Field(100_000, ge=0, le=10_000_000)

    # Validation
    currencies: dict[str, float] = {"EUR": 1.0}
    max_future_s: int = Field(300, ge=0, le=86_400 * 7)
    max_payload_bytes: int = Field(65_536, ge=256, le=10 * 1024 * 1024)
    max_items: int = Field(500, ge=1, le=100_000)
    # Bounds of a receipt line; a line outside them is dropped (with a
    # line-level dead letter), the rest of its receipt still counts.
    max_quantity: float = Field(1000, gt=0, le=10_000_000)
    max_unit_price: float = Field(1_000_000, gt=0, le=1e12)
    # Events before this are refused (historical imports: set it earlier).
    earliest_event_time: dt.datetime = dt.datetime(1990, 1, 1, tzinfo=dt.UTC)
    # A dead letter keeps at most this much of the original payload (plus its
    # length and SHA-256), so it always fits the broker's 1 MB message limit.
    dlq_payload_max_bytes: int = Field(65_536, ge=256, le=131_072)

    @field_validator("default_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like UTC)") from exc
        return value

    @field_validator("currencies")
    @classmethod
    def _rates(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("at least one currency is needed, e.g. '{\"EUR\": 1.0}'")
        cleaned = {}
        for code, rate in value.items():
            if len(code) != 3 or not code.isalpha():
                raise ValueError(f"{code!r} is not an ISO 4217 code")
            if not rate > 0:
                raise ValueError(f"rate for {code} must be > 0, got {rate}")
            cleaned[code.upper()] = rate
        return cleaned

    @field_validator("earliest_event_time")
    @classmethod
    def _aware(cls, value: dt.datetime) -> dt.datetime:
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)

    @field_validator("kafka_bootstrap")
    @classmethod
    def _hostports(cls, value: str) -> str:
        for part in value.split(","):
            host, _, port = part.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{part!r} is not host:port")
        return value

    @field_validator(
        "redis_tls_ca_file", "kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file"
    )
    @classmethod
    def _ca_exists(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isfile(value):
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("key_prefix")
    @classmethod
    def _plain_prefix(cls, value: str) -> str:
        # The prefix is used in SCAN patterns (`patronage store reset`, exports): a
        # glob character would match, and delete, other applications' keys.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
            raise ValueError(
                "use 1-64 letters, digits, '_', '.' or '-' (no glob characters, braces "
                "or ':'), starting with a letter or digit"
            )
        return value

    @model_validator(mode="after")
    def _web_not_open_by_accident(self) -> Settings:
        loopback = self.web_host in ("localhost", "::1") or self.web_host.startswith("127.")
        if not loopback and self.web_token is None and self.web_auth != "none":
            raise ValueError(
                f"PATRONAGE_WEB_HOST is {self.web_host} (not loopback) and PATRONAGE_WEB_TOKEN "
                "is not set: /profiles would serve personal data to anyone who can reach it. "
                "Set PATRONAGE_WEB_TOKEN, or PATRONAGE_WEB_AUTH=none if that is really wanted"
            )
        return self

    @model_validator(mode="after")
    def _sasl_complete(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "PATRONAGE_KAFKA_SECURITY_PROTOCOL is SASL_*: set PATRONAGE_KAFKA_SASL_USERNAME "
                "and PATRONAGE_KAFKA_SASL_PASSWORD"
            )
        return self

    @model_validator(mode="after")
    def _kafka_tls_consistent(self) -> Settings:
        tls_files = {
            "PATRONAGE_KAFKA_SSL_CA_FILE": self.kafka_ssl_ca_file,
            "PATRONAGE_KAFKA_SSL_CERT_FILE": self.kafka_ssl_cert_file,
            "PATRONAGE_KAFKA_SSL_KEY_FILE": self.kafka_ssl_key_file,
        }
        given = [name for name, value in tls_files.items() if value]
        if given and not self.kafka_uses_tls:
            # A CA file with PLAINTEXT is almost always a forgotten protocol
            # setting: refusing beats silently talking in clear text.
            raise ValueError(
                f"{', '.join(given)} set but PATRONAGE_KAFKA_SECURITY_PROTOCOL is "
                f"{self.kafka_security_protocol}: use SSL or SASL_SSL"
            )
        if bool(self.kafka_ssl_cert_file) != bool(self.kafka_ssl_key_file):
            raise ValueError(
                "PATRONAGE_KAFKA_SSL_CERT_FILE and PATRONAGE_KAFKA_SSL_KEY_FILE go together "
                "(client certificate for mutual TLS)"
            )
        return self

    # -- derived ---------------------------------------------------------
    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    @cached_property
    def input_topics(self) -> dict[str, str]:
        """Full topic name -> event kind."""
        return {self.topic(getattr(self, k.topic_setting)): k.name for k in INPUT_KINDS}

    @cached_property
    def activity_topics(self) -> list[str]:
        """Input topics whose events are visits (they drive the event clock)."""
        return [t for t, kind in self.input_topics.items() if KINDS[kind].activity]

    @cached_property
    def topic_for_kind(self) -> dict[str, str]:
        return {kind: topic for topic, kind in self.input_topics.items()}

    @property
    def control_topics(self) -> list[str]:
        """Low-volume topics the Faust agents read (learner, erasure)."""
        return [
            self.topic(self.topic_segment_features),
            self.topic(self.topic_erasure_requests),
            self.topic(self.topic_identities),
        ]

    @property
    def control_group_id(self) -> str:
        """The Faust app's consumer group: the input topics are read by
        `group_id` below Faust (streams/ingest.py), in a group of their own
        because the two consumers speak different assignment protocols."""
        return f"{self.group_id}-control"

    @property
    def output_topics(self) -> list[str]:
        return [
            self.topic(self.topic_segment_features),
            self.topic(self.topic_dlq),
            self.topic(self.topic_segment_changes),
            self.topic(self.topic_lapse_alerts),
            self.topic(self.topic_erasure_requests),
            self.topic(self.topic_erasure_confirmations),
            self.topic(self.topic_identities),
            self.topic(self.topic_identity_changes),
        ]

    @cached_property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.default_zone)

    @cached_property
    def rules(self) -> Rules:
        return Rules(
            currencies=dict(self.currencies),
            default_zone=self.zone,
            max_future_ms=self.max_future_s * 1000,
            max_payload_bytes=self.max_payload_bytes,
            max_items=self.max_items,
            max_quantity=Decimal(str(self.max_quantity)),
            max_unit_price=Decimal(str(self.max_unit_price)),
            min_ts_ms=int(self.earliest_event_time.timestamp() * 1000),
            dlq_payload_max_bytes=self.dlq_payload_max_bytes,
        )

    @cached_property
    def profile_config(self) -> ProfileConfig:
        return ProfileConfig(
            half_life_ms=int(self.half_life_days * DAY_MS),
            map_cap=self.map_cap,
            session_window=self.session_window,
            dedupe_window_ms=int(self.dedupe_window_days * DAY_MS),
            dedupe_max_events=self.dedupe_max_events,
            record_orders=self.predictions_live,
            lapse=LapseRules(
                min_visits=self.lapse_min_visits,
                min_tenure_days=self.lapse_min_tenure_days,
                min_gap_days=self.lapse_min_gap_days,
                gap_multiplier=self.lapse_gap_multiplier,
            ),
        )

    @property
    def kafka_uses_tls(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")

    def kafka_ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for the brokers, or None when the protocol has no TLS."""
        if not self.kafka_uses_tls:
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.kafka_ssl_ca_file)
        context.check_hostname = self.kafka_ssl_check_hostname
        if self.kafka_ssl_cert_file:
            password = self.kafka_ssl_key_password
            context.load_cert_chain(
                self.kafka_ssl_cert_file,
                self.kafka_ssl_key_file,
                password=password.get_secret_value() if password else None,
            )
        return context

    def kafka_client_kwargs(self) -> dict[str, object]:
        """Connection arguments shared by every aiokafka client we create."""
        kwargs: dict[str, object] = {
            "bootstrap_servers": self.kafka_bootstrap,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_uses_tls:
            kwargs["ssl_context"] = self.kafka_ssl_context()
        if self.kafka_security_protocol.startswith("SASL"):
            assert self.kafka_sasl_password is not None
            kwargs.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=self.kafka_sasl_password.get_secret_value(),
            )
        return kwargs


class SettingsError(SystemExit):
    pass


def settings_with(env: Mapping[str, str]) -> Settings:
    """Settings as if these PATRONAGE_* variables were set (tests, benchmarks)."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def load_settings() -> Settings:
    """Read and validate settings; on error exit with which setting and why."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = ["patronage: invalid settings:"]
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "(settings)"
            env = f"PATRONAGE_{name.upper()}" if err["loc"] else "settings"
            lines.append(f"  {env}: {err['msg']}")
        raise SettingsError("\n".join(lines)) from None
