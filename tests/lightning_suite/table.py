"""`python -m tests.lightning_suite.table`: the per-file table of expected.json, then the class-C
failures grouped by cause and the largest class-B groups (what to fix next).

--markdown prints markdown (for docs/incoming/gate.md); --top N limits the cause lists.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys

from tests.lightning_suite import EXPECTED, FILES


def rows(data):
    per = {f: collections.Counter() for f in FILES}
    for test_id, r in data["tests"].items():
        f = test_id.split("::")[0][len("tests_pytorch/"):]
        if f not in per:
            continue
        c = per[f]
        c["run"] += 1
        c["lightning"] += r["lightning"] == "passed"
        c["distengine"] += r.get("distengine") == "passed"
        if r.get("class"):
            c[r["class"]] += 1
    return per


def causes(data, cls):
    groups = collections.defaultdict(list)
    for test_id, r in data["tests"].items():
        if r.get("class") == cls:
            groups[r["cause"]].append(test_id)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def render(data, top=40) -> str:
    per = rows(data)
    head = ["file", "tests", "pass Lightning", "pass distengine", "A", "B", "C"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    total = collections.Counter()
    for f, c in per.items():
        total.update(c)
        lines.append(f"| {f} | {c['run']} | {c['lightning']} | {c['distengine']} | {c['A']} | {c['B']} | {c['C']} |")
    lines.append(f"| **total** | {total['run']} | {total['lightning']} | {total['distengine']} | {total['A']} | "
                 f"{total['B']} | {total['C']} |")
    out = ["\n".join(lines), "", f"Reference: {data.get('lightning', '?')}.", ""]
    for cls, title in (("C", "Class C (same API, different behaviour), by cause"),
                       ("B", "Class B (public API missing), largest groups")):
        groups = causes(data, cls)
        out.append(f"### {title}: {sum(len(v) for _, v in groups)} tests, {len(groups)} causes")
        out.append("")
        for cause, ids in groups[:top]:
            out.append(f"- **{len(ids)}** `{cause}`")
            if cls == "C":
                shown = ", ".join(i.split("::", 1)[1] for i in ids[:4])
                more = f" (+{len(ids) - 4})" if len(ids) > 4 else ""
                out.append(f"  - {ids[0].split('::')[0][14:]}: {shown}{more}")
        if len(groups) > top:
            out.append(f"- ... {len(groups) - top} more causes (`python -m tests.lightning_suite.table --top 0`)")
        out.append("")
    declared = [(i, r) for i, r in data["tests"].items() if r.get("reason")]
    if declared:
        out.append("### Declared differences (overrides.py)")
        out.append("")
        out += [f"- `{i}` ({r['class']}): {r['reason']}" for i, r in declared]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=40, help="causes listed per class (0: all)")
    args = ap.parse_args(argv)
    data = json.loads(EXPECTED.read_text())
    print(render(data, top=args.top or 10**9))
    return 0


if __name__ == "__main__":
    sys.exit(main())
