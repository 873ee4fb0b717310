"""Who may read personal data: the API token and the users file (CONTRACT §4), for worker and console.

The users file has one user a line, `name role hash`, `#` starting a comment; `role` is `manager`
(sees masked msisdns) or `supervisor` (sees them in full); `hash` is what `hash_password` writes
(`scrypt$n$r$p$salt$key`, base64). The API token stands for a supervisor: it is what the console
and other systems use to ask the workers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from pydantic import SecretStr

Role = Literal["manager", "supervisor"]
ROLES: Final[tuple[Role, ...]] = ("manager", "supervisor")
TOKEN_USER: Final = "api-token"

# scrypt at n=2**14, r=8, p=1 (16 MiB, ~40 ms here): slow for a guesser, quick enough for a login.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


class UsersFileError(ValueError):
    """The users file cannot be read; the message names the line."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role

    @property
    def sees_full_msisdn(self) -> bool:
        return self.role == "supervisor"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """Return the users-file hash of `password`."""
    salt = os.urandom(16) if salt is None else salt
    key = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """Tell whether `password` matches a `hash_password` hash (False for a malformed hash)."""
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key, validate=True)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True), n=int(n), r=int(r),
                             p=int(p), dklen=len(expected))
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, expected)


def load_users(path: Path) -> dict[str, tuple[Role, str]]:
    """Read a users file into {name: (role, hash)}; raise UsersFileError naming the bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsersFileError(f"CHURNLIGHT_USERS_FILE: cannot read {path}: {exc.strerror}") from None
    users: dict[str, tuple[Role, str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3 or parts[1] not in ROLES or not parts[2].startswith("scrypt$"):
            raise UsersFileError(f"CHURNLIGHT_USERS_FILE: {path} line {number}: expected `name manager|supervisor "
                                 f"scrypt$...` (a hash from `churnlight console --add-user`)")
        role: Role = "supervisor" if parts[1] == "supervisor" else "manager"
        users[parts[0]] = (role, parts[2])
    return users


def write_user(path: Path, name: str, role: Role, password: str) -> None:
    """Add user `name` to the users file at `path` (created if absent), replacing a line of the same name."""
    if not name or any(ch.isspace() or ch == "#" for ch in name):
        raise UsersFileError("a user name has no spaces and no '#'")
    kept = []
    if path.exists():
        kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.split("#", 1)[0].split()[:1] != [name]]
    kept.append(f"{name} {role} {hash_password(password)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")
    path.chmod(0o600)


class Authenticator:
    """Check a bearer token, a user's password, or a console session against the settings."""

    def __init__(self, token: SecretStr | None, users: dict[str, tuple[Role, str]],
                 session_ttl_s: float = 12 * 3600) -> None:
        self._token = token.get_secret_value().encode() if token is not None else None
        self._users = users
        self._session_key = os.urandom(32)
        self.session_ttl_s = session_ttl_s
        # Passwords that verified once, as keyed digests: Basic auth sends one with every request.
        self._verified: dict[bytes, User] = {}

    @classmethod
    def from_settings(cls, token: SecretStr | None, users_file: Path | None) -> Authenticator:
        return cls(token, load_users(users_file) if users_file is not None else {})

    @property
    def configured(self) -> bool:
        """Whether anyone at all can sign in (else every protected request is refused)."""
        return self._token is not None or bool(self._users)

    def __repr__(self) -> str:
        return f"Authenticator(token={'set' if self._token else 'unset'}, users={len(self._users)})"

    def token(self, presented: str) -> User | None:
        """Return the token's user when `presented` is the API token."""
        if self._token is None or not hmac.compare_digest(presented.encode(), self._token):
            return None
        return User(TOKEN_USER, "supervisor")

    def password(self, name: str, password: str) -> User | None:
        """Return the user when `password` is theirs."""
        entry = self._users.get(name)
        if entry is None:
            return None
        digest = hmac.new(self._session_key, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        known = self._verified.get(digest)
        if known is not None:
            return known
        role, encoded = entry
        if not verify_password(password, encoded):
            return None
        user = self._verified[digest] = User(name, role)
        return user

    def header(self, authorization: str | None) -> User | None:
        """Return the user of an `Authorization: Bearer ...` or `Basic ...` header."""
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return self.token(value.strip())
        if scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (ValueError, binascii.Error):
                return None
            return self.password(name, password)
        return None

    # -- console sessions ---------------------------------------------------------------------------

    def session(self, user: User) -> str:
        """Return a signed session cookie value for `user` (valid in this process only)."""
        body = f"{user.name}|{user.role}|{int(time.time() + self.session_ttl_s)}"
        mac = hmac.new(self._session_key, body.encode(), hashlib.sha256).hexdigest()
        return _b64(body.encode()) + "." + mac

    def from_session(self, cookie: str | None) -> User | None:
        """Return the user of a session cookie made by `session`, unless forged or expired."""
        if not cookie or "." not in cookie:
            return None
        encoded, _, mac = cookie.rpartition(".")
        try:
            body = base64.b64decode(encoded, validate=True).decode()
        except (ValueError, binascii.Error):
            return None
        want = hmac.new(self._session_key, body.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, want):
            return None
        name, role, expires = body.rsplit("|", 2)
        if float(expires) < time.time() or role not in ROLES:
            return None
        return User(name, "supervisor" if role == "supervisor" else "manager")
