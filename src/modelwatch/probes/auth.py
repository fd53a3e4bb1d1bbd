"""How each provider type takes its key: one place, headers only.

A key never goes into a URL (URLs end up in logs, proxies and error texts),
so Gemini's ``?key=`` and Azure's ``?api-key=`` forms are never used.

==================  ==============================================================
provider type       headers
==================  ==============================================================
openai, compatible  ``Authorization: Bearer <key>``
azure-openai        ``api-key: <key>``
gemini              ``x-goog-api-key: <key>``
anthropic           ``Authorization: Bearer <key>`` (what the official SDK sends), or
                    ``x-api-key: <key>`` with ``auth_style: x-api-key``; always
                    ``anthropic-version`` (``api_version``, else the SDK's value)
==================  ==============================================================
"""

from __future__ import annotations

from modelwatch.config import ProbeJob

ANTHROPIC_VERSION = "2026-10-21"  # what the official SDK sends (PROTOCOLS.md section 5.1)


def auth_headers(job: ProbeJob) -> dict[str, str]:
    """The provider's credential headers for ``job`` (plus Anthropic's version header)."""
    provider, key = job.provider, job.api_key
    headers: dict[str, str] = {}
    if provider.type == "anthropic":
        headers["anthropic-version"] = provider.api_version or ANTHROPIC_VERSION
    if key is None:
        return headers
    if provider.type == "azure-openai":
        headers["api-key"] = key.reveal()
    elif provider.type == "gemini":
        headers["x-goog-api-key"] = key.reveal()
    elif provider.type == "anthropic" and provider.auth_style == "x-api-key":
        headers["x-api-key"] = key.reveal()
    else:
        headers["Authorization"] = f"Bearer {key.reveal()}"
    return headers
