"""Who may read personal data: tokens, the users file and console sessions."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import SecretStr

from streams.auth import Authenticator, UsersFileError, load_users, write_user
from streams.settings import SettingsError, load_settings

TOKEN = "a-token-of-twenty-chars"


def _basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def test_token_users_and_roles(tmp_path: Path) -> None:
    users = tmp_path / "users"
    write_user(users, "li", "manager", "pw-li")
    write_user(users, "wang", "supervisor", "pw-wang")
    write_user(users, "li", "manager", "new-pw-li")  # replaces li's line
    assert users.stat().st_mode & 0o077 == 0
    assert "pw-" not in users.read_text()
    auth = Authenticator.from_settings(SecretStr(TOKEN), users)

    assert auth.header(f"Bearer {TOKEN}").role == "supervisor"  # type: ignore[union-attr]
    assert auth.header("Bearer not-the-token") is None
    assert auth.header(_basic("li", "pw-li")) is None
    li = auth.header(_basic("li", "new-pw-li"))
    assert li is not None and li.role == "manager" and not li.sees_full_msisdn
    wang = auth.header(_basic("wang", "pw-wang"))
    assert wang is not None and wang.sees_full_msisdn
    assert auth.header(_basic("nobody", "pw-wang")) is None
    assert auth.header("Basic !!!") is None and auth.header(None) is None


def test_sessions_cannot_be_forged_or_outlive_their_process(tmp_path: Path) -> None:
    auth = Authenticator(None, {})
    user = auth.password("x", "y") or auth.token("z")
    assert user is None and not auth.configured
    write_user(tmp_path / "users", "li", "manager", "pw")
    auth = Authenticator.from_settings(None, tmp_path / "users")
    li = auth.password("li", "pw")
    assert li is not None
    cookie = auth.session(li)
    assert auth.from_session(cookie) == li
    body, mac = cookie.rsplit(".", 1)
    forged = base64.b64encode(base64.b64decode(body).replace(b"manager", b"supervisor")).decode() + "." + mac
    assert auth.from_session(forged) is None
    assert Authenticator.from_settings(None, tmp_path / "users").from_session(cookie) is None  # a restart


def test_a_bad_users_file_names_its_line(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("# the console's users\nli manager scrypt$1$2$3$a$b\nwang admin scrypt$x\n")
    with pytest.raises(UsersFileError, match="line 3"):
        load_users(users)
    with pytest.raises(UsersFileError, match="cannot read"):
        load_users(tmp_path / "absent")


def test_the_token_is_a_secret_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURNLIGHT_API_TOKEN", "short-secret")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "CHURNLIGHT_API_TOKEN" in str(err.value) and "short-secret" not in str(err.value)
    monkeypatch.setenv("CHURNLIGHT_API_TOKEN", TOKEN)
    settings = load_settings()
    assert TOKEN not in repr(settings) and settings.bind == "127.0.0.1"
