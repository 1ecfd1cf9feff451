"""A workflow as a diagram: Mermaid (default) or Graphviz DOT.

Sequences are chains of arrows; a parallel step fans out to its children and joins
again; a conditional is a decision with a `then` and an `else` edge; a loop is a
subgraph whose body has an arrow back to the loop; a team step names its team.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from wfctl.record import branch_steps, step_type


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


def _label(step: dict) -> str:
    kind = step_type(step)
    if kind == "task":
        who = step.get("agent") or "run"
        return f"{step['id']}\n({who})"
    if kind == "team":
        return f"{step['id']}\n(team {step.get('teamId')})"
    if kind == "loop":
        return f"{step['id']}\n(loop over {step.get('items')})"
    if kind == "conditional":
        return f"{step['id']}\n{step.get('condition')}?"
    return f"{step['id']}\n({kind})"


def build(workflow: dict) -> Diagram:
    diagram = Diagram()
    start = diagram.node("wf_start", "start", "circle")
    ends = _sequence(diagram, workflow.get("steps", []), [start])
    end = diagram.node("wf_end", "end", "circle")
    for source, label in ends:
        diagram.edge(source, end, label)
    return diagram


def _sequence(diagram: Diagram, steps: list[dict], entries: list) -> list[tuple[str, str]]:
    """Draw steps one after another; returns the open ends (node, edge label)."""
    ends = [(entry, "") if isinstance(entry, str) else entry for entry in entries]
    for step in steps:
        ends = _step(diagram, step, ends)
    return ends


def _step(diagram: Diagram, step: dict, ends: list[tuple[str, str]]) -> list[tuple[str, str]]:
    kind = step_type(step)
    node = diagram.id_for(step["id"])
    if kind == "parallel":
        fork = diagram.node(node, f"{step['id']}\n(parallel)", "fork")
        for source, label in ends:
            diagram.edge(source, fork, label)
        join = diagram.node(node + "_join", f"join {step['id']}", "join")
        members = []
        for child in step.get("steps", []):
            child_ends = _step(diagram, child, [(fork, "")])
            members.append(diagram.id_for(child["id"]))
            for source, label in child_ends:
                diagram.edge(source, join, label)
        diagram.clusters.append((node + "_group", f"parallel {step['id']}", members))
        return [(join, "")]
    if kind == "conditional":
        decision = diagram.node(node, _label(step), "diamond")
        for source, label in ends:
            diagram.edge(source, decision, label)
        then_ends = _sequence(diagram, branch_steps(step.get("then")), [(decision, "then")])
        else_steps = branch_steps(step.get("else"))
        else_ends = _sequence(diagram, else_steps, [(decision, "else")]) if else_steps else [(decision, "else")]
        return then_ends + else_ends
    if kind == "loop":
        loop = diagram.node(node, _label(step), "loop")
        for source, label in ends:
            diagram.edge(source, loop, label)
        body = step.get("step") or {}
        if body:
            body_ends = _step(diagram, body, [(loop, "each item")])
            for source, _label_text in body_ends:
                diagram.edge(source, loop, "next")
            diagram.clusters.append((node + "_group", f"loop {step['id']}", [diagram.id_for(body["id"])]))
        return [(loop, "done")]
    target = diagram.node(node, _label(step), "box")
    for source, label in ends:
        diagram.edge(source, target, label)
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


def render(workflow: dict, fmt: str = "mermaid") -> str:
    diagram = build(workflow)
    if fmt == "dot":
        return to_dot(diagram, workflow.get("name", "workflow"))
    return to_mermaid(diagram)
