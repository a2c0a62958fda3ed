#!/usr/bin/python
"""kit_sysctl: read, apply and restore the kit's kernel settings on one host (wsproxy-loadkit).

An Ansible module, not a script: the `script` module returns whatever reached the SSH pseudo-terminal,
and on the lab's busy hosts that was now and then nothing at all (a deploy failed with an empty stdout
that no rerun reproduced).  A module's result comes back inside Ansible's own JSON envelope.

    state: apply    settings [{name, value, mode}] -> set what differs (mode "min" never lowers a larger
                    current value), read every key back and report set / unchanged / capped (the
                    kernel kept another value) / refused (the write failed: e.g. not allowed in a network
                    namespace) / absent (no such key here); the first value a key had before the kit
                    changed it is kept in state_file for `restore`.  Check mode reports, writes nothing.
    state: restore  put back the values recorded in state_file, then remove it.

Hosts that share one kernel (the netns lab: per-namespace ``net.*`` keys but global ``fs.*`` keys, one
filesystem) take a lock around read-modify-write, so one host's write is never recorded as another's
original value.  Owned by the tuning role; stdlib only besides Ansible's module_utils.
"""

import fcntl
import json
import os
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

LOCK = "/run/lock/wsproxy-loadkit-sysctl.lock"
LOCK_TIMEOUT_S = 60
PROC = "/proc/sys"


def _path(key):
    return os.path.join(PROC, key.replace(".", "/"))


def norm(value):
    return " ".join(str(value).split())


def read(key):
    try:
        with open(_path(key), encoding="ascii") as fh:
            return norm(fh.read())
    except FileNotFoundError:
        return None
    except OSError as exc:
        return "<unreadable: %s>" % exc.strerror


def write(key, value):
    """sysctl -w; returns an error string or None."""
    res = subprocess.run(["sysctl", "-q", "-w", "%s=%s" % (key, value)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return (res.stderr.strip() or "sysctl exited with %d" % res.returncode).splitlines()[-1]
    return None


def target(setting, current):
    """The value to set: mode "min" keeps a larger numeric current value."""
    value = norm(setting["value"])
    if setting.get("mode", "exact") == "min" and current.isdigit() and value.isdigit():
        return str(max(int(current), int(value)))
    return value


def load_state(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (FileNotFoundError, ValueError):
        return {}


def save_state(path, state):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


class Locked:
    """An exclusive flock on LOCK (falls back to /tmp when /run/lock is missing), bounded wait."""

    def __enter__(self):
        path = LOCK if os.path.isdir(os.path.dirname(LOCK)) else "/tmp/wsproxy-loadkit-sysctl.lock"
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise RuntimeError("another kit_sysctl held %s for %d s" % (path, LOCK_TIMEOUT_S)) from None
                time.sleep(0.05)

    def __exit__(self, *exc):
        os.close(self.fd)


def apply(settings, state_path, check):
    state = load_state(state_path) if state_path else {}
    out = {"targets": [], "set": [], "unchanged": [], "capped": [], "refused": [], "absent": []}
    for setting in settings:
        key = setting["name"]
        before = read(key)
        if before is None:
            out["absent"].append({"key": key, "wanted": norm(setting["value"])})
            continue
        value = target(setting, before)
        out["targets"].append({"name": key, "value": value})
        if before == value:
            out["unchanged"].append(key)
            continue
        if check:
            out["set"].append({"key": key, "from": before, "to": value})
            continue
        error = write(key, value)
        after = read(key)
        if error is not None and after != value:
            out["refused"].append({"key": key, "wanted": value, "value": after, "error": error})
        elif after != value:
            out["capped"].append({"key": key, "wanted": value, "value": after})
        else:
            out["set"].append({"key": key, "from": before, "to": value})
            state.setdefault(key, before)
    if state_path and not check and out["set"]:
        save_state(state_path, state)
    return out


def restore(state_path, check):
    state = load_state(state_path)
    out = {"restored": [], "failed": []}
    for key, value in sorted(state.items()):
        if read(key) == value:
            continue
        error = None if check else write(key, value)
        (out["failed"] if error else out["restored"]).append({"key": key, "value": value, "error": error})
    if not check and not out["failed"] and os.path.exists(state_path):
        os.remove(state_path)
    return out


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["apply", "restore"], "default": "apply"},
            "settings": {"type": "list", "elements": "dict", "default": []},
            "state_file": {"type": "path"},
        },
        required_if=[("state", "restore", ["state_file"])],
        supports_check_mode=True,
    )
    p = module.params
    bad = [s for s in p["settings"] if "name" not in s or "value" not in s]
    if bad:
        module.fail_json(msg="kit_sysctl: every setting needs name and value; got %s" % bad)
    try:
        with Locked():
            if p["state"] == "apply":
                result = apply(p["settings"], p["state_file"], module.check_mode)
            else:
                result = restore(p["state_file"], module.check_mode)
    except (OSError, RuntimeError) as exc:
        module.fail_json(msg="kit_sysctl %s: %s: %s" % (p["state"], type(exc).__name__, exc))
    if p["state"] == "restore" and result["failed"]:
        module.fail_json(
            msg="kit_sysctl restore could not put back %s"
            % ", ".join("%s=%s (%s)" % (f["key"], f["value"], f["error"]) for f in result["failed"]),
            **result,
        )
    key = "set" if p["state"] == "apply" else "restored"
    module.exit_json(changed=bool(result[key]), **result)


if __name__ == "__main__":
    main()
