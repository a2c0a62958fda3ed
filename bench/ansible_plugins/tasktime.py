"""An Ansible callback for bench/deploy_time.py: the wall time of every task (all its hosts), as JSON.

Enabled only by that script (ANSIBLE_CALLBACK_PLUGINS + ANSIBLE_CALLBACKS_ENABLED=tasktime); writes
{"total": s, "rows": [[task path | name, s], ...]} to $TASKTIME_OUT when the playbook ends.
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "tasktime"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._started = time.monotonic()
        self._task: str | None = None
        self._t0 = 0.0
        self._rows: list[tuple[str, float]] = []

    def _close(self) -> None:
        if self._task is not None:
            self._rows.append((self._task, time.monotonic() - self._t0))
        self._task = None

    def v2_playbook_on_task_start(self, task, is_conditional):  # noqa: ANN001 -- Ansible's signature
        self._close()
        self._task = f"{task.get_path()} | {task.get_name()}"
        self._t0 = time.monotonic()

    def v2_playbook_on_handler_task_start(self, task):  # noqa: ANN001
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_stats(self, stats):  # noqa: ANN001
        self._close()
        with open(os.environ["TASKTIME_OUT"], "w") as fh:
            json.dump({"total": time.monotonic() - self._started, "rows": self._rows}, fh)
