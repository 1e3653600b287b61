"""The governance policy: where it may come from, and variables that may only tighten it.

The tests run as root (the lab does); ownership by someone else is made with chown.
"""

from __future__ import annotations

import copy
import os

import pytest
from ansible_collections.knowngood.runbooks.plugins.module_utils import decision, policy

from knowngood.lab import governance

NOBODY = 65534


@pytest.fixture
def trusted(tmp_path):
    """A root-owned policy in root-owned directories, and its environment."""
    if os.getuid() != 0:
        pytest.skip("the policy's ownership rules are proven as root")
    os.chmod(tmp_path, 0o755)
    signers = tmp_path / "etc" / "allowed_signers"
    signers.parent.mkdir()
    signers.write_text('carla namespaces="knowngood-approval" ssh-ed25519 AAAA\n')
    path = governance.write_policy(
        tmp_path / "etc" / "policy.yml",
        governance.policy_document(signers, tmp_path / "state", required=True),
    )
    return {"path": path, "env": {"KNOWNGOOD_POLICY_FILE": str(path)}, "fixed": tmp_path / "none"}


def load(trusted):
    return policy.load(trusted["env"], fixed_path=str(trusted["fixed"]))


def test_a_root_owned_policy_loads_with_its_digest(trusted):
    loaded = load(trusted)
    assert loaded["approval_required"] is True and loaded["source"] == "KNOWNGOOD_POLICY_FILE"
    assert loaded["decision_matrix"] == decision.DEFAULT_MATRIX
    assert len(loaded["digest"]) == 64 and loaded["path"] == str(trusted["path"])


def test_no_policy_at_all_names_the_fixed_path(tmp_path):
    with pytest.raises(policy.PolicyError, match="no governance policy: .*none does not exist"):
        policy.load({}, fixed_path=str(tmp_path / "none"))


def test_a_policy_someone_else_can_change_is_refused(trusted):
    path = trusted["path"]
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(policy.PolicyError, match="owned by uid 65534, not root"):
        load(trusted)
    os.chown(path, 0, 0)
    os.chmod(path, 0o664)
    with pytest.raises(policy.PolicyError, match="writable by group or others"):
        load(trusted)
    os.chmod(path, 0o644)
    os.chown(path.parent, NOBODY, NOBODY)  # whoever owns the directory can replace the file
    with pytest.raises(policy.PolicyError, match="directory .* not root"):
        load(trusted)
    os.chown(path.parent, 0, 0)
    os.chmod(path.parent, 0o777)
    with pytest.raises(policy.PolicyError, match="directory .* writable"):
        load(trusted)
    os.chmod(path.parent, 0o1777)  # sticky and root's, like /tmp: others cannot replace it
    assert load(trusted)["approval_required"] is True


def test_a_symlink_to_a_users_file_is_judged_by_its_target(trusted, tmp_path):
    mine = tmp_path / "mine.yml"
    text = trusted["path"].read_text()
    mine.write_text(text.replace('"approval_required": true', '"approval_required": false'))
    os.chown(mine, NOBODY, NOBODY)
    link = tmp_path / "etc" / "link.yml"
    link.symlink_to(mine)
    with pytest.raises(policy.PolicyError, match="not root"):
        policy.load({"KNOWNGOOD_POLICY_FILE": str(link)}, fixed_path=str(trusted["fixed"]))


def test_an_allowed_signers_file_someone_else_can_edit_is_refused(trusted):
    signers = trusted["path"].parent / "allowed_signers"
    os.chown(signers, NOBODY, NOBODY)
    with pytest.raises(policy.PolicyError, match="allowed_signers.*not root"):
        load(trusted)


def test_the_fixed_path_wins_and_an_environment_pointing_elsewhere_is_refused(trusted, tmp_path):
    fixed = tmp_path / "etc" / "fixed.yml"
    fixed.write_text(trusted["path"].read_text())
    with pytest.raises(policy.PolicyError, match="KNOWNGOOD_POLICY_FILE=.* is refused: .*exists"):
        policy.load(trusted["env"], fixed_path=str(fixed))
    assert policy.load({}, fixed_path=str(fixed))["source"] == "fixed"
    lab = {"KNOWNGOOD_LAB_DIR": str(tmp_path / "lab")}
    assert policy.locate(lab, fixed_path=str(fixed))[1] == "fixed"  # a lab's never replaces it


def test_a_policy_with_unknown_or_missing_keys_is_refused(trusted):
    text = trusted["path"].read_text()
    trusted["path"].write_text(text.replace('"state_dir"', '"allow_anyone": true, "state_dir"'))
    with pytest.raises(policy.PolicyError, match="unknown keys"):
        load(trusted)
    trusted["path"].write_text(text.replace('"high"', '"critical"'))
    with pytest.raises(policy.PolicyError, match="exactly low, medium and high"):
        load(trusted)


def test_variables_may_tighten_the_policy(trusted):
    loaded = load(trusted)
    assert policy.tighten(loaded, required=True)["required"] is True
    loose = dict(loaded, approval_required=False)
    assert policy.tighten(loose)["required"] is False
    assert policy.tighten(loose, required=True)["required"] is True
    stricter = copy.deepcopy(decision.DEFAULT_MATRIX)
    stricter["low"]["approvals"] = ["team_lead", "cto"]
    assert policy.tighten(loaded, matrix=stricter)["matrix"]["low"]["approvals"] == [
        "team_lead",
        "cto",
    ]
    fewer = policy.tighten(loaded, approvers={"carla": {"roles": ["cto"]}})["approvers"]
    assert fewer == {"carla": {"roles": ["cto"], "email": "carla@lab.invalid"}}
    same = policy.tighten(
        loaded,
        matrix=decision.DEFAULT_MATRIX,
        approvers=governance.lab_approvers(),
        allowed_signers_file=loaded["allowed_signers_file"],
    )
    assert same["approvers"] == loaded["approvers"]


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"required": False}, r"approval_gate_required \(knowngood_approval_required\)=false"),
        (
            {
                "matrix": {
                    "low": {"approvals": []},
                    "medium": {"approvals": ["cto"]},
                    "high": {"approvals": ["cto"]},
                }
            },  # fmt: skip
            r"approval_gate_matrix .* fewer approvals than the policy for low, high",
        ),
        ({"matrix": {"high": {"approvals": ["cto", "infra_lead"]}}}, r"for low, medium"),
        ({"approvers": {"mallory": {"roles": ["cto"]}}}, r"approval_gate_approvers .* mallory"),
        ({"approvers": {"tess": {"roles": ["cto"]}}}, r"roles the policy does not to tess"),
        ({"allowed_signers_file": "/tmp/mine"}, r"approval_gate_allowed_signers_file .*/tmp/mine"),
        ({"awx": {"host": "https://evil.invalid"}}, r"approval_gate_awx.host"),
        ({"awx": {"role_teams": {"cto": "everyone"}}}, r"approval_gate_awx.role_teams"),
        ({"awx": {"validate_certs": False}}, r"validate_certs=false"),
    ],
)
def test_a_variable_that_would_loosen_the_policy_is_refused_and_named(trusted, given, named):
    loaded = load(trusted)
    loaded["awx"] = {"host": "https://awx.example", "role_teams": {"cto": "c"}}
    loaded["awx"]["validate_certs"] = True
    with pytest.raises(policy.PolicyError, match="cannot loosen the governance policy") as exc:
        policy.tighten(loaded, **given)
    assert exc.match(named)
    assert loaded["digest"][:12] in str(exc.value)


def test_a_signed_request_is_consumed_once(trusted):
    loaded = load(trusted)
    entry = {"consumed_at": "2026-12-02T10:00:00Z", "executed_by": "root", "run_id": "r1"}
    path = policy.consume(loaded, "ab" * 32, entry)
    assert policy.consumed(loaded, "ab" * 32)["run_id"] == "r1"
    assert oct(os.stat(os.path.dirname(path)).st_mode & 0o777) == "0o700"
    with pytest.raises(policy.PolicyError, match="already used at 2026-12-02T10:00:00Z by root"):
        policy.consume(loaded, "ab" * 32, dict(entry, run_id="r2"))
    assert policy.consumed(loaded, "cd" * 32) is None


def test_a_state_dir_someone_else_can_change_is_refused(trusted):
    loaded = load(trusted)
    os.makedirs(loaded["state_dir"])
    os.chown(loaded["state_dir"], NOBODY, NOBODY)  # he could delete the ledger and replay
    with pytest.raises(policy.PolicyError, match="not root"):
        policy.consume(loaded, "ef" * 32, {})
