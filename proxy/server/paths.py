"""Request paths the proxy refuses before routing: anything not in canonical form.

The upstream URL is ``base_url`` + the client's path. A path holding dot-segments
(``/v1/../../admin``, also percent-encoded, ``%2e%2e``, in any case, or encoded
twice), an encoded slash, a backslash or an empty segment (``/v1//chat/completions``)
could leave ``base_url``'s path at the upstream, or be served as a route while
escaping the routing that decides compression and audit. Normalising would mean
guessing what the upstream's own normalisation makes of it, so such paths are
rejected with 400 in OpenAI's error shape and never forwarded. The check is
generic (every route, every API shape) and runs before anything else looks at
the path; clean paths, all real API paths, cost a few substring tests.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from proxy.errors import ProxyError

__all__ = ["bad_path", "path_problem"]

_MAX_DECODES = 4  # decoding more often than this to reach a fixed point is itself suspicious


def _decoded(segment: bytes) -> bytes | None:
    """``segment`` percent-decoded until nothing changes (None: it never settles)."""
    for _ in range(_MAX_DECODES):
        if b"%" not in segment:
            return segment
        decoded = unquote_to_bytes(segment)
        if decoded == segment:
            return segment
        segment = decoded
    return None


def _segment_problem(segment: bytes) -> str | None:
    if not segment:
        return "an empty segment (// or a trailing /)"
    decoded = _decoded(segment)
    if decoded is None:
        return "repeated percent-encoding"
    if b"/" in decoded:
        return "an encoded slash"
    if b"\\" in decoded:
        return "a backslash"
    if b"\x00" in decoded:
        return "a NUL byte"
    if decoded.split(b";", 1)[0] in (b".", b".."):
        return "a dot-segment (. or ..)"
    return None


def path_problem(raw_path: bytes) -> str | None:
    """Why ``raw_path`` (as received, before percent-decoding) is refused, or None if it is canonical."""
    if raw_path == b"/":
        return None
    if not raw_path.startswith(b"/"):
        return "not an absolute path"
    if (
        b"%" not in raw_path
        and b"\\" not in raw_path
        and b"/." not in raw_path
        and b"//" not in raw_path
        and b";" not in raw_path
        and not raw_path.endswith(b"/")
    ):
        return None  # the hot path: nothing that could hide a segment
    for segment in raw_path[1:].split(b"/"):
        problem = _segment_problem(segment)
        if problem is not None:
            return problem
    return None


def bad_path(problem: str) -> ProxyError:
    return ProxyError(
        400,
        f"Invalid request path: it contains {problem}. Send the path in canonical form.",
        type="invalid_request_error",
        code="invalid_path",
        kind="bad_path",
    )
