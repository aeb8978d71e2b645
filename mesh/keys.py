"""The mesh key: one shared secret from which everything else is derived.

Whoever holds the key is part of the mesh (as Serf's gossip key). From it:
- a CurveZMQ key pair shared by all agents and clients of the mesh: every ROUTER
  is a CURVE server with that secret key, every DEALER a CURVE client that knows
  the server's public key and presents the same key pair; the agent's ZAP handler
  admits only clients that present the mesh's public key. A peer without the key
  cannot finish the handshake, so nothing it sends is ever decoded, let alone
  unpickled; traffic is encrypted.
- an authenticator for mDNS announcements (HMAC of the announced fields), so a
  forged announcement is ignored;
- the REST bearer token (HMAC of a fixed label, so every holder of the key computes
  the same one; ``mesh.faces.rest_auth`` says how REST uses it).

Key file: one line ``mesh-key-v1:<base64url of 32 random bytes>``, mode 0600,
by default in ``$XDG_CONFIG_HOME/mesh/key`` (``~/.config/mesh/key``). Sources in
order: ``--key-file``, ``MESH_KEY_FILE``, ``MESH_KEY`` (the line itself), the
default file if it exists.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from mesh.errors import MeshError

PREFIX = "mesh-key-v1:"


class MeshKeyError(MeshError):
    """A key could not be read, parsed or written; the message says which and why."""


def default_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "mesh", "key")


@dataclass(frozen=True)
class MeshKey:
    secret: bytes  # 32 bytes

    # ------------------------------------------------------------------ text form

    @classmethod
    def generate(cls) -> MeshKey:
        return cls(secrets.token_bytes(32))

    def text(self) -> str:
        return PREFIX + base64.urlsafe_b64encode(self.secret).decode().rstrip("=")

    @classmethod
    def parse(cls, text: str) -> MeshKey:
        """Parse a key line. Raises MeshKeyError with a message that says what is wrong."""
        text = text.strip()
        if not text.startswith(PREFIX):
            raise MeshKeyError(f"not a mesh key (expected a line starting with {PREFIX!r})")
        body = text[len(PREFIX):]
        try:
            secret = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (ValueError, TypeError):
            raise MeshKeyError("mesh key is not valid base64") from None
        if len(secret) != 32:
            raise MeshKeyError(f"mesh key must hold 32 bytes, this one holds {len(secret)}")
        return cls(secret)

    # ------------------------------------------------------------------ derived

    def _derive(self, label: str) -> bytes:
        return hmac.new(self.secret, label.encode(), hashlib.sha256).digest()

    def curve_keypair(self) -> tuple[bytes, bytes]:
        """(public, secret), Z85-encoded, as ZeroMQ's CURVE options take them."""
        import zmq
        from zmq.utils import z85

        secret = z85.encode(self._derive("mesh curve secret v1"))
        return zmq.curve_public(secret), secret

    def announcement_auth(self, fields: str) -> str:
        """Authenticator of an mDNS announcement's fields (hex, 128 bits)."""
        return hmac.new(self._derive("mesh mdns v1"), fields.encode(), hashlib.sha256).hexdigest()[:32]

    def rest_token(self) -> str:
        return self._derive("mesh rest token v1").hex()[:40]

    def fingerprint(self) -> str:
        """A short, non-secret name of the key, safe to print and log."""
        return self._derive("mesh fingerprint v1").hex()[:12]


def announcement_fields(node_id: str, name: str, protocol: int, host: str, port: int, cpus: int) -> str:
    return f"{node_id}|{name}|{protocol}|{host}|{port}|{cpus}"


def verify(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())


def load(key_file: str | None = None, env: dict | None = None) -> MeshKey | None:
    """The mesh key from ``key_file``, MESH_KEY_FILE, MESH_KEY or the default file,
    or None when there is none. Raises MeshKeyError when a given source is unusable."""
    env = os.environ if env is None else env
    path = key_file or env.get("MESH_KEY_FILE")
    if path:
        return _read(path)
    if env.get("MESH_KEY"):
        return MeshKey.parse(env["MESH_KEY"])
    if os.path.exists(default_path()):
        return _read(default_path())
    return None


def _read(path: str) -> MeshKey:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise MeshKeyError(f"cannot read mesh key file {path}: {exc.strerror}") from None
    try:
        return MeshKey.parse(text)
    except MeshKeyError as exc:
        raise MeshKeyError(f"{path}: {exc}") from None


def write(path: str, key: MeshKey, force: bool = False) -> None:
    """Write ``key`` to ``path`` with mode 0600 (directories 0700). Refuses to
    overwrite an existing file unless ``force``. Raises MeshKeyError."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise MeshKeyError(f"{path} exists; pass --force to replace it (peers with the old key "
                        "will no longer be admitted)") from None
    except OSError as exc:
        raise MeshKeyError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(key.text() + "\n")
    os.chmod(path, 0o600)
