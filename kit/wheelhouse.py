"""Build the wheelhouse the Ansible roles install on hosts: ``python -m kit.wheelhouse build``.

Hosts (lab namespaces, machines without registry access) get the kit from this
directory, built on the controller and copied over as one tarball:

* runtime wheels: the part of ``requirements.lock`` (hashed, uv-generated) that
  the services and generators need -- the closure of ``pyproject.toml``'s
  dependencies minus the controller-only ones (:data:`CONTROLLER_ONLY`: Ansible,
  Fabric, rich) and the dev extra, walked through the lock's ``# via`` annotations.
  They are downloaded with ``pip download --require-hashes --only-binary``;
  hosts install them with ``--no-index --require-hashes``.
* the kit's own wheel, written here byte-for-byte reproducibly from ``kit/``
  (fixed timestamps, sorted entries) so an unchanged tree gives an unchanged
  file and the Ansible copy reports no change.

Layout of ``<out>`` (default ``<repo>/.wheelhouse``, git-ignored)::

    requirements-hosts.txt   the filtered lock (with hashes)
    wheels/*.whl             runtime wheels + wsproxy_loadkit-<v>-py3-none-any.whl
    manifest.json            stamp, python tag, platform, kit wheel name, file hashes
    wheelhouse.tar           all of the above in one deterministic tarball (what hosts get)

A rebuild happens only when the filtered lock or the kit's sources changed
(the stamp); the CLI prints JSON ``{"changed": bool, ...}`` for Ansible's
``changed_when``.  Errors raise :class:`WheelhouseError` with the fix; the CLI
prints it and exits 2.  Owned by the Ansible ``kit_venv`` role's controller step.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from kit.paths import REPO, WHEELHOUSE

__all__ = [
    "WheelhouseError",
    "LockEntry",
    "parse_lock",
    "host_requirements",
    "build",
    "main",
    "CONTROLLER_ONLY",
    "DEFAULT_OUT",
]

log = logging.getLogger(__name__)

DEFAULT_OUT = WHEELHOUSE
#: dependencies of pyproject.toml that only the controller needs (rich: fab run's live view)
CONTROLLER_ONLY = frozenset({"fabric", "ansible-core", "rich"})
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)
_PIP_TIMEOUT = 900


class WheelhouseError(RuntimeError):
    """The wheelhouse cannot be built; the message says why and what to do."""


@dataclass(frozen=True)
class LockEntry:
    name: str  # normalised (PEP 503)
    text: str  # the requirement block, hashes included, without comments
    via: frozenset[str]  # normalised names of dependents; "" for the project itself


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, LockEntry]:
    """Split a uv/pip-compile lock into entries with their ``# via`` dependents."""
    entries: dict[str, LockEntry] = {}
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            blocks.append([line])
        elif blocks and line.strip():
            blocks[-1].append(line)
    for block in blocks:
        name = normalise(re.split(r"[=<>!~\[; ]", block[0], maxsplit=1)[0])
        req, via = [], set()
        in_via = False
        for line in block:
            s = line.strip()
            if s.startswith("# via"):
                rest = s[len("# via") :].strip()
                in_via = True
                if rest:
                    via.add(_via_name(rest))
            elif s.startswith("#") and in_via:
                via.add(_via_name(s.lstrip("#").strip()))
            elif not s.startswith("#"):
                req.append(line.rstrip())
        entries[name] = LockEntry(name, "\n".join(req).rstrip(" \\"), frozenset(via))
    return entries


def _via_name(s: str) -> str:
    if "(pyproject.toml)" in s or s.startswith("-r "):
        return ""
    return normalise(s.split()[0])


def project_dependencies(pyproject: Path) -> list[str]:
    data = tomllib.loads(pyproject.read_text())
    return [normalise(re.split(r"[=<>!~\[; ]", d, maxsplit=1)[0]) for d in data["project"]["dependencies"]]


def host_requirements(
    lock: dict[str, LockEntry], roots: list[str], exclude: frozenset[str] = CONTROLLER_ONLY
) -> list[LockEntry]:
    """The lock entries hosts need: *roots* minus *exclude*, and everything they depend on."""
    wanted = {r for r in roots if r not in exclude}
    missing = sorted(r for r in wanted if r not in lock)
    if missing:
        raise WheelhouseError(f"requirements.lock lacks {', '.join(missing)}: run ./loadkit lock")
    changed = True
    while changed:
        changed = False
        for name, entry in lock.items():
            if name not in wanted and name not in exclude and entry.via & wanted:
                wanted.add(name)
                changed = True
    return [lock[n] for n in sorted(wanted)]


# -- the kit's own wheel ----------------------------------------------------------------------


def _kit_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in (root / "kit").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )


def source_digest(root: Path = REPO) -> str:
    h = hashlib.sha256()
    for p in _kit_files(root) + [root / "pyproject.toml"]:
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_kit_wheel(root: Path, dest_dir: Path, requires: list[str]) -> Path:
    """Write the kit's pure-Python wheel reproducibly (same tree -> same bytes)."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    dist = normalise(project["name"]).replace("-", "_")
    version = project["version"]
    info = f"{dist}-{version}.dist-info"
    files: list[tuple[str, bytes]] = [(p.relative_to(root).as_posix(), p.read_bytes()) for p in _kit_files(root)]
    meta = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {version}",
        f"Summary: {project.get('description', '')}",
        f"Requires-Python: {project.get('requires-python', '')}",
    ]
    meta += [f"Requires-Dist: {r}" for r in requires]
    files.append((f"{info}/METADATA", ("\n".join(meta) + "\n").encode()))
    files.append(
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: kit.wheelhouse\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    )
    scripts = project.get("scripts", {})
    if scripts:
        eps = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(scripts.items()))
        files.append((f"{info}/entry_points.txt", eps.encode()))
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files)
    record += f"{info}/RECORD,,\n"
    files.append((f"{info}/RECORD", record.encode()))
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / f"{dist}-{version}-py3-none-any.whl"
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            zi = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    os.replace(tmp, path)
    return path


# -- build --------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pack(out: Path, members: list[Path]) -> Path:
    tar_path = out / "wheelhouse.tar"
    tmp = out / "wheelhouse.tar.tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        for p in sorted(members):
            data = p.read_bytes()
            ti = tarfile.TarInfo(p.relative_to(out).as_posix())
            ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = len(data), 0, 0o644, 0, 0, "", ""
            tf.addfile(ti, io.BytesIO(data))
    os.replace(tmp, tar_path)
    return tar_path


def build(
    out: Path = DEFAULT_OUT, *, root: Path = REPO, lock_path: Path | None = None, python: str = sys.executable
) -> dict:
    """Build (or find up to date) the wheelhouse in *out*; return its manifest plus ``changed``."""
    lock_path = lock_path or root / "requirements.lock"
    if not lock_path.exists():
        raise WheelhouseError(f"{lock_path} does not exist: run ./loadkit lock")
    entries = host_requirements(parse_lock(lock_path.read_text()), project_dependencies(root / "pyproject.toml"))
    req_text = "\n".join(e.text for e in entries) + "\n"
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    stamp = hashlib.sha256((req_text + source_digest(root) + tag).encode()).hexdigest()
    manifest_path = out / "manifest.json"
    try:
        old = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        old = {}
    if old.get("stamp") == stamp and (out / "wheelhouse.tar").exists():
        return {**old, "changed": False, "path": str(out)}
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    req_path = out / "requirements-hosts.txt"
    req_path.write_text(req_text)
    cmd = [
        python,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--quiet",
        "--require-hashes",
        "--no-deps",
        "--only-binary",
        ":all:",
        "-d",
        str(wheels),
        "-r",
        str(req_path),
    ]
    log.info("downloading %d runtime wheels into %s", len(entries), wheels)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise WheelhouseError(f"pip download did not finish in {_PIP_TIMEOUT} s: check the network to PyPI") from None
    if res.returncode != 0:
        raise WheelhouseError(
            f"pip download failed (needs network to PyPI on the controller): {res.stderr.strip()[-1500:]}"
        )
    wanted = {e.name for e in entries}
    for whl in wheels.glob("*.whl"):  # drop wheels of an older lock
        if normalise(whl.name.split("-")[0]) not in wanted and not whl.name.startswith("wsproxy_loadkit-"):
            whl.unlink()
    requires = [e.text.split()[0] for e in entries if e.name in project_dependencies(root / "pyproject.toml")]
    kit_wheel = build_kit_wheel(root, wheels, requires)
    members = sorted(wheels.glob("*.whl")) + [req_path]
    manifest = {
        "stamp": stamp,
        "python": tag,
        "platform": sys.platform,
        "kit_wheel": kit_wheel.name,
        "requirements": req_path.name,
        "files": {p.relative_to(out).as_posix(): _sha256(p) for p in members},
    }
    tmp_manifest = out / "manifest.json.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp_manifest, manifest_path)
    _pack(out, members + [manifest_path])
    return {**manifest, "changed": True, "path": str(out)}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kit.wheelhouse", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build or refresh the wheelhouse; prints JSON with 'changed'")
    b.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default .wheelhouse)")
    b.add_argument(
        "--root",
        type=Path,
        default=REPO,
        help="source tree holding kit/, pyproject.toml and requirements.lock (default: this repo)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        result = build(args.out.resolve(), root=args.root.resolve())
    except WheelhouseError as exc:
        print(f"kit.wheelhouse: {exc}", file=sys.stderr)
        return 2
    summary = {k: result[k] for k in ("changed", "path", "python", "kit_wheel", "stamp")}
    summary["wheels"] = len(result["files"]) - 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
