"""Masking the credentials in URIs (``user:password@``, tokens, signed query values) before anything is printed,
stored or logged. A leaf: it imports nothing of ots, so every module (``ots.errors`` included) can use it."""

from __future__ import annotations

import re

__all__ = ["redact_uri"]

# scheme://user:password@host -> scheme://user:***@host ; scheme://token@host -> scheme://***@host
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s/@?#:]*)(?P<pw>:[^\s/@?#]*)?@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:[^=&#\s]*(?:password|passwd|pwd|secret|token|signature|credential|api[_-]?key|access[_-]?key)"
    r"[^=&#\s]*|sig|key))=(?P<val>[^&#\s]*)",
    re.I,
)


def redact_uri(text: str) -> str:
    """``text`` with the credentials of every URI in it masked: ``user:password@`` -> ``user:***@``, a bare
    ``token@`` -> ``***@``, and secret-looking query values (``?password=``, ``X-Amz-Signature=``, ``token=``)
    -> ``***``. For anything printed, stored or logged; connect with the original."""
    if not text:
        return text

    def userinfo(m: re.Match) -> str:
        if m.group("pw") is not None:
            return f"{m.group('scheme')}{m.group('user')}:***@"
        return f"{m.group('scheme')}***@"

    out = _USERINFO.sub(userinfo, str(text))
    return _SECRET_QUERY.sub(lambda m: f"{m.group('key')}=***", out)
