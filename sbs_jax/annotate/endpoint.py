"""The teacher's endpoint: its URL checked and shown without secrets, and which API key (if
any) it is sent.

- Every message, log line and file that names the teacher's URL shows it through
  `sbs_jax.redact` (credentials and key-carrying query values as `***`).
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
from sbs_jax.redact import redact_text, redact_url

log = logging.getLogger(__name__)

OPENAI_HOST = "api.openai.com"
OPENAI_KEY_ENV = "OPENAI_API_KEY"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


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
