"""Notifications, delivered to real local HTTP and SMTP servers and real commands."""

from __future__ import annotations

import json
import os
import shlex
import smtplib
import socket
import subprocess
import sys
import time

import pytest
from servers import http_server, smtp_server

from wfctl import notify
from wfctl.notify import (
    build_event,
    is_slack_webhook,
    send,
    slack_payload,
    summary,
    targets_from,
    wanted,
)

DOCUMENT = {
    "executionId": "exec_0123abcd",
    "workflowId": "wf_42",
    "workflowName": "SaaS Product Launch Workflow",
    "status": "failed",
    "currentStep": None,
    "progress": {"completed": 2, "total": 5, "percentage": 40},
    "startedAt": "2024-05-01T10:00:00.000Z",
    "completedAt": "2024-05-01T10:03:00.000Z",
    "error": {"step": "testing", "kind": "failed", "message": "exited with code 1.", "exitCode": 1},
    "steps": [],
}


def free_port() -> int:
    """A port nothing listens on: bind, read the port, close."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def failed_event() -> dict:
    return build_event("failed", DOCUMENT)


# -- targets and wanted ------------------------------------------------------------------------
def test_targets_from_file_only():
    targets = targets_from({"webhook": "https://h.example/x", "slack": "#launches",
                            "email": "a@example.com, b@example.com", "command": "./notify.sh"})
    assert targets == {
        "webhook": "https://h.example/x",
        "slack": "#launches",
        "email": ["a@example.com", "b@example.com"],
        "command": "./notify.sh",
        "on": ["failed", "escalated", "completed", "timed_out", "cancelled"],
    }


def test_targets_from_command_line_wins_over_file():
    block = {"webhook": "https://file.example/x", "slack": "#file", "email": "file@example.com",
             "on": ["failed"]}
    targets = targets_from(block, email="cli@example.com", slack="#cli", webhook="https://cli.example/y")
    assert targets["webhook"] == "https://cli.example/y"
    assert targets["slack"] == "#cli"
    assert targets["email"] == ["cli@example.com"]
    assert targets["on"] == ["failed"]
    # not given: the file's value stays; an empty string turns the transport off
    assert targets_from(block, email=None)["email"] == ["file@example.com"]
    assert targets_from(block, webhook="")["webhook"] is None
    # a list of addresses (an option given twice), duplicates dropped
    assert targets_from(None, email=["a@x.org", "b@x.org, a@x.org"])["email"] == ["a@x.org", "b@x.org"]


def test_targets_from_nothing():
    targets = targets_from(None)
    assert targets["webhook"] is targets["slack"] is targets["email"] is targets["command"] is None
    assert not wanted(targets, "failed")


def test_wanted_defaults_and_step_failed():
    targets = targets_from({"webhook": "https://h.example/x"})
    for name in ("failed", "escalated", "completed", "timed_out", "cancelled"):
        assert wanted(targets, name), name
    assert not wanted(targets, "step_failed")
    assert wanted(targets, "step_failed", notify_on_error=True)


def test_wanted_follows_on():
    targets = targets_from({"email": "a@example.com", "on": ["failed"]})
    assert wanted(targets, "failed")
    assert not wanted(targets, "completed")
    assert not wanted(targets, "escalated")
    assert wanted(targets, "step_failed", notify_on_error=True)


# -- events ------------------------------------------------------------------------------------
def test_build_event_from_failed_document():
    event = failed_event()
    assert event["event"] == "failed"
    assert event["executionId"] == "exec_0123abcd"
    assert event["workflowId"] == "wf_42"
    assert event["workflowName"] == "SaaS Product Launch Workflow"
    assert event["status"] == "failed"
    assert event["startedAt"] == DOCUMENT["startedAt"]
    assert event["completedAt"] == DOCUMENT["completedAt"]
    assert event["step"] == "testing"
    assert event["error"]["message"] == "exited with code 1."
    assert event["progress"] == {"completed": 2, "total": 5, "percentage": 40}
    assert event["at"].endswith("Z") and event["at"][:2] == "20"
    json.dumps(event)


def test_build_event_tolerates_missing_fields():
    event = build_event("completed", {})
    assert event["executionId"] is None and event["step"] is None and event["error"] is None
    assert summary(event) == "wfctl: workflow completed"
    step_event = build_event("step_failed", {"executionId": "exec_1"}, step="build", error="boom")
    assert step_event["step"] == "build" and step_event["error"] == {"message": "boom"}


def test_summaries():
    assert summary(failed_event()) == (
        "wfctl: SaaS Product Launch Workflow failed at testing: exited with code 1 (exec_0123abcd)"
    )
    done = dict(DOCUMENT, status="completed", error=None)
    assert summary(build_event("completed", done)) == "wfctl: SaaS Product Launch Workflow completed (exec_0123abcd)"
    assert summary(build_event("timed_out", done)).startswith("wfctl: SaaS Product Launch Workflow timed out (")
    cancelled = dict(DOCUMENT, status="cancelled", error=None, cancelReason="release postponed")
    assert summary(build_event("cancelled", cancelled)) == (
        "wfctl: SaaS Product Launch Workflow cancelled: release postponed (exec_0123abcd)"
    )
    step = build_event("step_failed", DOCUMENT, step="lint", error={"message": "line one\nline two"})
    assert summary(step) == "wfctl: SaaS Product Launch Workflow step lint failed: line one line two (exec_0123abcd)"


# -- webhook -----------------------------------------------------------------------------------
def test_webhook_receives_event_json():
    event = failed_event()
    with http_server() as web:
        results = send({"webhook": web.url + "/hook?x=1"}, event, {})
        [request] = web.wait_for(1)
    assert results == [{"transport": "webhook", "target": web.url + "/hook?x=1", "ok": True, "error": None}]
    assert request.method == "POST"
    assert request.path == "/hook?x=1"
    assert request.headers["content-type"] == "application/json"
    assert request.json == event


def test_webhook_error_status_is_a_failure():
    with http_server(status=500, body="database is down") as web:
        results = send({"webhook": web.url + "/hook"}, failed_event(), {})
        web.wait_for(1)
    [result] = results
    assert result["ok"] is False
    assert "HTTP 500" in result["error"] and "database is down" in result["error"]


def test_webhook_status_can_change_between_requests():
    with http_server() as web:
        assert send({"webhook": web.url}, failed_event(), {})[0]["ok"] is True
        web.status = 404
        assert send({"webhook": web.url}, failed_event(), {})[0]["ok"] is False
        assert len(web.wait_for(2)) == 2


def test_webhook_unreachable_port():
    url = f"http://127.0.0.1:{free_port()}/hook"
    [result] = send({"webhook": url}, failed_event(), {}, timeout=5)
    assert result["ok"] is False
    assert result["error"].startswith(f"cannot reach {url}:")
    assert "refused" in result["error"]


def test_webhook_rejects_non_http_url():
    [result] = send({"webhook": "file:///etc/passwd"}, failed_event(), {})
    assert result["ok"] is False and "not an http(s) URL" in result["error"]


def test_slack_detection():
    assert is_slack_webhook("https://hooks.slack.com/services/T0/B0/XYZ")
    assert is_slack_webhook("https://HOOKS.SLACK.COM/services/T0/B0/XYZ")
    assert not is_slack_webhook("https://hooks.example/x")
    assert not is_slack_webhook("https://hooks.slack.com.evil.example/x")
    assert not is_slack_webhook("https://example.com/hooks.slack.com")
    assert not is_slack_webhook("not a url")


def test_slack_webhook_secret_is_not_shown_in_results():
    url = f"http://127.0.0.1:{free_port()}/x"
    assert send({"webhook": url}, failed_event(), {})[0]["target"] == url
    assert notify._redact("https://hooks.slack.com/services/T0/B0/SECRET") == "https://hooks.slack.com/…"
    assert notify._redact("https://user:pw@h.example/x") == "https://h.example/…"


def test_slack_payload():
    payload = slack_payload(failed_event())
    assert "channel" not in payload
    assert payload["text"] == summary(failed_event())
    section, context = payload["blocks"]
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    assert section["text"]["text"] == payload["text"]
    assert context["type"] == "context"
    parts = " ".join(element["text"] for element in context["elements"])
    assert "exec_0123abcd" in parts and "failed" in parts
    escaped = slack_payload(build_event("failed", dict(DOCUMENT, workflowName="A <b> & c")), "#ops")
    assert escaped["channel"] == "#ops"
    assert "A &lt;b&gt; &amp; c" in escaped["text"]


def test_slack_channel_through_configured_webhook():
    with http_server() as web:
        config = {"slack": {"webhook": web.url + "/services/T/B/secret"}}
        results = send({"slack": "#launches"}, failed_event(), config)
        [request] = web.wait_for(1)
    assert results == [{"transport": "slack", "target": "#launches", "ok": True, "error": None}]
    assert request.headers["content-type"] == "application/json"
    assert request.json["channel"] == "#launches"
    assert request.json["text"] == summary(failed_event())
    assert request.json["blocks"][0]["type"] == "section"


def test_slack_without_configured_webhook():
    [result] = send({"slack": "#launches"}, failed_event(), {})
    assert result["transport"] == "slack" and result["ok"] is False
    assert "set it with: wfctl config set slack.webhook URL" in result["error"]


# -- email -------------------------------------------------------------------------------------
def test_email_arrives_with_subject_and_recipient():
    event = failed_event()
    with smtp_server() as mail:
        config = {"smtp": {"host": "127.0.0.1", "port": mail.port, "sender": "ci@example.com"}}
        results = send({"email": ["team@example.com"]}, event, config)
        [message] = mail.wait_for(1)
    assert results == [{"transport": "email", "target": "team@example.com", "ok": True, "error": None}]
    assert message.sender == "ci@example.com"
    assert message.recipients == ["team@example.com"]
    assert message.subject == summary(event)
    assert message.message["From"] == "ci@example.com"
    assert message.message["To"] == "team@example.com"
    assert "Execution:    exec_0123abcd" in message.text
    assert "wfctl execution exec_0123abcd" in message.text
    body_json = message.text[message.text.index("{"):]
    assert json.loads(body_json) == event


def test_email_two_recipients_default_sender_and_unicode():
    doc = dict(DOCUMENT, workflowName="Lancement été")
    with smtp_server() as mail:
        config = {"smtp": {"host": "127.0.0.1", "port": mail.port}}
        targets = targets_from({"email": "a@example.com, b@example.com"})
        results = send(targets, build_event("failed", doc), config)
        [message] = mail.wait_for(1)
    assert results[0]["ok"] is True and results[0]["target"] == "a@example.com, b@example.com"
    assert message.recipients == ["a@example.com", "b@example.com"]
    assert message.sender == f"wfctl@{socket.gethostname()}"
    assert message.subject.startswith("wfctl: Lancement été failed at testing")
    assert "Lancement été" in message.text


def test_email_login_when_username_and_password():
    with smtp_server(auth=("bot", "s3cret")) as mail:
        smtp = {"host": "127.0.0.1", "port": mail.port, "username": "bot", "password": "s3cret"}
        assert send({"email": ["a@example.com"]}, failed_event(), {"smtp": smtp})[0]["ok"] is True
        [message] = mail.wait_for(1)
        assert message.user == "bot"
        wrong = dict(smtp, password="nope")
        [result] = send({"email": ["a@example.com"]}, failed_event(), {"smtp": wrong})
    assert result["ok"] is False and "refused the login of bot" in result["error"]


def test_email_refused_recipient_is_reported():
    with smtp_server(reject=("gone@example.com",)) as mail:
        config = {"smtp": {"host": "127.0.0.1", "port": mail.port}}
        [partly] = send({"email": ["a@example.com", "gone@example.com"]}, failed_event(), config)
        [message] = mail.wait_for(1)
        [none] = send({"email": ["gone@example.com"]}, failed_event(), config)
    assert message.recipients == ["a@example.com"]
    assert partly["ok"] is False and "gone@example.com" in partly["error"]
    assert none["ok"] is False and "refused every recipient" in none["error"]


def test_email_without_smtp_config():
    [result] = send({"email": ["a@example.com"]}, failed_event(), {})
    assert result["ok"] is False
    assert "set it with: wfctl config set smtp.host HOST" in result["error"]


def test_email_unreachable_server():
    config = {"smtp": {"host": "127.0.0.1", "port": free_port()}}
    [result] = send({"email": ["a@example.com"]}, failed_event(), config, timeout=5)
    assert result["ok"] is False
    assert result["error"].startswith("cannot reach the SMTP server 127.0.0.1:")


def test_smtp_server_speaks_to_plain_smtplib():
    with smtp_server() as mail:
        with smtplib.SMTP("127.0.0.1", mail.port, timeout=10) as client:
            client.helo()
            client.noop()
            client.rset()
            client.sendmail("a@x.org", ["b@x.org"], b"Subject: hi\r\n\r\n.leading dot\r\n")
        [message] = mail.wait_for(1)
    assert message.subject == "hi"
    assert message.text == ".leading dot\n"


# -- command -----------------------------------------------------------------------------------
def test_command_receives_event_on_stdin(tmp_path):
    out = tmp_path / "event.json"
    env_out = tmp_path / "event-name.txt"
    command = f"cat > {shlex.quote(str(out))}; printf %s \"$WFCTL_EVENT\" > {shlex.quote(str(env_out))}"
    event = failed_event()
    results = send({"command": command}, event, {})
    assert results == [{"transport": "command", "target": command, "ok": True, "error": None}]
    assert json.loads(out.read_text()) == event
    assert env_out.read_text() == "failed"


def test_command_runs_in_cwd(tmp_path):
    script = tmp_path / "notify.sh"
    script.write_text("#!/bin/sh\ncat > got.json\n")
    script.chmod(0o755)
    [result] = send({"command": "./notify.sh"}, failed_event(), {}, cwd=tmp_path)
    assert result["ok"] is True
    assert json.loads((tmp_path / "got.json").read_text())["event"] == "failed"


def test_command_failure_is_reported():
    [result] = send({"command": "echo 'no route to pager' >&2; exit 3"}, failed_event(), {})
    assert result["ok"] is False
    assert result["error"] == "the notification command exited with code 3: no route to pager."


def test_command_that_ignores_stdin_still_succeeds():
    big = build_event("failed", dict(DOCUMENT, error={"step": "x", "message": "m" * 200_000}))
    [result] = send({"command": "true"}, big, {})
    assert result["ok"] is True


def test_command_timeout_kills_it(tmp_path):
    pid_file = tmp_path / "pid"
    command = f"echo $$ > {shlex.quote(str(pid_file))}; exec sleep 60"
    started = time.monotonic()
    [result] = send({"command": command}, failed_event(), {}, timeout=1)
    assert time.monotonic() - started < 30
    assert result["ok"] is False and "did not finish within 1s" in result["error"]
    pid = int(pid_file.read_text())
    # the process was killed and reaped: nothing with that pid is left
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# -- everything at once --------------------------------------------------------------------------
def test_all_transports_one_result_each_even_when_some_fail(tmp_path):
    out = tmp_path / "event.json"
    with http_server() as web, smtp_server() as mail:
        targets = targets_from(
            {"webhook": web.url + "/w", "slack": "#ops", "email": "a@example.com",
             "command": f"cat > {shlex.quote(str(out))}"},
        )
        config = {"smtp": {"host": "127.0.0.1", "port": mail.port}}  # no slack webhook
        results = send(targets, failed_event(), config)
        web.wait_for(1)
        mail.wait_for(1)
    assert [r["transport"] for r in results] == ["webhook", "slack", "email", "command"]
    assert [r["ok"] for r in results] == [True, False, True, True]
    assert out.exists()


def test_send_never_raises_on_garbage():
    assert send(None, failed_event(), None) == []  # type: ignore[arg-type]
    results = send({"webhook": 12, "email": "not-a-list", "command": ""}, {}, {"smtp": "x"})  # type: ignore[dict-item]
    assert all(r["ok"] is False and r["error"] for r in results)


def test_notify_helper():
    with http_server() as web:
        targets = targets_from({"webhook": web.url, "on": ["failed"]})
        assert notify.notify("completed", DOCUMENT, targets, {}) == []
        [result] = notify.notify("failed", DOCUMENT, targets, {})
        [request] = web.wait_for(1)
    assert result["ok"] is True and request.json["event"] == "failed"


def test_import_is_cheap():
    code = ("import sys, wfctl.notify; "
            "heavy = {'urllib.request', 'smtplib', 'subprocess', 'email.message', 'http.client'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", notify.EVENTS)
def test_every_event_has_a_summary(name):
    text = summary(build_event(name, DOCUMENT))
    assert text.startswith("wfctl: SaaS Product Launch Workflow ") and text.endswith("(exec_0123abcd)")
