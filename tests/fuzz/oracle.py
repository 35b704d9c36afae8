"""What tenant acme (patterns acme-*, shared-acme) may touch, written without proxy/tenants.py.

The fuzz targets judge the grants by this second, independent reading of the rules.
"""
from __future__ import annotations

import re

#: what an unnamed target reaches when nothing else names it: every index (the oracle never allows it)
EVERYTHING = ["<everything>"]


def allowed(name: str) -> bool:
    """acme's patterns are acme-* and shared-acme; '*' never spans a remote cluster's ':'."""
    name = name.strip()
    if name.startswith("<") and name.endswith(">"):  # date math: the static part decides
        name = re.sub(r"\{.*?\}+", "*", name[1:-1])
    if any(ch in '\\/"|?#,:\u2063' or ch.isspace() or ord(ch) < 32 for ch in name):
        return False
    return name.startswith("acme-") or name == "shared-acme"


def expression_ok(names: list[str]) -> bool:
    """An ES index expression: what it includes is allowed; exclusions only after an inclusion."""
    included = False
    for part in (p.strip() for n in names for p in n.split(",")):
        if not part:
            continue
        if part.startswith("-") and included:
            continue
        if not allowed(part) or part in ("_all", "*"):
            return False
        included = True
    return included


def name_ok(name: str) -> bool:
    """One name a call creates or points at: allowed, and never an exclusion."""
    return not name.strip().startswith("-") and allowed(name)
