"""Import the collection's module_utils from the CLI (the CLI may import them, not the reverse).

A checkout (editable install) finds them through the committed collections/ link beside src/;
an installed collection is found on Ansible's collections path (knowngood.collection).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

_PACKAGE = "ansible_collections.knowngood.runbooks.plugins.module_utils"


def _add_checkout_collections() -> None:
    from knowngood import collection

    where = str(collection.collections_dir())
    if where not in sys.path:
        sys.path.insert(0, where)


def module_utils(name: str) -> ModuleType:
    """module_utils(\"_backup.wal\") -> the collection's plugins/module_utils/_backup/wal.py."""
    _add_checkout_collections()
    return importlib.import_module(f"{_PACKAGE}.{name}")
