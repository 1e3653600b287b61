"""schema_migration with the Alembic engine, against the lab's PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import psycopg
import pytest
from conftest import BIN, REPO, ansible_env

pytestmark = pytest.mark.lab

ENV_PY = """
import os
from alembic import context
from sqlalchemy import create_engine

url = os.environ["KNOWNGOOD_DSN"].replace("postgresql://", "postgresql+psycopg://", 1)
if context.is_offline_mode():
    context.configure(url=url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    with create_engine(url).connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
"""

REVISIONS = {
    "a1": (
        None,
        "op.create_table('widgets', sa.Column('id', sa.Integer, primary_key=True))",
        "op.drop_table('widgets')",
    ),
    "b2": (
        "a1",
        "op.add_column('widgets', sa.Column('colour', sa.Text))",
        "op.drop_column('widgets', 'colour')",
    ),
    "c3": (
        "b2",
        "op.drop_column('widgets', 'colour')",
        "raise NotImplementedError('the colours are gone')",
    ),
}


@pytest.fixture
def alembic_project(tmp_path):
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text(ENV_PY)
    (tmp_path / "alembic.ini").write_text(f"[alembic]\nscript_location = {tmp_path}\n")
    for rev, (down, up_body, down_body) in REVISIONS.items():
        (tmp_path / "versions" / f"{rev}.py").write_text(
            textwrap.dedent(f"""
            import sqlalchemy as sa
            from alembic import op

            revision = {rev!r}
            down_revision = {down!r}


            def upgrade():
                {up_body}


            def downgrade():
                {down_body}
            """)
        )
    return tmp_path


def migrate(lab, project, supported, mode="compatible", check=False):
    playbook = project / "migrate.yml"
    playbook.write_text(
        json.dumps(
            [
                {
                    "name": "Migrate",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "vars": {"ansible_python_interpreter": sys.executable},
                    "tasks": [
                        {
                            "name": "Migrate with Alembic",
                            "knowngood.runbooks.schema_migration": {
                                "dsn": "{{ lookup('ansible.builtin.env', 'TEST_DSN') }}",
                                "engine": "alembic",
                                "supported_revisions": supported,
                                "mode": mode,
                                "alembic_config": str(project / "alembic.ini"),
                                "alembic_command": str(BIN / "alembic"),
                            },
                        }
                    ],
                }
            ]
        )
    )
    env = ansible_env(lab.root)
    env["TEST_DSN"] = lab.status["postgres"]["primary_dsn"]
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook), "-v"]
    if check:
        argv.append("--check")
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def live_revision(lab):
    with psycopg.connect(lab.status["postgres"]["primary_dsn"]) as conn:
        return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def test_alembic_up_then_reversible_down(lab, alembic_project):
    rc, out = migrate(lab, alembic_project, ["a1", "b2"], mode="latest")
    assert rc == 0, out
    assert live_revision(lab) == "b2"
    rc, out = migrate(lab, alembic_project, ["a1"], check=True)
    assert rc == 0 and live_revision(lab) == "b2"  # check mode plans only
    rc, out = migrate(lab, alembic_project, ["a1"])
    assert rc == 0, out
    assert live_revision(lab) == "a1"
    assert lab.status["postgres"]["primary_dsn"] not in out  # the DSN is no_log


def test_alembic_irreversible_downgrade_is_refused_before_anything_runs(lab, alembic_project):
    rc, out = migrate(lab, alembic_project, ["c3"], mode="latest")
    assert rc == 0, out
    rc, out = migrate(lab, alembic_project, ["a1", "b2"])
    assert rc != 0
    assert "cannot be undone" in out and "playbooks/rollback-database.yml" in out
    assert live_revision(lab) == "c3"
