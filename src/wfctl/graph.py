"""A workflow as a diagram: Mermaid (default) or Graphviz DOT.

Sequences are chains of arrows; a parallel step fans out to its children and joins
again; a conditional is a decision with a `then` and an `else` edge; a loop is a
subgraph whose body has an arrow back to the loop; a team step names its team. A list
whose steps have `depends` is drawn as its graph: an arrow from each step a step
depends on, labelled with the condition when it is not plain success (`failed`,
`completed`, `skipped`, `not ...`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from wfctl.depends import Depends, Not, Ref
from wfctl.model import (
    ConditionalStep,
    LoopStep,
    ParallelStep,
    Step,
    StepList,
    TaskStep,
    TeamStep,
    Workflow,
    build_workflow,
)

Ends = list[tuple[str, str]]  # open ends of a drawing: (node id, label of the edge that leaves it)


@dataclass
class Diagram:
    """Nodes and edges, independent of the output format."""

    nodes: list[tuple[str, str, str]] = field(default_factory=list)  # (node id, label, shape)
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # (from, to, label)
    clusters: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (id, label, node ids)
    ids: dict[str, str] = field(default_factory=dict)  # step id → node id

    def id_for(self, step_id: str) -> str:
        """A node id safe in both formats, distinct even for `a-b` and `a_b`."""
        if step_id not in self.ids:
            base = "n_" + re.sub(r"[^A-Za-z0-9_]", "_", step_id)
            candidate, number = base, 1
            taken = set(self.ids.values())
            while candidate in taken:
                number += 1
                candidate = f"{base}_{number}"
            self.ids[step_id] = candidate
        return self.ids[step_id]

    def node(self, node_id: str, label: str, shape: str = "box") -> str:
        self.nodes.append((node_id, label, shape))
        return node_id

    def edge(self, source: str, target: str, label: str = "") -> None:
        self.edges.append((source, target, label))

    def connect(self, ends: Ends, target: str) -> None:
        for source, label in ends:
            self.edge(source, target, label)


def _label(step: Step) -> str:
    if isinstance(step, TaskStep):
        return f"{step.id}\n({step.agent or 'run'})"
    if isinstance(step, TeamStep):
        return f"{step.id}\n(team {step.team_id})"
    if isinstance(step, LoopStep):
        return f"{step.id}\n(loop over {step.raw.get('items')})"
    if isinstance(step, ConditionalStep):
        return f"{step.id}\n{step.raw.get('condition')}?"
    return f"{step.id}\n({step.kind})"


def build(workflow: Workflow) -> Diagram:
    diagram = Diagram()
    start = diagram.node("wf_start", "start", "circle")
    ends = _list(diagram, workflow.steps, [(start, "")])
    end = diagram.node("wf_end", "end", "circle")
    diagram.connect(ends, end)
    return diagram


def _list(diagram: Diagram, steps: StepList, entries: Ends) -> Ends:
    """Draw a list of steps entered from `entries`; returns its open ends."""
    if steps.graph is not None:
        return _graph(diagram, steps, entries)
    ends = entries
    for step in steps:
        ends = _step(diagram, step, ends)
    return ends


def _graph(diagram: Diagram, steps: StepList, entries: Ends) -> Ends:
    """A list scheduled as a graph: each step entered from what it depends on."""
    graph = steps.graph
    by_id = {step.id: step for step in steps}
    exits: dict[str, Ends] = {}
    for step_id in graph.order():
        requirement = graph.requirements.get(step_id)
        incoming: Ends = []
        if requirement is None:
            incoming = list(entries)
        else:
            labels = _edge_labels(requirement)
            for dependency in requirement.ids():
                for source, own in exits.get(dependency, []):
                    incoming.append((source, labels.get(dependency) or own))
            if not requirement.ids():  # depends: [] starts with the list
                incoming = list(entries)
        exits[step_id] = _step(diagram, by_id[step_id], incoming)
    # The list ends where the steps no other step depends on end.
    return [end for step_id in graph.order() if not graph.dependents(step_id) for end in exits[step_id]]


def _edge_labels(requirement: Depends) -> dict[str, str]:
    """step id → the label of its edge: empty for plain success, else the conditions."""
    found: dict[str, list[str]] = {}

    def visit(node: Any, negated: bool) -> None:
        if isinstance(node, Ref):
            text = node.prop or "succeeded"
            found.setdefault(node.step, []).append(f"not {text}" if negated else text)
        elif isinstance(node, Not):
            visit(node.operand, not negated)
        else:
            for operand in node.operands:
                visit(operand, negated)

    visit(requirement.condition, False)
    labels = {}
    for step_id, texts in found.items():
        distinct = list(dict.fromkeys(texts))
        labels[step_id] = "" if distinct == ["succeeded"] else " or ".join(distinct)
    return labels


def _step(diagram: Diagram, step: Step, ends: Ends) -> Ends:
    node = diagram.id_for(step.id)
    if isinstance(step, ParallelStep):
        fork = diagram.node(node, f"{step.id}\n(parallel)", "fork")
        diagram.connect(ends, fork)
        join = diagram.node(node + "_join", f"join {step.id}", "join")
        members = []
        if step.steps.graph is not None:
            diagram.connect(_graph(diagram, step.steps, [(fork, "")]), join)
            members = [diagram.id_for(child.id) for child in step.steps]
        else:
            for child in step.steps:
                child_ends = _step(diagram, child, [(fork, "")])
                members.append(diagram.id_for(child.id))
                diagram.connect(child_ends, join)
        diagram.clusters.append((node + "_group", f"parallel {step.id}", members))
        return [(join, "")]
    if isinstance(step, ConditionalStep):
        decision = diagram.node(node, _label(step), "diamond")
        diagram.connect(ends, decision)
        then_ends = _list(diagram, step.then, [(decision, "then")])
        else_ends = _list(diagram, step.otherwise, [(decision, "else")]) if step.otherwise else [(decision, "else")]
        return then_ends + else_ends
    if isinstance(step, LoopStep):
        loop = diagram.node(node, _label(step), "loop")
        diagram.connect(ends, loop)
        body_ends = _step(diagram, step.body, [(loop, "each item")])
        for source, _label_text in body_ends:
            diagram.edge(source, loop, "next")
        diagram.clusters.append((node + "_group", f"loop {step.id}", [diagram.id_for(step.body.id)]))
        return [(loop, "done")]
    target = diagram.node(node, _label(step), "box")
    diagram.connect(ends, target)
    return [(target, "")]


_MERMAID_SHAPES = {
    "box": ('["', '"]'),
    "circle": ('(("', '"))'),
    "diamond": ('{"', '"}'),
    "fork": ('[/"', '"\\]'),
    "join": ('[\\"', '"/]'),
    "loop": ('[["', '"]]'),
}


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;").replace("\n", "<br/>")


def to_mermaid(diagram: Diagram) -> str:
    lines = ["flowchart TD"]
    grouped = {member for _, _, members in diagram.clusters for member in members}
    for node_id, label, shape in diagram.nodes:
        if node_id in grouped:
            continue
        opening, closing = _MERMAID_SHAPES[shape]
        lines.append(f"    {node_id}{opening}{_mermaid_text(label)}{closing}")
    shapes = {node_id: (label, shape) for node_id, label, shape in diagram.nodes}
    for cluster_id, label, members in diagram.clusters:
        lines.append(f'    subgraph {cluster_id}["{_mermaid_text(label)}"]')
        for member in members:
            if member in shapes:
                member_label, shape = shapes[member]
                opening, closing = _MERMAID_SHAPES[shape]
                lines.append(f"        {member}{opening}{_mermaid_text(member_label)}{closing}")
        lines.append("    end")
    for source, target, label in diagram.edges:
        arrow = f" -->|{_mermaid_text(label)}| " if label else " --> "
        lines.append(f"    {source}{arrow}{target}")
    return "\n".join(lines) + "\n"


_DOT_SHAPES = {
    "box": "box",
    "circle": "circle",
    "diamond": "diamond",
    "fork": "trapezium",
    "join": "invtrapezium",
    "loop": "box3d",
}


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def to_dot(diagram: Diagram, name: str) -> str:
    lines = [f'digraph "{_dot_text(name)}" {{', "    rankdir=TB;", '    node [fontname="Helvetica"];']
    for node_id, label, shape in diagram.nodes:
        lines.append(f'    {node_id} [label="{_dot_text(label)}", shape={_DOT_SHAPES[shape]}];')
    for cluster_id, label, members in diagram.clusters:
        lines.append(f"    subgraph cluster_{cluster_id} {{")
        lines.append(f'        label="{_dot_text(label)}"; style=dashed;')
        lines.append("        " + " ".join(f"{member};" for member in members))
        lines.append("    }")
    for source, target, label in diagram.edges:
        extra = f' [label="{_dot_text(label)}"]' if label else ""
        lines.append(f"    {source} -> {target}{extra};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(workflow: Workflow | Mapping[str, Any], fmt: str = "mermaid") -> str:
    """The diagram of a workflow (its model, or a valid definition) as text."""
    model = workflow if isinstance(workflow, Workflow) else build_workflow(workflow)
    diagram = build(model)
    if fmt == "dot":
        return to_dot(diagram, model.name or "workflow")
    return to_mermaid(diagram)
