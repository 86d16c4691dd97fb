"""Secrets out of anything printed: URLs with credentials or key-carrying query parameters,
and texts (error messages, server replies) that may quote them or an API key.

- `redact_url` is the one place a URL is made printable: credentials in it
  (`user:secret@`) become `user:***@`, and the values of query parameters that carry
  keys (`?key=`, `?api_key=`, `token`, ...) become `***`.
- `redact_text` replaces the URL's secrets (and an API key) wherever they occur in a longer
  text, and the URL itself by its redacted form.

Used by every module that prints a URL it was given: the teacher's endpoint
(`annotate/endpoint.py`, `annotate/teachers.py`) and the data download (`data/download.py`).
"""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"
# Query parameters whose values are secrets (compared in lower case, '-' as '_').
SECRET_PARAMS = frozenset({"key", "api_key", "apikey", "access_token", "token", "auth",
                           "secret", "password", "sig", "signature", "code",
                           "subscription_key", "x_api_key"})


def _netloc_parts(url: str) -> tuple[str, str, str, str, str] | None:
  """(scheme, userinfo, hostport, rest, fragment-less) split by hand, tolerant of URLs
  urllib cannot parse; None when `url` has no `scheme://`."""
  m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)(.*)$", url, re.S)
  if not m:
    return None
  scheme, netloc, rest = m.groups()
  userinfo, at, hostport = netloc.rpartition("@")
  return scheme, userinfo if at else "", hostport, rest, at


def _redact_query(rest: str) -> str:
  def mask(m):
    name = m.group(2)
    if name.lower().replace("-", "_") in SECRET_PARAMS:
      return f"{m.group(1)}{name}={MASK}"
    return m.group(0)
  return re.sub(r"([?&;])([^=&;#]+)=([^&;#]*)", mask, rest)


def redact_url(url: str) -> str:
  """`url` fit to print: `user:secret@` -> `user:***@` (a lone `token@` -> `***@`), and
  secret query values -> `***`. Anything that is not a URL is returned with its
  query-like secrets masked."""
  url = str(url)
  parts = _netloc_parts(url)
  if parts is None:
    return _redact_query(url)
  scheme, userinfo, hostport, rest, at = parts
  if at:
    user, colon, _ = userinfo.partition(":")
    userinfo = f"{user}:{MASK}" if colon and user else MASK
    return f"{scheme}{userinfo}@{hostport}{_redact_query(rest)}"
  return f"{scheme}{hostport}{_redact_query(rest)}"


def url_secrets(url: str) -> list[str]:
  """The secret parts of `url` (password or user token, secret query values), raw and
  percent-decoded, longest first."""
  url = str(url)
  found = set()
  parts = _netloc_parts(url)
  if parts is not None and parts[4]:
    user, colon, password = parts[1].partition(":")
    found.add(password if colon else user)
  for m in re.finditer(r"[?&;]([^=&;#]+)=([^&;#]*)", url):
    if m.group(1).lower().replace("-", "_") in SECRET_PARAMS:
      found.add(m.group(2))
  found |= {urllib.parse.unquote(s) for s in found}
  found |= {urllib.parse.unquote_plus(s) for s in found}
  return sorted((s for s in found if s), key=len, reverse=True)


def redact_text(text: str, url: str = "", api_key: str | None = None) -> str:
  """`text` with the API key and the URL's secrets replaced by `***`, and the URL itself
  (if present) in its redacted form."""
  text = str(text)
  if url:
    text = text.replace(str(url), redact_url(url))
  for secret in ([api_key] if api_key else []) + (url_secrets(url) if url else []):
    text = text.replace(secret, MASK)
  return text
