# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The batch gate: which hosts of the batch a step failed on, and why, in one line.

Each changing step registers its result with ignore_errors and then judges every host of the
batch at once, so a problem on one host stops them all. This filter is that judgement's one
copy: the roles pass it ``ansible_play_batch`` and fail with its text when it is not empty.
"""

from collections.abc import Mapping

_TRUNCATE = 300
_LEEWAY = 5  # Jinja's truncate leeway, so command output is cut where it always was


def _truncate(text, length=_TRUNCATE, end="..."):
    if len(text) <= length + _LEEWAY:
        return text
    return text[: length - len(end)].rsplit(" ", 1)[0] + end


def _refused(result):
    return bool(result.get("failed", False)) or not result.get("passed", True)


def _item_reason(item, item_keys):
    name = " ".join(str(item["item"][key]) for key in item_keys) if item_keys else str(item["item"])
    output = item["stderr"] if "stderr" in item else item.get("msg", "")
    return f"{name} exited {item.get('rc', '?')}: {_truncate(str(output).strip())} "


def _reason(result, item_keys):
    if "results" in result and item_keys is not None:
        return "".join(
            _item_reason(item, item_keys) for item in result["results"] if item.get("failed", False)
        )
    if "results" in result:  # a loop without item_keys: each failed item's own message
        failed = [str(item.get("msg", "")) for item in result["results"] if item.get("failed")]
        if failed:
            return "; ".join(failed)
    if "msg" in result:
        return f"{result['msg']}"
    return ", ".join(str(breach) for breach in result.get("breaches", []))


def batch_failures(batch, hostvars, result, item_keys=None):
    """``host: reason; `` for each host of the batch whose registered ``result`` refused.

    Refused means failed (the task ran with ignore_errors) or ``passed: false`` (a probe that
    judged without failing); the reason is the result's ``msg``, else its ``breaches``, or for
    a loop of commands named by ``item_keys`` each failed item's exit code and output.
    """
    text = ""
    for host in batch:
        registered = hostvars[host].get(result)
        if isinstance(registered, Mapping) and _refused(registered):
            text += f"{host}: {_reason(registered, item_keys)}; "
    return text


class FilterModule:
    def filters(self):
        return {"batch_failures": batch_failures}
