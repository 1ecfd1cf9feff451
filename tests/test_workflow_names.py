"""WORKFLOW_OR_FILE (issue 11, item 7): a registered workflow's id or name wins over a
file of the same name in the current directory; an argument is read as a file only
when it looks like a path (`./build`, anything with a `/`, a .yaml/.yml/.json suffix).
"""

from __future__ import annotations

import json
import textwrap


def registered_and_lookalike(tmp_path, wfctl):
    """A registered workflow `build`, and in the current directory a file `build` that
    is a workflow named `other` (each step writes which one ran)."""
    registered = tmp_path / "defs" / "build.yaml"
    registered.parent.mkdir()
    registered.write_text(textwrap.dedent(f"""\
        name: build
        steps:
          - id: from-registry
            run: echo registered >> {tmp_path / 'ran'}
    """))
    wfctl("create", registered)
    work = tmp_path / "work"
    work.mkdir()
    (work / "build").write_text(textwrap.dedent(f"""\
        name: other
        steps:
          - id: from-file
            run: echo file >> {tmp_path / 'ran'}
    """))
    return work


def test_a_registered_name_wins_over_a_file_of_that_name_in_the_current_directory(tmp_path, wfctl, wfctl_json):
    work = registered_and_lookalike(tmp_path, wfctl)
    document = wfctl_json("execute", "build", cwd=work)
    assert document["workflowName"] == "build" and document["status"] == "completed"
    assert (tmp_path / "ran").read_text().split() == ["registered"]
    assert [w["name"] for w in wfctl_json("list")["elements"]] == ["build"]  # the file was not registered
    graph = wfctl("graph", "build", cwd=work).stdout
    assert "from-registry" in graph and "from-file" not in graph
    assert "from-file" in wfctl("graph", "./build", cwd=work).stdout

    # Written as a path, it is the file: run, and registered under its own name.
    document = wfctl_json("execute", "./build", cwd=work)
    assert document["workflowName"] == "other"
    assert (tmp_path / "ran").read_text().split() == ["registered", "file"]
    assert sorted(w["name"] for w in wfctl_json("list")["elements"]) == ["build", "other"]


def test_a_file_named_like_no_registered_workflow_is_not_run_without_a_path(tmp_path, wfctl):
    work = tmp_path / "work"
    work.mkdir()
    script = work / "deploy"
    script.write_text("#!/bin/sh\necho deploying\n")
    result = wfctl("execute", "deploy", "--json", code=3, cwd=work)
    assert json.loads(result.stdout)["error"] == "This workflow does not exists"
    assert "./deploy" in result.stderr  # how to run the file, if that was meant
    assert len(result.stderr.strip().splitlines()) == 1
    wfctl("graph", "deploy", code=3, cwd=work)
    # As a path it is read as a workflow file, and refused as one (exit 2).
    refused = wfctl("execute", "./deploy", code=2, cwd=work)
    assert "deploy" in refused.stderr and "Traceback" not in refused.stderr


def test_execute_help_states_the_rule(wfctl):
    shown = " ".join(wfctl("execute", "--help").stdout.split())
    assert "WORKFLOW_OR_FILE" in shown
    assert "A registered name wins over a file of the same name" in shown
    assert "./build" in shown and ".yaml, .yml or .json" in shown
