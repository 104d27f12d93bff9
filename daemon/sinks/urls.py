"""A sink's URL as it may be shown: in logs, errors, dead letters and /v1/status."""

from __future__ import annotations

from yarl import URL


def redacted_url(url: str | URL) -> str:
    """`url` without userinfo, query or fragment (where credentials hide)."""
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        return str(parsed.with_user(None).with_query(None).with_fragment(None))
    except (TypeError, ValueError):
        return "(unparsable URL)"
