"""wfctl graph: parallel groups, branches and loops drawn as such, in Mermaid and DOT."""

from __future__ import annotations

import re

FLOW = """\
name: flow
steps:
  - id: build
    run: echo build
    output: build
  - id: checks
    type: parallel
    steps:
      - id: lint
        run: echo lint
      - id: unit-tests
        run: echo test
  - id: gate
    type: conditional
    condition: build == "build"
    then:
      id: ship
      run: echo ship
    else:
      - id: fix
        run: echo fix
  - id: each
    type: loop
    items: [1, 2]
    step:
      id: notify
      run: echo "{{ item }}"
  - id: review
    type: team
    teamId: reviewers
    task: review it
teams:
  reviewers: {members: [echo], strategy: all}
"""


def edges(text: str) -> set[tuple[str, str, str]]:
    found = set()
    for line in text.splitlines():
        match = re.match(r"\s*(\w+) -->(?:\|([^|]*)\|)? (\w+)$", line)
        if match:
            found.add((match.group(1), match.group(3), match.group(2) or ""))
    return found


def test_mermaid_draws_every_step_type(wfctl, workflow_file):
    text = wfctl("graph", workflow_file(FLOW)).stdout
    assert text.startswith("flowchart TD\n")
    drawn = edges(text)
    assert ("wf_start", "n_build", "") in drawn
    # parallel: fan out to both children, then join
    assert ("n_checks", "n_lint", "") in drawn and ("n_checks", "n_unit_tests", "") in drawn
    assert ("n_lint", "n_checks_join", "") in drawn and ("n_unit_tests", "n_checks_join", "") in drawn
    assert 'subgraph n_checks_group["parallel checks"]' in text
    # conditional: a then edge and an else edge
    assert ("n_gate", "n_ship", "then") in drawn and ("n_gate", "n_fix", "else") in drawn
    # loop: into the body for each item, and back
    assert ("n_each", "n_notify", "each item") in drawn and ("n_notify", "n_each", "next") in drawn
    assert ("n_each", "n_review", "done") in drawn
    assert "team reviewers" in text
    assert ("n_review", "wf_end", "") in drawn


def test_dot_output(wfctl, workflow_file):
    text = wfctl("graph", workflow_file(FLOW), "--format", "dot").stdout
    assert text.startswith('digraph "flow" {')
    assert "subgraph cluster_n_checks_group" in text
    assert 'n_gate -> n_ship [label="then"];' in text
    assert "n_gate [label=" in text and "shape=diamond" in text
    assert text.rstrip().endswith("}")


def test_graph_of_a_registered_workflow_and_bad_format(wfctl, workflow_file):
    wfctl("create", workflow_file(FLOW))
    assert "n_build" in wfctl("graph", "flow").stdout
    result = wfctl("graph", "flow", "--format", "png", code=2)
    assert "mermaid or dot" in result.stderr
    wfctl("graph", "nothing-by-this-name", code=3)
