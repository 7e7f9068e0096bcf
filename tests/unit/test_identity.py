import json
from pathlib import Path

import pytest

from flynn.common.errors import ConfigError
from flynn.host.identity import id_from_hostname, load_or_create, validate_id


def test_id_from_hostname_strips_punctuation() -> None:
    assert id_from_hostname("ip-10-0-2-237.ec2.internal") == "ip1002237"
    assert id_from_hostname("host1") == "host1"


def test_id_from_unusable_hostname_is_an_error() -> None:
    with pytest.raises(ConfigError, match="FLYNN_HOST_ID"):
        id_from_hostname("---")


@pytest.mark.parametrize("bad", ["", "a-b", "x" * 64, "h\x00", "h/1"])
def test_validate_rejects(bad: str) -> None:
    with pytest.raises(ConfigError):
        validate_id(bad)


def test_identity_is_created_once_and_kept(tmp_path: Path) -> None:
    first = load_or_create(tmp_path, "hostA")
    again = load_or_create(tmp_path)  # no configured id: the stored one wins
    assert again == first
    assert json.loads((tmp_path / "host.json").read_text())["id"] == "hostA"


def test_conflicting_configured_id_is_refused(tmp_path: Path) -> None:
    load_or_create(tmp_path, "hostA")
    with pytest.raises(ConfigError, match="belongs to host 'hostA'"):
        load_or_create(tmp_path, "hostB")


def test_corrupt_state_is_a_clear_error_and_left_in_place(tmp_path: Path) -> None:
    (tmp_path / "host.json").write_text("{not json")
    with pytest.raises(ConfigError, match="corrupt"):
        load_or_create(tmp_path)
    assert (tmp_path / "host.json").read_text() == "{not json"
