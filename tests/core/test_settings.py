from __future__ import annotations

import pytest
from pydantic import ValidationError

from copyloop.runner import settings_env
from core.settings import load_settings


def test_contract_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("COPYLOOP_DATABASE_URL", "COPYLOOP_KAFKA_BOOTSTRAP", "COPYLOOP_HOLDOUT"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings(_env_file=None)
    assert s.database_url == "sqlite:///./var/copyloop.db"
    assert s.kafka_bootstrap is None and s.embedded_broker and s.bootstrap == "127.0.0.1:9092"
    assert (s.topic_prefix, s.reward_window_s, s.clock_skew_s, s.holdout) == (
        "copyloop",
        1800.0,
        120.0,
        0.1,
    )
    assert (s.generator_backend, s.generator_model) == ("rules", None)
    assert s.decisions_topic == "copyloop.decisions"
    assert s.dlq_topic == "copyloop.events.dlq"


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPYLOOP_HOLDOUT", "0.25")
    monkeypatch.setenv("COPYLOOP_BANNED_TERMS", "cheap, knock-off")
    monkeypatch.setenv("COPYLOOP_KAFKA_BOOTSTRAP", "k1:9092")
    s = load_settings()
    assert s.holdout == 0.25
    assert s.banned_terms == ["cheap", "knock-off"]
    assert s.bootstrap == "k1:9092" and not s.embedded_broker


def test_blank_optional_settings_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`VAR=` (a compose file's `${VAR:-}`) is the default, not an empty address or model."""
    monkeypatch.setenv("COPYLOOP_KAFKA_BOOTSTRAP", "")
    monkeypatch.setenv("COPYLOOP_GENERATOR_MODEL", " ")
    monkeypatch.setenv("COPYLOOP_GENERATOR_BATCH_SIZE", "")
    monkeypatch.setenv("COPYLOOP_TOKEN_SECRET", "")
    s = load_settings(_env_file=None)
    assert s.kafka_bootstrap is None and s.embedded_broker and s.bootstrap == "127.0.0.1:9092"
    assert (s.generator_model, s.generator_batch_size, s.token_secret) == (None, None, None)
    monkeypatch.setenv("COPYLOOP_BANDIT_EXTRA_ARGS", "")  # a string setting: blank is a value
    assert load_settings(_env_file=None).bandit_extra_args == ""


def test_holdout_message_is_exact() -> None:
    with pytest.raises(ValidationError, match=r"holdout must be in \[0, 1\], got 2.0"):
        load_settings(holdout=2.0)


def test_vw_args_from_parts() -> None:
    """copyloop's explorers ride on VW's cost regression (`--cb_adf`); VW's others on
    `--cb_explore_adf`."""
    s = load_settings(bandit_explorer="--squarecb", bandit_interactions="UA PA")
    assert s.vw_args == "--cb_adf --squarecb -q UA -q PA --power_t 0 -l 0.05 --ignore A"
    s = load_settings(bandit_explorer="--bag 5", bandit_interactions="UA", bandit_extra_args="")
    assert s.vw_args == "--cb_explore_adf --bag 5 -q UA"


def test_settings_round_trip_through_child_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings(holdout=0.3, banned_terms=["a b", "c"], kafka_bootstrap="x:1")
    for key, value in settings_env(s).items():
        monkeypatch.setenv(key, value)
    assert load_settings() == s


def test_shadow_explorers_split_on_semicolons_or_read_json() -> None:
    from core.settings import load_settings

    specs = ["--epsilon 0.1", "--squarecb --gamma_scale 2"]
    assert (
        load_settings(shadow_explorers="--epsilon 0.1; --squarecb --gamma_scale 2").shadow_explorers
        == specs
    )
    assert load_settings(shadow_explorers='["--epsilon 0.1"]').shadow_explorers == specs[:1]
    assert load_settings(shadow_explorers="[]").shadow_explorers == []
