"""Where the knowngood.runbooks collection is: this checkout's, else an installed one.

An editable install (a checkout) runs the runbooks in the checkout. A wheel installed with pip
carries only the CLI: it runs the runbooks of the collection installed with
`ansible-galaxy collection install` (docs/setup.md), found where ansible-playbook would find it
(ANSIBLE_COLLECTIONS_PATH, ansible.cfg's collections_path, the defaults, then sys.path).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from knowngood.errors import KnowngoodError

CHECKOUT = Path(__file__).resolve().parents[2]
NAMESPACE_PATH = Path("ansible_collections") / "knowngood" / "runbooks"


def search_paths() -> list[Path]:
    """Directories that may hold ansible_collections/, in ansible-playbook's order."""
    paths = [p for p in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep) if p]
    try:
        from ansible import constants

        paths += list(constants.COLLECTIONS_PATHS or [])
    except Exception:  # ansible-core missing or its configuration unreadable: the defaults
        paths += ["~/.ansible/collections", "/usr/share/ansible/collections"]
    paths += sys.path
    return [Path(p).expanduser() for p in paths if p]


def root() -> Path:
    """The collection's directory (galaxy.yml or MANIFEST.json, playbooks/, roles/, plugins/)."""
    if (CHECKOUT / "galaxy.yml").is_file() and (CHECKOUT / "playbooks").is_dir():
        return CHECKOUT
    for base in search_paths():
        candidate = base / NAMESPACE_PATH
        if (candidate / "MANIFEST.json").is_file() and (candidate / "playbooks").is_dir():
            return candidate.resolve()
    raise KnowngoodError(
        "the knowngood.runbooks collection is not installed: `ansible-galaxy collection install "
        "knowngood-runbooks-<version>.tar.gz` (docs/setup.md), or set ANSIBLE_COLLECTIONS_PATH "
        "to the directory that holds ansible_collections/"
    )


def collections_dir(collection: Path | None = None) -> Path:
    """The directory holding ansible_collections/ for ANSIBLE_COLLECTIONS_PATH."""
    collection = collection or root()
    if collection == CHECKOUT:
        return CHECKOUT / "collections"  # the committed link back to this checkout
    return collection.parents[2]


def playbooks(collection: Path | None = None) -> dict[str, Path]:
    """{runbook name: playbook}: every name `knowngood run` takes, hyphen and FQCN spellings."""
    found = sorted((collection or root()).joinpath("playbooks").glob("*.yml"))
    return {p.stem: p for p in found}


def alias_target(playbook: Path) -> str:
    """The playbook an FQCN alias imports ("rollback-code.yml"), or "" for a real runbook.

    playbooks/rollback_code.yml only imports playbooks/rollback-code.yml: ansible-core's
    collection playbook names (knowngood.runbooks.rollback_code) allow no hyphen, the runbooks
    keep the hyphenated names the docs, AWX and jump hosts use.
    """
    import yaml

    plays = yaml.safe_load(playbook.read_text())
    if isinstance(plays, list) and len(plays) == 1 and isinstance(plays[0], dict):
        return str(plays[0].get("ansible.builtin.import_playbook") or "")
    return ""
