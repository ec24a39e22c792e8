"""`python -m tests.lightning_suite.table`: the per-file table of expected.json, then the open
class-C failures grouped by cause, the largest open class-B groups (what to fix next), and the
declared differences grouped by reason.

A failure with a reason (tests/lightning_suite/overrides.py) is *declared*: a documented choice
(class C) or a name listed as out of scope (class B). --top N limits the cause lists; --write
replaces the generated part of docs/lightning-tests.md (between its two markers); --check exits 1
when that part is stale.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys

from tests.lightning_suite import EXPECTED, FILES, REPO

DOC = REPO / "docs" / "lightning-tests.md"
START, END = "<!-- lsuite-table:start -->", "<!-- lsuite-table:end -->"
HEAD = ["file", "tests", "pass Lightning", "pass distengine", "A", "B open", "B declared", "C open",
        "C declared"]
KEYS = ["run", "lightning", "distengine", "A", "B", "B*", "C", "C*"]


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
            c[r["class"] + ("*" if r.get("reason") and r["class"] != "A" else "")] += 1
    return per


def causes(data, cls, declared=False):
    groups = collections.defaultdict(list)
    for test_id, r in data["tests"].items():
        if r.get("class") == cls and bool(r.get("reason")) == declared:
            groups[r["reason"] if declared else r["cause"]].append(test_id)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def _short(ids, n=4):
    shown = ", ".join(i.split("::", 1)[1] for i in ids[:n])
    return shown + (f" (+{len(ids) - n})" if len(ids) > n else "")


def render(data, top=40) -> str:
    per = rows(data)
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    total = collections.Counter()
    for f, c in per.items():
        total.update(c)
        lines.append(f"| {f} | " + " | ".join(str(c[k]) for k in KEYS) + " |")
    lines.append("| **total** | " + " | ".join(f"**{total[k]}**" for k in KEYS) + " |")
    out = ["\n".join(lines), "", f"Reference: {data.get('lightning', '?')}.", ""]
    for cls, title in (("C", "Open class C (same API, different behaviour), by cause"),
                       ("B", "Open class B (public API missing), largest groups")):
        groups = causes(data, cls)
        out.append(f"### {title}: {sum(len(v) for _, v in groups)} tests, {len(groups)} causes")
        out.append("")
        for cause, ids in groups[:top]:
            out.append(f"- **{len(ids)}** `{cause}`")
            if cls == "C":
                out.append(f"  - {ids[0].split('::')[0][14:]}: {_short(ids)}")
        if len(groups) > top:
            out.append(f"- ... {len(groups) - top} more causes (`python -m tests.lightning_suite.table --top 0`)")
        out.append("")
    for cls, title in (("C", "Declared class C: documented choices"), ("B", "Declared class B: out of scope")):
        groups = causes(data, cls, declared=True)
        out.append(f"### {title}: {sum(len(v) for _, v in groups)} tests")
        out.append("")
        for reason, ids in groups:
            files = sorted({i.split("::")[0][14:] for i in ids})
            out.append(f"- **{len(ids)}** {reason}")
            out.append(f"  - {', '.join(files)}: {_short(ids, 3)}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def spliced(doc: str, table: str) -> str:
    if START not in doc or END not in doc:
        raise SystemExit(f"{DOC}: the markers {START} and {END} are missing")
    head, rest = doc.split(START, 1)
    return head + START + "\n" + table + END + rest.split(END, 1)[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=40, help="causes listed per class (0: all)")
    ap.add_argument("--write", action="store_true", help=f"write the table into {DOC.name}")
    ap.add_argument("--check", action="store_true", help=f"exit 1 when {DOC.name} is stale")
    args = ap.parse_args(argv)
    data = json.loads(EXPECTED.read_text())
    if args.write or args.check:
        doc = DOC.read_text()
        new = spliced(doc, render(data, top=args.top if args.top else 10**9))
        if args.check:
            ok = new == doc
            print(f"{DOC.name} is {'current' if ok else 'stale: run python -m tests.lightning_suite.table --write'}")
            return 0 if ok else 1
        DOC.write_text(new)
        print(f"wrote the table into {DOC}")
        return 0
    print(render(data, top=args.top or 10**9))
    return 0


if __name__ == "__main__":
    sys.exit(main())
