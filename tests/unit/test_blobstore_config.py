"""blobstore configuration, path rules (fuzzed with hypothesis) and its systemd unit."""

from __future__ import annotations

import configparser
import fnmatch
import string
import tomllib
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from flynn.blobstore.backends import check_spec, create_backend
from flynn.blobstore.config import BlobstoreConfig
from flynn.blobstore.paths import MAX_PATH_BYTES, InvalidPath, validate_path, validate_prefix
from flynn.common.errors import ConfigError

URL = "postgresql://blobstore:s3cret-pw-0123@127.0.0.1:5432/blobstore"
UNIT = Path(__file__).resolve().parents[2] / "units" / "flynn-blobstore.service"
ALLOWED = set(string.ascii_letters + string.digits + "._-")


def cfg(**env: str) -> BlobstoreConfig:
    return BlobstoreConfig.from_env({"DATABASE_URL": URL, **env})


# -- configuration ---------------------------------------------------------------------------------


def test_defaults() -> None:
    c = cfg()
    assert c.port == 1210
    assert c.addr is None
    assert c.max_bytes == 10 << 30
    assert c.default_backend == "postgres"
    assert c.default.kind == "postgres"
    assert set(c.backends) == {"postgres"}
    assert create_backend(c).kind == "postgres"


def test_database_url_is_required_and_checked() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL is not set"):
        BlobstoreConfig.from_env({})
    with pytest.raises(ConfigError, match="postgresql://"):
        BlobstoreConfig.from_env({"DATABASE_URL": "mysql://x"})


def test_addr_forms() -> None:
    assert cfg(BLOBSTORE_ADDR="10.0.0.5").addr == "10.0.0.5:1210"
    assert cfg(BLOBSTORE_ADDR="10.0.0.5", BLOBSTORE_PORT="1300").addr == "10.0.0.5:1300"
    assert cfg(BLOBSTORE_ADDR="10.0.0.5:99").addr == "10.0.0.5:99"
    with pytest.raises(ConfigError, match="BLOBSTORE_ADDR"):
        cfg(BLOBSTORE_ADDR="not-an-ip")
    with pytest.raises(ConfigError, match="BLOBSTORE_PORT"):
        cfg(BLOBSTORE_PORT="70000")


def test_discoverd_urls() -> None:
    assert cfg(DISCOVERD="http://10.0.0.1:1111/, http://10.0.0.2:1111").discoverd_urls == [
        "http://10.0.0.1:1111",
        "http://10.0.0.2:1111",
    ]


def test_backends_as_in_flynn() -> None:
    c = cfg(
        BACKEND_S3MAIN="backend=s3 region=us-east-1 bucket=flynnblobstore"
        " access_key_id=AKIAXX secret_access_key=SSSS",
        BACKEND_GCSMAIN="backend=gcs bucket=b",
        BACKEND_GCSMAIN_KEY='{"private_key": "KEYDATA"}',
        DEFAULT_BACKEND="s3main",
    )
    assert set(c.backends) == {"postgres", "s3main", "gcsmain"}
    s3 = c.backends["s3main"]
    assert s3.kind == "s3"
    assert s3.options["bucket"] == "flynnblobstore"
    assert c.backends["gcsmain"].options["key"] == '{"private_key": "KEYDATA"}'
    assert c.default is s3
    secrets = set(c.secrets())
    assert {"AKIAXX", "SSSS", '{"private_key": "KEYDATA"}', "s3cret-pw-0123"} <= secrets
    assert "us-east-1" not in secrets
    assert "flynnblobstore" not in secrets


@pytest.mark.parametrize("kind", ["s3", "gcs", "azure"])
def test_unbuilt_kinds_fail_at_start_with_one_line(kind: str) -> None:
    c = cfg(BACKEND_OTHER=f"backend={kind} bucket=b secret=TOPSECRET")
    with pytest.raises(ConfigError) as err:
        create_backend(c)  # configured, even if not the default: refused, not ignored
    message = str(err.value)
    assert f"backend={kind} is not built yet" in message
    assert "\n" not in message
    assert "TOPSECRET" not in message


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"BACKEND_X": "region=a"}, "no backend=<kind>"),
        ({"BACKEND_X": "backend=s3 junk"}, "setting 2 is not key=value"),
        ({"BACKEND_X": "backend=s3 a=1 a=2"}, "a is given twice"),
        ({"BACKEND_S3_MAIN": "backend=s3"}, "letters and digits"),
        ({"BACKEND_ORPHAN_KEY": "k"}, "BACKEND_ORPHAN is not"),
        ({"DEFAULT_BACKEND": "nope"}, "names no configured backend"),
        ({"BLOBSTORE_MAX_BYTES": "-1"}, "below the minimum"),
    ],
)
def test_bad_backend_settings(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg(**env)


def test_unknown_kind_and_postgres_settings_are_refused() -> None:
    c = cfg(BACKEND_FOO="backend=ftp host=h")
    with pytest.raises(ConfigError, match="unknown backend=ftp"):
        check_spec(c.backends["foo"])
    c = cfg(BACKEND_POSTGRES="backend=postgres url=x")
    with pytest.raises(ConfigError, match="takes no settings"):
        create_backend(c)


# -- paths -----------------------------------------------------------------------------------------


def spec_valid(path: str) -> bool:
    """The rule of docs/blobstore.md, written independently of the implementation."""
    if not path.startswith("/") or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return False
    if path == "/status":
        return False
    segments = path[1:].split("/")
    return all(seg and set(seg) <= ALLOWED and seg not in (".", "..") for seg in segments)


TOKENS = [*sorted(ALLOWED), "/", "/", "..", "%2F", " ", "\x00", "é", "\\", "\n", "status", "abc"]
PATHISH = st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)


@given(st.one_of(PATHISH.map(lambda s: "/" + s), st.text(), PATHISH))
@example("/status")
@example("/a/./b")
@example("/a/../b")
@example("/..")
@example("/a/")
@example("//a")
@example("/" + "a" * (MAX_PATH_BYTES - 1))
@example("/" + "a" * MAX_PATH_BYTES)
@example("/a\n")
@example("/a\udcff")
def test_validate_path_agrees_with_the_spec(path: str) -> None:
    if spec_valid(path):
        assert validate_path(path) == path
    else:
        with pytest.raises(InvalidPath):
            validate_path(path)


@given(PATHISH)
def test_validate_prefix(prefix: str) -> None:
    canonical = prefix if prefix.startswith("/") else "/" + prefix
    if set(prefix) <= ALLOWED | {"/"} and len(canonical) <= MAX_PATH_BYTES:
        assert validate_prefix(prefix) == canonical
    else:
        with pytest.raises(InvalidPath):
            validate_prefix(prefix)


# -- the unit --------------------------------------------------------------------------------------


def unit() -> configparser.SectionProxy:
    cp = configparser.RawConfigParser(strict=False, delimiters=("=",), interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(UNIT.read_text())
    return cp["Service"]


def test_unit_is_notify_dynamic_user_without_capabilities() -> None:
    svc = unit()
    assert svc["Type"] == "notify"
    assert svc["DynamicUser"] == "yes"
    assert svc["CapabilityBoundingSet"] == ""
    assert svc.get("AmbientCapabilities", "") == ""
    env_files = [
        ln.split("=", 1)[1] for ln in UNIT.read_text().splitlines() if ln.startswith("EnvironmentFile=")
    ]
    assert env_files == ["/etc/flynn/blobstore.env", "-/etc/flynn/blobstore.app.env"]
    assert svc["ExecStart"] == "/opt/flynn/venv/bin/flynn-blobstore"
    assert svc["Slice"] == "flynn.slice"
    for key in ("ProtectSystem", "NoNewPrivileges", "PrivateTmp", "PrivateDevices", "MemoryDenyWriteExecute"):
        assert svc[key] in ("strict", "yes"), key


def test_unit_is_skipped_until_configured() -> None:
    text = UNIT.read_text()
    assert "ConditionPathExists=/etc/flynn/blobstore.env" in text


def test_schema_files_are_packaged() -> None:
    """The wheel the appliance installs must carry the migrations (setuptools package-data)."""
    pyproject = tomllib.loads((UNIT.parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["flynn"]
    sql = sorted((UNIT.parents[1] / "services/flynn/blobstore/backends/migrations").glob("*.sql"))
    assert sql
    for path in sql:
        rel = path.relative_to(UNIT.parents[1] / "services/flynn").as_posix()
        assert any(fnmatch.fnmatch(rel, pattern) for pattern in patterns), f"{rel} is not in package-data"


def test_console_script_is_declared() -> None:
    pyproject = (UNIT.parents[1] / "pyproject.toml").read_text()
    assert 'flynn-blobstore = "flynn.blobstore.daemon:main"' in pyproject
