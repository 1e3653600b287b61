#!/usr/bin/python
# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: schema_migration
short_description: Bring a database schema to the revisions a release works with
version_added: "0.1.0"
description:
  - Computes the migrations needed so the live schema is one the release declares it works
    with, and applies them in one transaction (plain SQL) or through Alembic.
  - When the live schema is newer than the release supports, runs the down migrations if every
    one of them exists; otherwise fails before changing anything and names the database
    rollback runbook.
options:
  dsn:
    description: libpq connection string of the database. Never logged.
    type: str
    required: true
  engine:
    description: C(sql) for NNNN_name.up.sql/.down.sql directories, C(alembic) for Alembic.
    type: str
    choices: [sql, alembic]
    default: sql
  supported_revisions:
    description: Revisions the target release works with (its release.json C(schema)).
    type: list
    elements: str
    required: true
  migrations_dirs:
    description:
      - SQL engine only. Directories searched for migration scripts, in order. Include the
        live release's directory so down scripts of newer revisions are found.
    type: list
    elements: path
    default: []
  alembic_config:
    description: Alembic engine only. Path of alembic.ini; the DSN reaches env.py as KNOWNGOOD_DSN.
    type: path
  alembic_command:
    description: Alembic engine only. The alembic executable.
    type: path
    default: alembic
  mode:
    description:
      - C(compatible) moves the schema only when the release cannot run on it (rollbacks).
      - C(latest) also migrates up to the newest revision the release declares (deploys).
    type: str
    choices: [compatible, latest]
    default: compatible
  allow_down:
    description: Permit down migrations. When false, a needed down migration is an error.
    type: bool
    default: true
  run_id:
    description: Recorded with every applied revision.
    type: str
  restore_point:
    description:
      - Name of a restore point to create with C(pg_create_restore_point) just before
        migrating up, so the database can be brought back to the moment before the migration
        (C(playbooks/rollback-database.yml -e target_name=<name>)). Recorded with every
        revision applied (SQL engine) and named when a later rollback finds the migration
        irreversible.
      - Created only when there is something to migrate and not in check mode. When it cannot
        be created (no privilege, the server is a standby, C(wal_level=minimal)) nothing is
        migrated. The connecting role needs EXECUTE on C(pg_create_restore_point(text)).
    type: str
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - knowngood.runbooks.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
author:
  - knowngood contributors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Bring the schema back to what v1 supports
  knowngood.runbooks.schema_migration:
    dsn: "{{ code_migrations_dsn }}"
    supported_revisions: ["0001"]
    migrations_dirs:
      - /srv/app/releases/v2/migrations
      - /srv/app/releases/v1/migrations
"""

RETURN = r"""
live_revision:
  description: Newest applied revision before the call.
  returned: always
  type: str
revision_after:
  description: Newest applied revision after the call (unchanged in check mode).
  returned: always
  type: str
plan:
  description: Steps, each with revision, name, direction (up/down), reversible.
  returned: always
  type: list
  elements: dict
restore_point:
  description: Name of the restore point created before migrating, null when none was.
  returned: always
  type: str
restore_point_lsn:
  description: WAL location of that restore point, null when none was created.
  returned: always
  type: str
queries:
  description: Scripts executed, in order, for the audit trail.
  returned: always
  type: list
  elements: str
duration_ms:
  description: Wall time in milliseconds.
  returned: always
  type: int
"""

from ansible_collections.knowngood.runbooks.plugins.module_utils import module_main
from ansible_collections.knowngood.runbooks.plugins.module_utils.schema_migration import (
    ARGUMENT_SPEC,
    REQUIRED_IF,
    run,
)


def main():
    module_main.main(run, ARGUMENT_SPEC, required_if=REQUIRED_IF)


if __name__ == "__main__":
    main()
