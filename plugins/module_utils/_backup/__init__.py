# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backups, WAL archiving and point-in-time recovery (private to this collection).

One owner per fact: config (the one configuration), common (the exception, hashing, WAL
names), codec (compress + encrypt), store (locations), catalog (the only reader and writer of
backup.json / manifest.json), archive (the only WAL listing and continuity check), engine
(native | pgBackRest behind one interface), native, pgbackrest, wal (the archiver: push and
fetch), tool (the installed kg-wal command and its installer), verify, pitr, and module (the
AnsibleModule glue).
"""
