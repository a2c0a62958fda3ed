"""What a failed ansible-playbook run said, for a test's assertion message.

The tail of a deploy log is mostly the tasks that went well after the failure; CI keeps only part of a
test's output, so a failure's own lines (``fatal:``/``failed:`` with the task above them) come first.
"""

from __future__ import annotations

import re

_FAILED = re.compile(r"^(fatal|failed): \[")


def failure_summary(log: str, tail: int = 2500) -> str:
    """The failed tasks (task header + the failure's lines), then the play recap and the log's last *tail* chars."""
    lines = log.splitlines()
    out: list[str] = []
    task = ""
    for i, line in enumerate(lines):
        if line.startswith("TASK ["):
            task = line
        elif _FAILED.match(line):
            out.append(task)
            block = [line]
            for nxt in lines[i + 1 : i + 40]:
                if not nxt.startswith((" ", "\t")) or nxt.startswith(("TASK [", "PLAY")):
                    break
                block.append(nxt)
            out.extend(block)
    head = "\n".join(out) if out else "(no fatal/failed line in the log)"
    return f"{head}\n----- last {tail} chars -----\n{log[-tail:]}"
