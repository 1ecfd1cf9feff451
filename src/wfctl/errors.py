"""Exit codes and the error hierarchy shared by the library and the CLI.

A leaf module: it imports nothing from wfctl, so every layer can raise these.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ExitCode(IntEnum):
    """The process exit codes of design.md §2, in one place."""

    OK = 0
    FAILED = 1  # the execution failed
    INVALID = 2  # usage or validation error; nothing was run
    NOT_FOUND = 3  # workflow, execution, step or trace
    CANCELLED = 4
    TIMED_OUT = 5
    CONFLICT = 6  # the request does not fit the execution's state
    INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT; the execution is resumable


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a workflow file.

    `path` is the location in the document (`steps[2].then.agent`, empty for the
    whole document); `line` is 1-based when known.
    """

    file: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.path:
            return f"{where}: {self.path}: {self.message}"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict:
        return {"file": self.file, "path": self.path, "line": self.line, "message": self.message}


class WfctlError(Exception):
    """Base of every error wfctl reports to a person as one sentence."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(WfctlError):
    """Bad arguments or options (a bad --input, an id with bad characters)."""

    exit_code = ExitCode.INVALID


class WorkflowInvalid(WfctlError):
    """A workflow file with one or more problems; nothing was written or run."""

    exit_code = ExitCode.INVALID

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        if count == 1:
            message = str(self.problems[0])
        else:
            first = self.problems[0].file if self.problems else "workflow"
            message = f"{first}: {count} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class ExpressionError(WfctlError):
    """A syntax error in an expression, or a failure while evaluating one."""

    exit_code = ExitCode.INVALID

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class NotFound(WfctlError):
    exit_code = ExitCode.NOT_FOUND


class WorkflowNotFound(NotFound):
    """The seed's wording is kept for the JSON error document."""

    seed_message = "This workflow does not exists"


class ExecutionNotFound(NotFound):
    seed_message = "Execution not found."


class TraceNotFound(NotFound):
    seed_message = "Trace not found for this workflow."


class StepNotFound(NotFound):
    seed_message = "Step not found in this execution."


class Conflict(WfctlError):
    """The request does not fit the current state (a name taken, a run still going)."""

    exit_code = ExitCode.CONFLICT


class StoreError(WfctlError):
    """The data directory could not be read or written."""

    exit_code = ExitCode.FAILED
