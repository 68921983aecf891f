from __future__ import annotations

import pytest

from roamlink import Config, ConfigError


def test_defaults_are_valid() -> None:
    cfg = Config()
    assert cfg.max_datagram_size == 1200 and cfg.idle_timeout == 30.0 and cfg.cid_length >= 8


@pytest.mark.parametrize(("field", "value"), [
    ("max_datagram_size", 100), ("cid_length", 4), ("idle_timeout", -1),
    ("idle_timeout", "soon"), ("congestion_control", "bbr9"), ("versions", ()),
    ("pacing", 1), ("receive_window", 10), ("max_rto", 0.001),
])
def test_invalid_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field
    assert field in str(info.value)


def test_from_mapping_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_mapping({"idle_timeout": 5, "idel_timeout": 3})
    assert info.value.field == "idel_timeout"
    assert Config.from_mapping({"idle_timeout": 5, "versions": [1]}).idle_timeout == 5
