# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The governance policy: the controller-side trust root the approval gate reads.

Approvals required, the decision matrix, the allowed_signers file, the approvers and the AWX
host and team mapping live in a root-owned file outside inventories and playbooks, because
Ansible variables (extra vars above all) can be replaced by whoever starts the run. Variables
may only make the policy stricter; `tighten` refuses, naming the variable, any that would
loosen it.

Where the policy is: /etc/knowngood/policy.yml. Without it, KNOWNGOOD_POLICY_FILE, else
$KNOWNGOOD_LAB_DIR/governance/policy.yml (what `knowngood lab up` writes). Such a file, the
allowed_signers file it names and the state directory must be root-owned, in directories
owned by root that nobody else can write (sticky root-owned directories like /tmp allowed),
so a user who is not root cannot make a looser one count. When the fixed path exists it is
the policy: an environment pointing elsewhere is refused.
"""

import hashlib
import json
import os
import stat

FIXED_PATH = "/etc/knowngood/policy.yml"
DEFAULT_STATE_DIR = "/var/lib/knowngood"
ROLES = ("team_lead", "cto", "infra_lead")
SEVERITIES = ("low", "medium", "high")
KEYS = (
    "version",
    "approval_required",
    "decision_matrix",
    "allowed_signers_file",
    "approvers",
    "awx",
    "state_dir",
    "break_glass",
)
DEFAULT_ESCALATE_AFTER_H = 24.0


class PolicyError(Exception):
    """No usable policy, or a variable that would loosen it; the message says which."""


def _check_owner(path, st, is_dir):
    kind = "directory" if is_dir else "file"
    if st.st_uid != 0:
        raise PolicyError("%s %s is owned by uid %d, not root" % (kind, path, st.st_uid))
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and not (is_dir and st.st_mode & stat.S_ISVTX):
        raise PolicyError(
            "%s %s is writable by group or others (mode %o)" % (kind, path, st.st_mode & 0o7777)
        )


def check_secure(path, is_dir=False):
    """Raise PolicyError unless only root can change `path` or replace it (every parent too)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise PolicyError("%s: %s" % (path, exc.strerror)) from None
    if is_dir != stat.S_ISDIR(st.st_mode):
        raise PolicyError("%s is not a %s" % (path, "directory" if is_dir else "regular file"))
    _check_owner(real, st, is_dir)
    parent = os.path.dirname(real)
    while True:
        _check_owner(parent, os.stat(parent), True)
        if parent == os.path.dirname(parent):
            return real
        parent = os.path.dirname(parent)


def locate(environ=None, fixed_path=FIXED_PATH):
    """(path, how it was chosen) of the policy to read, or (None, why there is none)."""
    environ = os.environ if environ is None else environ
    wanted = environ.get("KNOWNGOOD_POLICY_FILE") or ""
    if os.path.lexists(fixed_path):
        if wanted and os.path.realpath(wanted) != os.path.realpath(fixed_path):
            raise PolicyError(
                "KNOWNGOOD_POLICY_FILE=%s is refused: %s exists and is the policy on this "
                "controller" % (wanted, fixed_path)
            )
        return fixed_path, "fixed"
    if wanted:
        return wanted, "KNOWNGOOD_POLICY_FILE"
    lab = environ.get("KNOWNGOOD_LAB_DIR") or ""
    if lab and os.path.exists(os.path.join(lab, "governance", "policy.yml")):
        return os.path.join(lab, "governance", "policy.yml"), "KNOWNGOOD_LAB_DIR"
    return None, "%s does not exist (and KNOWNGOOD_POLICY_FILE is not set)" % fixed_path


def _validate(doc, path):
    if not isinstance(doc, dict):
        raise PolicyError("%s is not a mapping" % path)
    unknown = sorted(set(doc) - set(KEYS))
    if unknown:
        raise PolicyError("%s: unknown keys %s" % (path, unknown))
    if not isinstance(doc.get("approval_required", True), bool):
        raise PolicyError("%s: approval_required must be true or false" % path)
    matrix = doc.get("decision_matrix")
    if not isinstance(matrix, dict) or set(matrix) != set(SEVERITIES):
        raise PolicyError("%s: decision_matrix needs exactly low, medium and high" % path)
    for severity, row in matrix.items():
        roles = (row or {}).get("approvals") if isinstance(row, dict) else None
        if not isinstance(roles, list) or [r for r in roles if r not in ROLES]:
            raise PolicyError(
                "%s: decision_matrix.%s.approvals must list roles of %s"
                % (path, severity, ", ".join(ROLES))
            )
    approvers = doc.get("approvers")
    if not isinstance(approvers, dict):
        raise PolicyError("%s: approvers must map each signer to {roles, email}" % path)
    for name, entry in approvers.items():
        if not isinstance(entry, dict) or [r for r in entry.get("roles") or [] if r not in ROLES]:
            raise PolicyError("%s: approvers.%s.roles must list roles of %s" % (path, name, ROLES))
    if not doc.get("allowed_signers_file"):
        raise PolicyError("%s: allowed_signers_file is required" % path)
    escalation = doc.get("break_glass") or {}
    if not isinstance(escalation, dict) or set(escalation) - {"escalate_after_hours"}:
        raise PolicyError("%s: break_glass must be {escalate_after_hours: N}" % path)
    after = escalation.get("escalate_after_hours", DEFAULT_ESCALATE_AFTER_H)
    if isinstance(after, bool) or not isinstance(after, (int, float)) or not 0 < after <= 720:
        raise PolicyError(
            "%s: break_glass.escalate_after_hours must be a number of hours, 0 < N <= 720" % path
        )
    awx = doc.get("awx") or {}
    if not isinstance(awx, dict) or not isinstance(awx.get("role_teams", {}), dict):
        raise PolicyError("%s: awx must be {host, role_teams, validate_certs}" % path)


def load(environ=None, fixed_path=FIXED_PATH):
    """The policy as a dict with `path`, `source` and `digest` (sha256 of the file's bytes).

    Raises PolicyError naming the path when there is none or it cannot be trusted."""
    import yaml  # the controller's; this runs in the action plugin only

    path, how = locate(environ, fixed_path)
    if path is None:
        raise PolicyError("no governance policy: %s" % how)
    real = check_secure(path)
    with open(real, "rb") as handle:
        data = handle.read()
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise PolicyError("%s is not valid YAML: %s" % (path, exc)) from None
    _validate(doc, path)
    signers = check_secure(doc["allowed_signers_file"])
    with open(signers, "rb") as handle:
        signers_digest = hashlib.sha256(handle.read()).hexdigest()
    policy = {
        "approval_required": doc.get("approval_required", True),
        "decision_matrix": doc["decision_matrix"],
        "allowed_signers_file": signers,
        "approvers": doc["approvers"],
        "awx": {
            "host": str((doc.get("awx") or {}).get("host") or ""),
            "role_teams": dict((doc.get("awx") or {}).get("role_teams") or {}),
            "validate_certs": bool((doc.get("awx") or {}).get("validate_certs", True)),
        },
        "state_dir": str(doc.get("state_dir") or DEFAULT_STATE_DIR),
        "break_glass_escalate_after_h": float(
            (doc.get("break_glass") or {}).get("escalate_after_hours", DEFAULT_ESCALATE_AFTER_H)
        ),
        "path": real,
        "source": how,
        "digest": hashlib.sha256(data).hexdigest(),
        "allowed_signers_digest": signers_digest,
    }
    return policy


def _roles(row):
    return set((row or {}).get("approvals") or []) if isinstance(row, dict) else None


def _same(a, b):
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def tighten(policy, required=None, matrix=None, approvers=None, allowed_signers_file="", awx=None):
    """The effective settings: the policy, made stricter by variables, never looser.

    Each argument is what the variables said (None or empty: nothing, the policy decides).
    Raises PolicyError naming the variable for anything that would loosen the policy."""
    loosen = []
    effective = {
        "required": policy["approval_required"],
        "matrix": policy["decision_matrix"],
        "approvers": policy["approvers"],
        "allowed_signers_file": policy["allowed_signers_file"],
        "awx": dict(policy["awx"]),
    }
    if required is not None:
        if required:
            effective["required"] = True
        elif policy["approval_required"]:
            loosen.append(
                "approval_gate_required (knowngood_approval_required)=false: the policy "
                "requires approvals"
            )
    if matrix:
        rows = dict((s, _roles(matrix.get(s))) for s in SEVERITIES)
        weaker = [
            s
            for s in SEVERITIES
            if rows[s] is None or not rows[s] >= _roles(policy["decision_matrix"][s])
        ]
        if weaker:
            loosen.append(
                "approval_gate_matrix (knowngood_decision_matrix) requires fewer approvals than "
                "the policy for %s" % ", ".join(weaker)
            )
        else:
            effective["matrix"] = matrix
    if approvers:
        extra = []
        for name, entry in sorted(approvers.items()):
            mine = set((entry or {}).get("roles") or []) if isinstance(entry, dict) else None
            theirs = set((policy["approvers"].get(name) or {}).get("roles") or [])
            if name not in policy["approvers"] or mine is None or not mine <= theirs:
                extra.append(name)
        if extra:
            loosen.append(
                "approval_gate_approvers (knowngood_approvers) gives roles the policy does not "
                "to %s" % ", ".join(extra)
            )
        else:
            effective["approvers"] = dict(
                (name, dict(policy["approvers"][name], roles=list(entry.get("roles") or [])))
                for name, entry in approvers.items()
            )
    if allowed_signers_file and os.path.realpath(allowed_signers_file) != os.path.realpath(
        policy["allowed_signers_file"]
    ):
        loosen.append(
            "approval_gate_allowed_signers_file (knowngood_allowed_signers_file)=%s is not the "
            "policy's %s (narrow the signers with approvers instead)"
            % (allowed_signers_file, policy["allowed_signers_file"])
        )
    for key in ("host", "role_teams"):
        given = (awx or {}).get(key)
        if given and not _same(given, policy["awx"][key]):
            loosen.append(
                "approval_gate_awx.%s (knowngood_awx.%s) differs from the policy's" % (key, key)
            )
    if awx and awx.get("validate_certs") is False and policy["awx"]["validate_certs"]:
        loosen.append("approval_gate_awx.validate_certs=false: the policy verifies AWX's TLS")
    if loosen:
        raise PolicyError(
            "refused: variables cannot loosen the governance policy %s (%s): %s"
            % (policy["path"], policy["digest"][:12], "; ".join(loosen))
        )
    return effective


def ensure_state_dir(policy, sub):
    """policy's state_dir/sub, made (0700) if missing; refused unless only root can change it."""
    base = policy["state_dir"]
    if not os.path.isdir(base):
        os.makedirs(base, 0o700)
    check_secure(base, is_dir=True)
    path = os.path.join(base, sub)
    if not os.path.isdir(path):
        os.mkdir(path, 0o700)
    check_secure(path, is_dir=True)
    return path


def consume(policy, request_id, entry):
    """Record that `request_id` ran; PolicyError naming when, if it already did (single use)."""
    directory = ensure_state_dir(policy, "consumed")
    path = os.path.join(directory, "%s.json" % request_id)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise _used(request_id, consumed(policy, request_id) or {}) from None
    with os.fdopen(fd, "w") as handle:
        json.dump(dict(entry, request_id=request_id), handle, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    return path


def check_unused(policy, request_id):
    """consume's refusal without recording anything (check mode)."""
    before = consumed(policy, request_id)
    if before is not None:
        raise _used(request_id, before)


def _used(request_id, before):
    return PolicyError(
        "request %s was already used at %s by %s (run %s): a signed request runs once"
        % (
            request_id[:12],
            before.get("consumed_at", "?"),
            before.get("executed_by", "?"),
            before.get("run_id", "?"),
        )
    )


def consumed(policy, request_id):
    """The ledger entry of a request that already ran, or None."""
    path = os.path.join(policy["state_dir"], "consumed", "%s.json" % request_id)
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None
