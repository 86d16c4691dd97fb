"""The teacher's endpoint: its URL checked and shown without secrets, and which API key (if
any) it is sent.

- `redact_url` is the one place a `--base_url` is made printable: credentials in it
  (`user:secret@`) become `user:***@`, and the values of query parameters that carry
  keys (`?key=`, `?api_key=`, `token`, ...) become `***`. Every message, log line and file
  that names the teacher's URL goes through it; `redact_text` also replaces the URL's
  secrets (and the API key) wherever they occur in a longer text.
- `choose_api_key` decides whether a key goes to the endpoint: OPENAI_API_KEY only to
  https://api.openai.com unless `--api_key_env` names a variable; a key over plain http
  only to this machine (localhost, 127.0.0.1, ::1) unless `--allow_http_key`.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse

from sbs_jax.errors import SbsError

log = logging.getLogger(__name__)

OPENAI_HOST = "api.openai.com"
OPENAI_KEY_ENV = "OPENAI_API_KEY"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
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


def check_base_url(base_url: str) -> urllib.parse.SplitResult:
  """The parsed `--base_url`, or an SbsError (with the URL redacted) saying what to fix."""
  shown = redact_url(base_url)
  try:
    parsed = urllib.parse.urlsplit(base_url)
    parsed.port  # pylint: disable=pointless-statement  # raises on a bad port
  except ValueError as e:
    raise SbsError(f"--base_url {shown}: not a valid URL ({redact_text(e, base_url)}): "
                   "give one like http://127.0.0.1:8000/v1") from None
  if parsed.scheme not in ("http", "https") or not parsed.hostname:
    raise SbsError(f"--base_url {shown}: expected an http:// or https:// URL with a host, "
                   "like http://127.0.0.1:8000/v1")
  if any(ord(c) <= 32 or ord(c) == 127 for c in base_url):
    raise SbsError(f"--base_url {shown}: holds whitespace or control characters: "
                   "percent-encode them, or remove them")
  return parsed


def _clean_key(value: str, env: str) -> str | None:
  """The key from `$env` with surrounding whitespace removed; None when empty; an SbsError
  (never showing the key) when it holds other whitespace or control characters."""
  key = value.strip()
  if not key:
    return None
  if any(ord(c) <= 32 or ord(c) >= 127 for c in key):
    raise SbsError(f"the API key in ${env} holds whitespace, control or non-ASCII "
                   "characters inside it: set the variable to the key alone (e.g. "
                   f"export {env}=\"$(tr -d '[:space:]' < KEYFILE)\")")
  return key


def choose_api_key(base_url: str, api_key_env: str | None,
                   allow_http_key: bool = False) -> str | None:
  """The API key to send to `base_url`, or None for none.

  Without `api_key_env`, only https://api.openai.com gets $OPENAI_API_KEY; any other
  endpoint gets a key only from a variable named by `api_key_env` (which must then be
  set). A key goes over plain http only to this machine or with `allow_http_key`. A key
  together with credentials in the URL is refused (the server would get two).
  """
  parsed = check_base_url(base_url)
  shown = redact_url(base_url)
  host = (parsed.hostname or "").lower()
  if api_key_env is None:
    value = os.environ.get(OPENAI_KEY_ENV, "")
    if parsed.scheme == "https" and host == OPENAI_HOST:
      key = _clean_key(value, OPENAI_KEY_ENV)
      env = OPENAI_KEY_ENV
    else:
      if value.strip():
        log.info("$%s is set but not sent to %s (only to https://%s by default): pass "
                 "--api_key_env %s to send it there", OPENAI_KEY_ENV, shown, OPENAI_HOST,
                 OPENAI_KEY_ENV)
      key, env = None, None
  else:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", api_key_env):
      raise SbsError(f"--api_key_env {api_key_env!r}: give the NAME of an environment "
                     "variable that holds the key (e.g. --api_key_env MY_KEY), not the key")
    key = _clean_key(os.environ.get(api_key_env, ""), api_key_env)
    if key is None:
      raise SbsError(f"--api_key_env {api_key_env}: the variable is not set or empty: "
                     f"export {api_key_env}=..., or leave --api_key_env out for a server "
                     "without a key")
    env = api_key_env
  if key is None:
    return None
  if parsed.username is not None or parsed.password is not None:
    raise SbsError(f"--base_url {shown} holds credentials and ${env} holds an API key: "
                   "use one or the other (remove user:password@ from the URL, or leave "
                   "--api_key_env out)")
  if parsed.scheme == "http" and host not in LOOPBACK_HOSTS and not allow_http_key:
    raise SbsError(f"--base_url {shown} is plain http to another machine: the key in "
                   f"${env} would travel unencrypted; use https, or pass --allow_http_key "
                   "to send it anyway")
  return key
