"""Notifications: tell people when an execution ends or a step fails.

A workflow's `notifications` block (and the `--notify-*` options of `execute`) name where
events go; config.toml holds what those transports need:

    [slack]
    webhook = "https://hooks.slack.com/services/..."   # for `notifications.slack: "#chan"`

    [smtp]
    host = "smtp.example.com"     # required for email
    port = 587                    # default 25, or 465 with ssl = true
    sender = "wfctl@example.com"  # default wfctl@<hostname>
    username = "..."              # login when username and password are both set
    password = "..."
    starttls = true
    ssl = false

Use from the engine:

    targets = targets_from(workflow.get("notifications"), email=opts.notify_email)
    if wanted(targets, "failed"):
        results = send(targets, build_event("failed", document), config.data)

`send` never raises: every transport's outcome comes back as a result, so a notification
that cannot be delivered never fails a workflow. Importing this module is cheap: urllib,
smtplib and subprocess are imported when something is sent.
"""

from __future__ import annotations

import json
from typing import Any

EVENTS = ("completed", "failed", "cancelled", "timed_out", "escalated", "step_failed")
DEFAULT_ON = ("failed", "escalated", "completed", "timed_out", "cancelled")
TRANSPORTS = ("webhook", "slack", "email", "command")
SLACK_HOSTS = ("hooks.slack.com", "hooks.slack-gov.com")

__all__ = [
    "DEFAULT_ON",
    "EVENTS",
    "TRANSPORTS",
    "build_event",
    "email_message",
    "is_slack_webhook",
    "notify",
    "send",
    "slack_payload",
    "summary",
    "targets_from",
    "undelivered",
    "wanted",
]


# -- targets ---------------------------------------------------------------------------------
def targets_from(
    workflow_notifications: dict | None,
    *,
    email: str | list[str] | None = None,
    slack: str | None = None,
    webhook: str | None = None,
) -> dict:
    """The workflow's `notifications` block with the command line's overrides on top.

    Returns `{"webhook": str|None, "slack": str|None, "email": list[str]|None,
    "command": str|None, "on": list[str]}`. An override that is given (not None) wins over
    the file; an empty string turns that transport off. `email` may be a comma-separated
    string or a list, in the file and on the command line.
    """
    block = workflow_notifications if isinstance(workflow_notifications, dict) else {}
    targets: dict[str, Any] = {
        "webhook": _text(block.get("webhook")),
        "slack": _text(block.get("slack")),
        "email": _addresses(block.get("email")),
        "command": _text(block.get("command")),
    }
    if webhook is not None:
        targets["webhook"] = _text(webhook)
    if slack is not None:
        targets["slack"] = _text(slack)
    if email is not None:
        targets["email"] = _addresses(email)
    on = block.get("on")
    if on is None:
        targets["on"] = list(DEFAULT_ON)
    else:
        targets["on"] = [str(name) for name in ([on] if isinstance(on, str) else on)]
    return targets


def wanted(targets: dict, event_name: str, *, notify_on_error: bool = False) -> bool:
    """Whether `event_name` should be sent to these targets.

    False when no transport is configured. `step_failed` is sent only when the step's
    errorHandling says `notifyOnError: true` (pass `notify_on_error=True`) or `on` lists it;
    every other event is sent when `on` lists it (default: all but step_failed).
    """
    if not targets or not any(targets.get(name) for name in TRANSPORTS):
        return False
    on = targets.get("on")
    on = list(DEFAULT_ON) if on is None else on
    if event_name == "step_failed":
        return bool(notify_on_error) or "step_failed" in on
    return event_name in on


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _addresses(value: Any) -> list[str] | None:
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    addresses = []
    for part in parts:
        # a list item may itself be "a@x, b@x" (e.g. --notify-email given twice)
        for address in part.split(","):
            address = address.strip()
            if address and address not in addresses:
                addresses.append(address)
    return addresses or None


# -- events ----------------------------------------------------------------------------------
def build_event(name: str, document: dict, *, step: Any = None, error: Any = None) -> dict:
    """A JSON-able event from an execution document (any field may be missing).

    `step` is a step key (or a step record with an `id`); when omitted it comes from the
    error's `step`. `error` defaults to the document's `error` for `failed` events; a string
    becomes `{"message": ...}`.
    """
    document = document if isinstance(document, dict) else {}
    if error is None and name == "failed":
        error = document.get("error")
    if isinstance(error, str):
        error = {"message": error}
    elif error is not None and not isinstance(error, dict):
        error = {"message": str(error)}
    if isinstance(step, dict):
        step = step.get("key") or step.get("id")
    if step is None and error:
        step = error.get("step")
    event = {
        "event": name,
        "executionId": document.get("executionId"),
        "workflowId": document.get("workflowId"),
        "workflowName": document.get("workflowName"),
        "status": document.get("status"),
        "startedAt": document.get("startedAt"),
        "completedAt": document.get("completedAt"),
        "step": None if step is None else str(step),
        "error": error,
        "progress": document.get("progress"),
        "at": _now_iso(),
    }
    if document.get("cancelReason") is not None:
        event["reason"] = document.get("cancelReason")
    return event


def summary(event: dict) -> str:
    """One line for people: `wfctl: NAME failed at STEP: MESSAGE (exec_...)`."""
    name = event.get("workflowName") or event.get("workflowId") or "workflow"
    kind = event.get("event") or "event"
    step = event.get("step")
    error = event.get("error") or {}
    message = _one_line(error.get("message")) if isinstance(error, dict) else _one_line(error)
    if kind == "step_failed":
        text = f"wfctl: {name} step {step} failed" if step else f"wfctl: {name} step failed"
    else:
        verb = {"timed_out": "timed out"}.get(kind, kind)
        text = f"wfctl: {name} {verb}"
        if step and kind in ("failed", "escalated"):
            text += f" at {step}"
    if message:
        text += f": {message}"
    elif kind == "cancelled" and event.get("reason"):
        text += f": {_one_line(event['reason'])}"
    if event.get("executionId"):
        text += f" ({event['executionId']})"
    return text


def _one_line(value: Any, limit: int = 300) -> str:
    if value is None:
        return ""
    text = " ".join(str(value).split())
    text = text.rstrip(".") if text.endswith(".") and not text.endswith("..") else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _now_iso() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- reporting upward ------------------------------------------------------------------------
def undelivered(document: dict) -> list[str]:
    """What did not reach anyone, one line per failing target and one for the escalation:
    for stderr at the end of a run and for `wfctl execution` (the record keeps every result).

    Results of one target that failed the same way for several events make one line.
    """
    lines: list[str] = []
    grouped: dict[tuple, list[str]] = {}
    for result in document.get("notifications") or []:
        if not isinstance(result, dict) or result.get("ok"):
            continue
        key = (result.get("transport"), result.get("target"), result.get("error"))
        events = grouped.setdefault(key, [])
        if result.get("event") not in events:
            events.append(result.get("event"))
    for (transport, target, error), events in grouped.items():
        where = f"{transport} {target}".strip() if target else str(transport)
        what = ", ".join(str(e) for e in events if e)
        lines.append(f"notification ({what}) to {where} was not delivered: {_one_line(error) or 'no detail'}")
    escalation = document.get("escalation")
    if document.get("escalated") and isinstance(escalation, dict):
        step = escalation.get("step")
        if not escalation.get("agent"):
            lines.append(f"step {step} was escalated, but its errorHandling has no escalateTo: nobody received "
                         "the escalation")
        elif escalation.get("ok") is False:
            error = escalation.get("error")
            message = error.get("message") if isinstance(error, dict) else error
            lines.append(f"the escalation of step {step} to agent '{escalation['agent']}' failed: "
                         f"{_one_line(message) or 'no detail'}")
    return lines


# -- formats ---------------------------------------------------------------------------------
def is_slack_webhook(url: str) -> bool:
    """True for a Slack incoming webhook URL (which wants Slack's message format)."""
    from urllib.parse import urlsplit

    try:
        host = (urlsplit(str(url)).hostname or "").lower()
    except ValueError:
        return False
    return host in SLACK_HOSTS


def slack_payload(event: dict, channel: str | None = None) -> dict:
    """A Slack message for the event: the summary, then execution id and status."""
    text = _slack_escape(summary(event))
    context = [f"*Execution* `{_slack_escape(str(event.get('executionId') or '-'))}`",
               f"*Status* {_slack_escape(str(event.get('status') or '-'))}",
               f"*Event* {_slack_escape(str(event.get('event') or '-'))}"]
    progress = event.get("progress")
    if isinstance(progress, dict) and progress.get("total") is not None:
        context.append(f"*Progress* {progress.get('completed', 0)}/{progress.get('total')}")
    payload: dict[str, Any] = {}
    if channel:
        payload["channel"] = channel
    payload["text"] = text
    payload["blocks"] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": part} for part in context]},
    ]
    return payload


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def email_message(event: dict, sender: str, recipients: list[str]):
    """The email for the event: subject = summary, body = readable text + the event JSON."""
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    lines = [summary(event), ""]
    for label, key in (("Workflow", "workflowName"), ("Workflow id", "workflowId"),
                       ("Execution", "executionId"), ("Event", "event"), ("Status", "status"),
                       ("Step", "step"), ("Started", "startedAt"), ("Completed", "completedAt")):
        if event.get(key) is not None:
            lines.append(f"{label + ':':13} {event[key]}")
    error = event.get("error")
    if isinstance(error, dict) and error.get("message"):
        lines.append(f"{'Error:':13} {error['message']}")
    progress = event.get("progress")
    if isinstance(progress, dict) and progress.get("total") is not None:
        lines.append(f"{'Progress:':13} {progress.get('completed', 0)}/{progress.get('total')}")
    if event.get("executionId"):
        lines += ["", f"Details: wfctl execution {event['executionId']}"]
    lines += ["", "Event JSON:", json.dumps(event, indent=2, ensure_ascii=False, default=str), ""]
    body = "\n".join(lines)

    message = EmailMessage()
    message["Subject"] = summary(event)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message["X-Wfctl-Event"] = str(event.get("event") or "")
    if body.isascii():
        message.set_content(body)
    else:
        message.set_content(body, cte="quoted-printable")
    return message


# -- delivery --------------------------------------------------------------------------------
def send(targets: dict, event: dict, config: dict | None, *, timeout: float = 10.0,
         cwd: Any = None) -> list[dict]:
    """Deliver the event to every configured transport, one after the other.

    Returns one `{"transport", "target", "ok", "error"}` per transport, in the order
    webhook, slack, email, command. Never raises. `cwd` is where `command` runs (default:
    the current directory).
    """
    results: list[dict] = []
    try:
        targets = targets if isinstance(targets, dict) else {}
        config = config if isinstance(config, dict) else {}
        plan = [
            ("webhook", targets.get("webhook"), lambda t: _send_webhook(t, event, timeout)),
            ("slack", targets.get("slack"), lambda t: _send_slack(t, event, config, timeout)),
            ("email", targets.get("email"), lambda t: _send_email(t, event, config, timeout)),
            ("command", targets.get("command"), lambda t: _send_command(t, event, timeout, cwd)),
        ]
        for transport, target, deliver in plan:
            if not target:
                continue
            shown = ", ".join(target) if isinstance(target, (list, tuple)) else str(target)
            if transport == "webhook":
                shown = _redact(shown)  # a Slack webhook's path is its secret
            try:
                error = deliver(target)
            except Exception as err:  # a notification must never fail the workflow
                error = f"{type(err).__name__}: {_one_line(err) or 'no detail'}."
            results.append({"transport": transport, "target": shown, "ok": error is None, "error": error})
    except Exception as err:
        results.append({"transport": "notify", "target": "", "ok": False,
                        "error": f"cannot send notifications: {type(err).__name__}: {_one_line(err)}."})
    return results


def notify(name: str, document: dict, targets: dict, config: dict | None, *, step: Any = None,
           error: Any = None, notify_on_error: bool = False, timeout: float = 10.0,
           cwd: Any = None) -> list[dict]:
    """`wanted` + `build_event` + `send` in one call; [] when the event is not wanted."""
    try:
        if not wanted(targets, name, notify_on_error=notify_on_error):
            return []
        event = build_event(name, document, step=step, error=error)
    except Exception as err:
        return [{"transport": "notify", "target": "", "ok": False,
                 "error": f"cannot build the {name} event: {type(err).__name__}: {_one_line(err)}."}]
    return send(targets, event, config, timeout=timeout, cwd=cwd)


def _post_json(url: str, payload: dict, timeout: float) -> str | None:
    """POST JSON; None on a 2xx answer, else one sentence saying what went wrong."""
    import http.client
    import time
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    from wfctl.httpwatch import Watchdog

    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme not in ("http", "https"):
        return f"'{url}' is not an http(s) URL."
    data = json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")
    request = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "wfctl-notify"},
    )
    # One deadline for the whole exchange: a server that trickles its answer cannot hold
    # the end of a run (urllib's timeout alone is per socket read).
    with Watchdog(time.monotonic() + timeout) as watchdog:
        try:
            with watchdog.opener().open(request, timeout=timeout) as response:
                status = response.status
                body = _read_some(response)
        except urllib.error.HTTPError as err:
            detail = _one_line(_read_some(err).decode("utf-8", "replace"), 200)
            return f"{_redact(url)} answered HTTP {err.code}" + (f": {detail}." if detail else ".")
        except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as err:
            if watchdog.fired or isinstance(err, TimeoutError) or isinstance(getattr(err, "reason", None), TimeoutError):
                return f"{_redact(url)} did not answer within {timeout:g}s."
            if isinstance(err, urllib.error.URLError):
                return f"cannot reach {_redact(url)}: {_reason(err.reason)}."
            if isinstance(err, http.client.HTTPException):
                return f"{_redact(url)} gave a broken HTTP answer: {_one_line(err) or type(err).__name__}."
            return f"cannot reach {_redact(url)}: {_reason(err)}."
    if watchdog.fired:  # the answer was cut off at the deadline: its status may be a fragment
        return f"{_redact(url)} did not answer within {timeout:g}s."
    if not 200 <= status < 300:
        detail = _one_line(body.decode("utf-8", "replace"), 200)
        return f"{_redact(url)} answered HTTP {status}" + (f": {detail}." if detail else ".")
    return None


def _read_some(response: Any) -> bytes:
    """The first 2 KiB of an answer's body (for a reason to show); b"" when it breaks off
    (the watchdog shut the socket down at the deadline, or the server went away)."""
    try:
        return response.read(2048)
    except Exception:  # OSError, http.client's IncompleteRead...: the reason is only a detail
        return b""


def _redact(url: str) -> str:
    """A URL fit for messages: Slack webhook paths are secrets, so only the host is shown."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "the webhook"
    if is_slack_webhook(url) or parts.username or parts.password:
        return f"{parts.scheme}://{parts.hostname}/…"
    return url


def _reason(reason: Any) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower() if reason.strerror[:1].isupper() else reason.strerror
    text = _one_line(reason)
    if isinstance(reason, TimeoutError) or text == "timed out":
        return "timed out"
    return text or type(reason).__name__


def _send_webhook(url: str, event: dict, timeout: float) -> str | None:
    payload = slack_payload(event) if is_slack_webhook(url) else event
    return _post_json(url, payload, timeout)


def _send_slack(channel: str, event: dict, config: dict, timeout: float) -> str | None:
    section = config.get("slack")
    webhook = section.get("webhook") if isinstance(section, dict) else None
    if not webhook:
        return "no Slack webhook is configured; set it with: wfctl config set slack.webhook URL"
    return _post_json(str(webhook), slack_payload(event, channel), timeout)


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _send_email(recipients: Any, event: dict, config: dict, timeout: float) -> str | None:
    import smtplib
    import socket
    import ssl as ssl_module

    if isinstance(recipients, str):
        recipients = _addresses(recipients) or []
    smtp = config.get("smtp")
    smtp = smtp if isinstance(smtp, dict) else {}
    host = smtp.get("host")
    if not host:
        return "no SMTP server is configured; set it with: wfctl config set smtp.host HOST"
    use_ssl = _flag(smtp.get("ssl"))
    try:
        port = int(smtp.get("port") or (465 if use_ssl else 25))
    except (TypeError, ValueError):
        return f"smtp.port must be a number, not {smtp.get('port')!r}; fix it with: wfctl config set smtp.port 587"
    sender = str(smtp.get("sender") or f"wfctl@{socket.gethostname() or 'localhost'}")
    message = email_message(event, sender, list(recipients))
    where = f"{host}:{port}"
    try:
        if use_ssl:
            client = smtplib.SMTP_SSL(str(host), port, timeout=timeout,
                                      context=ssl_module.create_default_context())
        else:
            client = smtplib.SMTP(str(host), port, timeout=timeout)
        with client:
            if _flag(smtp.get("starttls")) and not use_ssl:
                client.starttls(context=ssl_module.create_default_context())
            username, password = smtp.get("username"), smtp.get("password")
            if username and password:
                client.login(str(username), str(password))
            refused = client.send_message(message, from_addr=sender, to_addrs=list(recipients))
    except smtplib.SMTPAuthenticationError as err:
        return f"the SMTP server {where} refused the login of {smtp.get('username')}: {_smtp_text(err)}."
    except smtplib.SMTPRecipientsRefused as err:
        return f"the SMTP server {where} refused every recipient ({', '.join(err.recipients)})."
    except smtplib.SMTPSenderRefused as err:
        return f"the SMTP server {where} refused the sender {err.sender}: {_smtp_text(err)}."
    except smtplib.SMTPResponseException as err:
        return f"the SMTP server {where} answered {err.smtp_code}: {_smtp_text(err)}."
    except smtplib.SMTPNotSupportedError as err:
        return f"the SMTP server {where} does not support that: {_one_line(err)}."
    except smtplib.SMTPException as err:
        return f"cannot send email through {where}: {_one_line(err) or type(err).__name__}."
    except ssl_module.SSLError as err:
        return f"TLS with {where} failed: {_one_line(err.reason or err)}."
    except (TimeoutError, socket.timeout):
        return f"the SMTP server {where} did not answer within {timeout:g}s."
    except OSError as err:
        return f"cannot reach the SMTP server {where}: {_reason(err)}."
    if refused:
        return f"the SMTP server {where} refused {', '.join(sorted(refused))} (the others were sent)."
    return None


def _smtp_text(err: Any) -> str:
    raw = getattr(err, "smtp_error", b"")
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return _one_line(text) or "no detail"


def _send_command(command: str, event: dict, timeout: float, cwd: Any) -> str | None:
    """Run the notification command with the event on stdin. Its wait ends at its exit
    or after `timeout` (then its process group is killed), whatever it does with its
    pipes; only the last few KiB of its stderr are kept, for the reason of a failure."""
    import os

    from wfctl.processes import run_with_deadline

    env = dict(os.environ)
    env["WFCTL_EVENT"] = str(event.get("event") or "")
    env["WFCTL_EXECUTION_ID"] = str(event.get("executionId") or "")
    env["WFCTL_WORKFLOW_ID"] = str(event.get("workflowId") or "")
    data = json.dumps(event, ensure_ascii=False, default=str).encode("utf-8")
    try:
        finished = run_with_deadline(
            ["/bin/sh", "-c", command], data, timeout=timeout, env=env, cwd=None if cwd is None else str(cwd)
        )
    except OSError as err:
        return f"cannot start the notification command: {_reason(err)}."
    if finished.ended_by == "timeout":
        return f"the notification command did not finish within {timeout:g}s and was killed."
    code = finished.code
    if code == 0:
        return None
    if code is None:
        return "the notification command did not end after SIGKILL."
    last = _one_line(finished.stderr.last_line(), 200)
    what = f"exited with code {code}" if code > 0 else f"was killed by signal {-code}"
    return f"the notification command {what}" + (f": {last}." if last else ".")
