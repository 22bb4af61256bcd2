"""Failure alerts as Slack-compatible webhook messages, without Dagster.

A webhook that is down must never take the alerting sensor down with it: `post_alert` retries transient
failures with backoff, then reports the outcome instead of raising.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

# user:password@ in URLs, and key=value pairs whose key names a secret.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):[^@/\s]+@", re.IGNORECASE)
_SECRET_PAIRS = re.compile(
    r"(?P<key>(?:password|passwd|secret|token|access_key|secret_key|api_key)[\w-]*\s*[=:]\s*)"
    r"(?P<quote>['\"]?)[^\s'\",;]+",
    re.IGNORECASE,
)


def scrub_secrets(text: str) -> str:
    text = _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)
    return _SECRET_PAIRS.sub(r"\g<key>\g<quote>***", text)


@dataclass(frozen=True)
class FailedRun:
    job_name: str
    run_id: str
    failing_step: str | None
    error: str
    run_url: str

    @property
    def error_first_line(self) -> str:
        lines = [line.strip() for line in self.error.strip().splitlines() if line.strip()]
        return scrub_secrets(lines[0]) if lines else "no error message"


def slack_message(run: FailedRun) -> dict:
    step = run.failing_step or "(run-level failure)"
    summary = f":rotating_light: {run.job_name} failed at {step}: {run.error_first_line}"
    return {
        "text": summary,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{run.job_name}* failed"}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*Step*\n`{step}`"},
                    {"type": "mrkdwn", "text": f"*Run*\n<{run.run_url}|{run.run_id[:8]}>"},
                ],
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": f"```{run.error_first_line}```"}},
        ],
    }


@dataclass(frozen=True)
class Delivery:
    delivered: bool
    attempts: int
    detail: str


def post_alert(
    url: str, payload: dict, *, attempts: int = 4, backoff_s: float = 0.5, timeout_s: float = 5.0
) -> Delivery:
    """POST the payload; retry connection errors, 429 and 5xx with exponential backoff."""
    import httpx  # lazy: keeps the code location's load light

    detail = ""
    for attempt in range(1, attempts + 1):
        try:
            response = httpx.post(url, json=payload, timeout=timeout_s)
        except httpx.HTTPError as error:
            # The webhook URL is itself a credential (Slack puts its token in the path).
            detail = f"{type(error).__name__}: {scrub_secrets(str(error).replace(url, '<webhook URL>'))}"
        else:
            if response.is_success:
                return Delivery(True, attempt, f"HTTP {response.status_code}")
            detail = f"HTTP {response.status_code}: {response.text[:200]}"
            if response.status_code != 429 and response.status_code < 500:
                # The webhook refused the message itself: retrying won't help.
                return Delivery(False, attempt, detail)
        if attempt < attempts:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    return Delivery(False, attempts, detail)
