"""Registered workflows: create, update, look up, list and delete.

A workflow is named by its id (`wf_...`) or by its exact name; names are unique.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wfctl.errors import Conflict, UsageError, WorkflowNotFound
from wfctl.model import Workflow, build_workflow, now_iso
from wfctl.store import Store, is_workflow_id, new_id

WORKFLOW_STATUSES = ("draft", "active")


def present(record: dict) -> dict:
    """The seed 004 create response's `data` object, plus the rest of the definition."""
    definition = record["definition"]
    shown: dict[str, Any] = {
        "workflowId": record["workflowId"],
        "name": definition.get("name"),
        "description": definition.get("description"),
        "category": definition.get("category"),
        "steps": definition.get("steps", []),
        "status": record.get("status", "draft"),
        "createdAt": record.get("createdAt"),
        "updatedAt": record.get("updatedAt"),
        "version": record.get("version", 1),
        "errorHandling": definition.get("errorHandling"),
        "timeout": definition.get("timeout"),
    }
    for key, value in definition.items():
        shown.setdefault(key, value)
    if record.get("source"):
        shown["source"] = record["source"]
    return shown


def tasks_count(record: dict) -> int:
    """Steps that do work (model.Workflow.count_tasks), counted when the definition was
    stored (a list of a thousand workflows builds no model); older records count now."""
    count = record.get("tasksCount")
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    return build_workflow(record["definition"]).count_tasks()


def list_element(record: dict) -> dict:
    """One element of the seed 000 workflow list."""
    definition = record["definition"]
    return {
        "id": record["workflowId"],
        "name": definition.get("name"),
        "active": record.get("status") == "active",
        "tasks_count": tasks_count(record),
        "description": definition.get("description"),
        "status": record.get("status", "draft"),
        "category": definition.get("category"),
        "createdAt": record.get("createdAt"),
    }


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store

    def find_by_name(self, name: str) -> dict | None:
        for record in self.store.iter_workflows():
            if record.get("definition", {}).get("name") == name:
                return record
        return None

    def resolve(self, ref: str) -> dict:
        """A workflow by id or exact name."""
        if is_workflow_id(ref):
            try:
                return self.store.load_workflow(ref)
            except WorkflowNotFound:
                pass
        record = self.find_by_name(ref)
        if record is None:
            raise WorkflowNotFound(f"no workflow with id or name '{_short(ref)}' (see `wfctl list`).")
        return record

    def register(
        self, definition: dict, *, source: Path | None, update: bool, workflow: Workflow | None = None
    ) -> tuple[dict, bool]:
        """Store a validated definition (`workflow`: its model, when the caller has it).
        Returns (record, created).

        With `update`, a definition whose name is registered becomes that workflow's
        next version; without it, a taken name is a conflict.
        """
        name = definition["name"]
        with self.store.workflow_lock():
            existing = self.find_by_name(name)
            now = now_iso()
            if existing is not None:
                if not update:
                    raise Conflict(
                        f"a workflow named '{name}' already exists ({existing['workflowId']}); "
                        "use --update to make this its next version."
                    )
                if existing["definition"] == definition:
                    return existing, False
                existing["definition"] = definition
                existing["tasksCount"] = (workflow or build_workflow(definition)).count_tasks()
                existing["version"] = int(existing.get("version", 1)) + 1
                existing["updatedAt"] = now
                if source is not None:
                    existing["source"] = str(source)
                self.store.save_workflow(existing)
                return existing, False
            record = {
                "schemaVersion": 1,
                "workflowId": new_id("wf"),
                "status": "draft",
                "version": 1,
                "createdAt": now,
                "updatedAt": now,
                "source": str(source) if source is not None else None,
                "tasksCount": (workflow or build_workflow(definition)).count_tasks(),
                "definition": definition,
            }
            self.store.save_workflow(record)
            return record, True

    def mark_active(self, workflow_id: str) -> None:
        """A workflow that has run is `active`; until then it is a `draft`."""
        with self.store.workflow_lock():
            try:
                record = self.store.load_workflow(workflow_id)
            except WorkflowNotFound:
                return  # deleted while it ran: its executions stay readable
            if record.get("status") != "active":
                record["status"] = "active"
                self.store.save_workflow(record)

    def delete(self, ref: str) -> dict:
        """Remove a workflow. What it was stays in a tombstone record, so that its
        executions and traces remain reachable by its id, and by its name until a
        new workflow takes that name."""
        with self.store.workflow_lock():
            record = self.resolve(ref)
            self.store.save_tombstone({**record, "deletedAt": now_iso()})
            self.store.delete_workflow(record["workflowId"])
        return record

    def resolve_history(self, ref: str) -> str:
        """The id of the workflow whose history (executions, traces) `ref` asks for:
        a registered workflow by id or name, else a deleted one by id, or by name
        (the latest deleted under it) while no registered workflow has that name."""
        try:
            return self.resolve(ref)["workflowId"]
        except WorkflowNotFound:
            pass
        if is_workflow_id(ref) and self.store.has_history(ref):
            return ref
        deleted = [r for r in self.store.iter_tombstones() if r.get("definition", {}).get("name") == ref]
        if deleted:
            return max(deleted, key=lambda r: (r.get("deletedAt") or "", r["workflowId"]))["workflowId"]
        raise WorkflowNotFound(f"no workflow with id or name '{_short(ref)}' (see `wfctl list`).")

    def list(
        self,
        *,
        status: str | None = None,
        category: str | None = None,
        page: int | None = None,
        size: int | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> dict:
        """The seed 000 list envelope, paginated by page/size or by limit/offset."""
        if status is not None and status not in WORKFLOW_STATUSES:
            raise UsageError(f"--status must be one of {', '.join(WORKFLOW_STATUSES)}, not '{status}'.")
        records = [
            r
            for r in self.store.iter_workflows()
            if (status is None or r.get("status", "draft") == status)
            and (category is None or r["definition"].get("category") == category)
        ]
        records.sort(key=lambda r: (r.get("createdAt") or "", r["workflowId"]))
        return paginate(
            "Workflow", [list_element(r) for r in records], page=page, size=size, limit=limit, offset=offset, default_size=50
        )


def paginate(
    entities: str,
    elements: list,
    *,
    page: int | None = None,
    size: int | None,
    limit: int | None = None,
    offset: int | None = None,
    default_size: int,
) -> dict:
    """The seed 000 envelope of one page: by --page/--size, or by --limit/--offset.

    The two ways are exclusive: given together, one would be dropped without a word.
    """
    count = len(elements)
    by_page = [name for name, value in (("--page", page), ("--size", size)) if value is not None]
    by_limit = [name for name, value in (("--limit", limit), ("--offset", offset)) if value is not None]
    if by_page and by_limit:
        raise UsageError(
            f"{' and '.join(by_page)} cannot be combined with {' and '.join(by_limit)}: "
            "page with --page/--size, or slice with --limit/--offset."
        )
    if page is None:
        page = 1
    if limit is not None or offset is not None:
        per_page = _bounded(limit if limit is not None else default_size, "--limit")
        start = offset or 0
        if start < 0:
            raise UsageError("--offset must be 0 or more.")
        current = start // per_page + 1
    else:
        per_page = _bounded(size if size is not None else default_size, "--size")
        if page < 1:
            raise UsageError("--page starts at 1.")
        current = page
        start = (page - 1) * per_page
    return {
        "entities": entities,
        "count": count,
        "per_page": per_page,
        "pages": {"current": current, "max": max(1, -(-count // per_page))},
        "elements": elements[start : start + per_page],
    }


def _bounded(value: int, option: str) -> int:
    if value < 1 or value > 100:
        raise UsageError(f"{option} must be between 1 and 100, not {value}.")
    return value


def _short(text: str) -> str:
    """A name from the command line, safe to print: no control characters reach the terminal."""
    from wfctl.store import printable

    return printable(text)
