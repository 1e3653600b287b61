# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backups, WAL archiving and point-in-time recovery (private to this collection).

One owner per fact: config (the one configuration), common (the exception, hashing, WAL
names), codec (compress + encrypt), store (locations), catalog (backup.json / manifest.json:
their keys and their reading), archive (the only WAL listing and continuity check), engine
(native | pgBackRest behind one interface; PITR and verify call only it), command (how the
engines run a command), native, pgbackrest, wal (the archiver: push and fetch), tool (kg-wal's
command line), install (kg-wal's installer), verify, pitr, and module (the AnsibleModule glue).
PostgreSQL is reached through module_utils/postgres, AWS through module_utils/aws.
"""
