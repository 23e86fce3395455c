"""Credentials of an http(s) repository URL, handed to git safely (pure).

git gets them from a credential helper's environment, never on a command line (``ps``
shows every argv to every local user), and only for the origin they were configured for:
a redirect to another host gets none.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from reconciler.errors import SourceError

# git runs this for HTTP credentials; the values are in its environment, not in any argv.
# It answers only for the configured origin (protocol and host[:port], as git sends them): a
# redirect to another host gets no credentials (git would otherwise hand them over).
_CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || return 0; p=; h=; while IFS= read -r l; do case "$l" in '
    "protocol=*) p=${l#protocol=};; host=*) h=${l#host=};; esac; done; "
    'if test "$p" = "$RECONCILER_GIT_PROTOCOL" && test "$h" = "$RECONCILER_GIT_HOST"; then '
    'printf "username=%s\\npassword=%s\\n" "$RECONCILER_GIT_USERNAME" '
    '"$RECONCILER_GIT_PASSWORD"; fi; }; f'
)
# userinfo with a password that may hold an unencoded '/' (urlsplit takes it for the path)
_USERINFO = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://(?P<user>[^/@:\s]*)(?::(?P<password>\S*))?"
    r"@(?P<host>[^@/\s]+)(?P<path>/\S*)?"
)


def split_credentials(url: str) -> tuple[str, list[str], dict[str, str]]:
    """``http(s)://user:secret@host/x`` -> (the URL without them, ``-c`` values, environment).

    The ``-c`` values install ``_CREDENTIAL_HELPER`` (and drop other helpers); the environment
    holds the percent-decoded user and secret and the origin they are for. A password may
    hold an unencoded ``/``. An ``ssh://`` URL with a password is refused: git would put it
    on ssh's command line. Other URLs are returned as they are.
    """
    match = _USERINFO.fullmatch(url)
    if match is None:
        return url, [], {}
    scheme = match["scheme"].lower()
    if "ssh" in scheme and match["password"] is not None:
        raise SourceError(
            f"cannot fetch repository '{url}': a password in an ssh URL would be on the "
            "command line of git and ssh",
            hint="use a key (ssh-agent or IdentityFile) or an https URL with a token",
        )
    if scheme not in ("http", "https"):
        return url, [], {}
    host = match["host"]
    options = ["credential.helper=", f"credential.helper={_CREDENTIAL_HELPER}"]
    secrets = {
        "RECONCILER_GIT_USERNAME": unquote(match["user"]),
        "RECONCILER_GIT_PASSWORD": unquote(match["password"] or ""),
        "RECONCILER_GIT_PROTOCOL": scheme,
        "RECONCILER_GIT_HOST": host,
    }
    return f"{scheme}://{host}{match['path'] or ''}", options, secrets
