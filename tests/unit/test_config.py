"""Misconfiguration fails fast, naming the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from eventstore.config import ConfigError, KafkaSettings, ServerSettings, load
from eventstore.domain.access import Quotas


def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTSTORE_CASSANDRA_SERIAL_CONSISTENCY", "SOMETIMES")
    with pytest.raises(ConfigError, match="EVENTSTORE_CASSANDRA_SERIAL_CONSISTENCY"):
        load(ServerSettings)


def test_a_bad_top_level_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTSTORE_READ_PAGE_SIZE", "lots")
    with pytest.raises(ConfigError, match="EVENTSTORE_READ_PAGE_SIZE"):
        load(ServerSettings)


def test_the_server_exits_at_once_on_bad_configuration() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eventstore.server"],
        env={"EVENTSTORE_KAFKA_PARTITIONS": "-3", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "EVENTSTORE_KAFKA_PARTITIONS" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_cassandra_fails_after_the_startup_timeout() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eventstore.server"],
        env={
            "EVENTSTORE_CASSANDRA_HOSTS": "127.0.0.1:1",
            "EVENTSTORE_CASSANDRA_REQUEST_TIMEOUT_S": "0.5",
            "EVENTSTORE_STARTUP_TIMEOUT_S": "0.5",
            "EVENTSTORE_LISTEN": "127.0.0.1:0",
            "EVENTSTORE_AUTH_DISABLED": "true",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "cannot connect to Cassandra at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


def test_secrets_come_from_files_and_are_never_shown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("EVENTSTORE_CASSANDRA_USERNAME", "app")
    monkeypatch.setenv("EVENTSTORE_CASSANDRA_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("EVENTSTORE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("EVENTSTORE_KAFKA_SASL_USERNAME", "app")
    monkeypatch.setenv("EVENTSTORE_KAFKA_SASL_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("EVENTSTORE_AUTH_DISABLED", "true")
    settings = load(ServerSettings)
    assert settings.cassandra.password is not None
    assert settings.cassandra.password.get_secret_value() == "s3cret"
    kafka = settings.kafka.client_config()
    assert kafka["sasl.password"] == "s3cret"
    assert kafka["security.protocol"] == "SASL_SSL"
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings.model_dump())


def test_a_missing_credentials_file_fails_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTSTORE_OPENSEARCH_PASSWORD_FILE", "/nonexistent/secret")
    with pytest.raises(ConfigError, match=r"EVENTSTORE_OPENSEARCH_PASSWORD_FILE: .*cannot read"):
        load(ServerSettings)


def test_a_missing_ca_file_fails_naming_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTSTORE_CASSANDRA_TLS_CA_FILE", "/nonexistent/ca.pem")
    with pytest.raises(ConfigError, match="EVENTSTORE_CASSANDRA_TLS_CA_FILE"):
        load(ServerSettings)


def test_tls_needs_both_certificate_and_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cert = tmp_path / "server.crt"
    cert.write_text("not checked here")
    monkeypatch.setenv("EVENTSTORE_TLS_CERT_FILE", str(cert))
    with pytest.raises(ConfigError, match="EVENTSTORE_TLS_KEY_FILE"):
        load(ServerSettings)


def test_authentication_is_on_unless_explicitly_turned_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("EVENTSTORE_AUTH_DISABLED", raising=False)
    monkeypatch.delenv("EVENTSTORE_PERMISSIONS_FILE", raising=False)
    with pytest.raises(ConfigError, match="EVENTSTORE_PERMISSIONS_FILE is required"):
        load(ServerSettings)
    monkeypatch.setenv("EVENTSTORE_PERMISSIONS_FILE", str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match=r"EVENTSTORE_PERMISSIONS_FILE: .*cannot read"):
        load(ServerSettings)
    permissions = tmp_path / "permissions.yaml"
    permissions.write_text("principals: {}\n")
    monkeypatch.setenv("EVENTSTORE_PERMISSIONS_FILE", str(permissions))
    assert load(ServerSettings).permissions_file == permissions
    monkeypatch.setenv("EVENTSTORE_AUTH_DISABLED", "true")
    with pytest.raises(ConfigError, match="contradict"):
        load(ServerSettings)
    monkeypatch.delenv("EVENTSTORE_PERMISSIONS_FILE")
    assert load(ServerSettings).auth_disabled


def test_limits_whose_largest_kafka_record_would_not_fit_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The largest accepted event must fit a Kafka record (invariant 11): a little more than
    max_event_bytes once encoded (about three times with metadata entries unlimited),
    checked against EVENTSTORE_KAFKA_MAX_MESSAGE_BYTES."""
    monkeypatch.setenv("EVENTSTORE_AUTH_DISABLED", "true")
    monkeypatch.setenv("EVENTSTORE_KAFKA_MAX_MESSAGE_BYTES", "2000000")
    assert load(ServerSettings).kafka.max_message_bytes == 2_000_000
    monkeypatch.setenv("EVENTSTORE_LIMIT_MAX_METADATA_ENTRIES", "1000000")
    with pytest.raises(ConfigError) as caught:
        load(ServerSettings)
    for variable in (
        "EVENTSTORE_LIMIT_MAX_EVENT_BYTES",
        "EVENTSTORE_LIMIT_MAX_METADATA_ENTRIES",
        "EVENTSTORE_KAFKA_MAX_MESSAGE_BYTES",
    ):
        assert variable in str(caught.value)
    monkeypatch.setenv("EVENTSTORE_LIMIT_MAX_EVENT_BYTES", "500000")
    assert load(ServerSettings).kafka.max_message_bytes == 2_000_000
    monkeypatch.delenv("EVENTSTORE_LIMIT_MAX_METADATA_ENTRIES")
    monkeypatch.delenv("EVENTSTORE_KAFKA_MAX_MESSAGE_BYTES")
    monkeypatch.setenv("EVENTSTORE_LIMIT_MAX_EVENT_BYTES", str(70 * 2**20))
    monkeypatch.setenv("EVENTSTORE_LIMIT_MAX_APPEND_BYTES", str(70 * 2**20))
    with pytest.raises(ConfigError, match="clients take at most") as caught:
        load(ServerSettings)
    assert "EVENTSTORE_KAFKA_MAX_MESSAGE_BYTES" in str(caught.value)


def test_consumers_take_a_record_of_the_largest_size() -> None:
    kafka = KafkaSettings(max_message_bytes=10_000_000)
    sizes = kafka.consumer_size_config(fetch_max_bytes=1024 * 1024)
    # librdkafka's own rule, and room for one batch of the largest size plus framing.
    assert int(sizes["receive.message.max.bytes"]) >= int(sizes["fetch.max.bytes"]) + 512
    assert int(sizes["receive.message.max.bytes"]) > 10_000_000 + 512


def test_default_quotas_and_their_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTSTORE_AUTH_DISABLED", "true")
    settings = load(ServerSettings)
    assert settings.max_concurrent_rpcs == 2048
    assert settings.limits.default_quotas() == Quotas(
        max_subscriptions=32,
        max_calls_in_flight=256,
        requests_per_s=5000,
        append_bytes_per_s=8 * 1024 * 1024,
        append_events_per_s=10_000,
        read_bytes_per_s=8 * 1024 * 1024,
    )
    monkeypatch.setenv("EVENTSTORE_LIMIT_DEFAULT_REQUESTS_PER_S", "0")  # 0: no default
    monkeypatch.setenv("EVENTSTORE_LIMIT_DEFAULT_READ_BYTES_PER_S", "0")
    monkeypatch.setenv("EVENTSTORE_LIMIT_DEFAULT_APPEND_BYTES_PER_S", "0")
    monkeypatch.setenv("EVENTSTORE_LIMIT_DEFAULT_APPEND_EVENTS_PER_S", "0")
    monkeypatch.setenv("EVENTSTORE_MAX_CONCURRENT_RPCS", "0")  # 0: unbounded
    settings = load(ServerSettings)
    assert settings.limits.default_quotas() == Quotas(max_subscriptions=32, max_calls_in_flight=256)
    assert settings.max_concurrent_rpcs == 0
    monkeypatch.setenv("EVENTSTORE_LIMIT_DEFAULT_APPEND_BYTES_PER_S", "-1")
    with pytest.raises(ConfigError, match="EVENTSTORE_LIMIT_DEFAULT_APPEND_BYTES_PER_S"):
        load(ServerSettings)


def test_in_flight_rpcs_leave_room_beside_every_subscription(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENTSTORE_AUTH_DISABLED", "true")
    monkeypatch.setenv("EVENTSTORE_MAX_CONCURRENT_RPCS", "512")
    with pytest.raises(ConfigError, match="EVENTSTORE_MAX_CONCURRENT_RPCS=512 must exceed"):
        load(ServerSettings)
    monkeypatch.setenv("EVENTSTORE_LIMIT_MAX_SUBSCRIPTIONS", "100")
    monkeypatch.setenv("EVENTSTORE_LIMIT_MAX_CALLS_IN_FLIGHT_PER_PRINCIPAL", "200")
    assert load(ServerSettings).max_concurrent_rpcs == 512


def test_one_principal_in_flight_leaves_room_for_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENTSTORE_AUTH_DISABLED", "true")
    # The defaults: 256 of the (2048 - 512) / 2 = 768 allowed.
    assert load(ServerSettings).limits.max_calls_in_flight_per_principal == 256
    monkeypatch.setenv("EVENTSTORE_LIMIT_MAX_CALLS_IN_FLIGHT_PER_PRINCIPAL", "769")
    with pytest.raises(
        ConfigError,
        match="EVENTSTORE_LIMIT_MAX_CALLS_IN_FLIGHT_PER_PRINCIPAL=769 must be at most half",
    ):
        load(ServerSettings)
    monkeypatch.setenv("EVENTSTORE_LIMIT_MAX_CALLS_IN_FLIGHT_PER_PRINCIPAL", "768")
    assert load(ServerSettings).limits.max_calls_in_flight_per_principal == 768
    monkeypatch.setenv("EVENTSTORE_MAX_CONCURRENT_RPCS", "1024")  # the room shrinks with it
    with pytest.raises(ConfigError, match="EVENTSTORE_MAX_CONCURRENT_RPCS=1024"):
        load(ServerSettings)
    monkeypatch.setenv("EVENTSTORE_MAX_CONCURRENT_RPCS", "0")  # unbounded: nothing to share
    assert load(ServerSettings).limits.max_calls_in_flight_per_principal == 768
    for wrong in ("0", "-1", "many"):
        monkeypatch.setenv("EVENTSTORE_LIMIT_MAX_CALLS_IN_FLIGHT_PER_PRINCIPAL", wrong)
        with pytest.raises(ConfigError, match="EVENTSTORE_LIMIT_MAX_CALLS_IN_FLIGHT_PER_PRINCIPAL"):
            load(ServerSettings)


def test_min_insync_replicas_above_the_replication_factor_is_refused() -> None:
    with pytest.raises(ValidationError, match="min_insync_replicas"):
        KafkaSettings(replication_factor=1, min_insync_replicas=2)
    assert KafkaSettings(replication_factor=3, min_insync_replicas=2).min_insync_replicas == 2
