"""The indices a query-language statement reads: SQL (both engines), ES|QL (Elasticsearch) and PPL
(OpenSearch), told from the statement's text so that a tenant's grants apply to them as to a search.

Only what can be told for certain: a statement whose sources cannot be read from its text (a join, a
subquery, a lookup) raises Undetermined, and tenants.py refuses it rather than guess.
"""
from __future__ import annotations

import re

from .esapi import _clip

class Undetermined(Exception):
    """The indices a query-language statement reads cannot be told from its text."""


# SQL: '...' literals, "..." and `...` identifiers, words (unquoted table names allow - . * : @), one-char punctuation
_SQL_TOKEN = re.compile(r"""\s*(?:('(?:[^']|'')*')|("(?:[^"]|"")*")|(`(?:[^`]|``)*`)|([A-Za-z0-9_@*.:\-]+)|(\S))""")
_BLANK = re.compile(r"\s*\Z")
_SQL_CLAUSES = frozenset({"WHERE", "GROUP", "ORDER", "LIMIT", "HAVING"})
_SQL_REFUSED = frozenset({"JOIN", "UNION", "INTERSECT", "EXCEPT", "MINUS", "WITH"})


def _sql_tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) with kind in str / id / word / punct; Undetermined for comments or an unclosed quote."""
    tokens: list[tuple[str, str]] = []
    pos, end = 0, len(text)
    while pos < end:
        if _BLANK.match(text, pos):
            break
        m = _SQL_TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise Undetermined("unreadable statement")
        pos = m.end()
        lit, dq, bq, word, punct = m.groups()
        if lit is not None:
            tokens.append(("str", lit))
        elif dq is not None:
            tokens.append(("id", dq[1:-1].replace('""', '"')))
        elif bq is not None:
            tokens.append(("id", bq[1:-1].replace("``", "`")))
        elif word is not None:
            if "--" in word:
                raise Undetermined("comments are not read")
            tokens.append(("word", word))
        else:
            if punct in ("'", '"', "`"):
                raise Undetermined("an unclosed quote")
            if punct == "/" and text.startswith("/*", pos - 1):
                raise Undetermined("comments are not read")
            tokens.append(("punct", punct))
    return tokens


def sql_indices(query: str) -> tuple[str, ...]:
    """The indices a `SELECT ... FROM a[, b] [[AS] x] [WHERE|GROUP|ORDER|LIMIT|HAVING ...]` statement reads.

    Raises Undetermined for anything else: subqueries, joins, unions, a second FROM (even in
    EXTRACT(... FROM ...)), SHOW/DESCRIBE, comments. Deny by default: a statement this cannot read is
    one the proxy cannot vouch for.
    """
    tokens = _sql_tokens(query)
    words = [t.upper() for k, t in tokens if k == "word"]
    if not tokens or tokens[0][0] != "word" or tokens[0][1].upper() != "SELECT":
        raise Undetermined("only SELECT statements are read")
    if words.count("SELECT") != 1 or words.count("FROM") != 1 or _SQL_REFUSED.intersection(words):
        raise Undetermined("subqueries, joins, unions and a second FROM are not read")
    at = next(i for i, (k, t) in enumerate(tokens) if k == "word" and t.upper() == "FROM") + 1
    names: list[str] = []
    while True:
        if at >= len(tokens) or tokens[at][0] not in ("word", "id") or tokens[at][1].upper() in _SQL_CLAUSES:
            raise Undetermined("FROM names no table")
        names.extend(n.strip() for n in tokens[at][1].split(","))
        at += 1
        if at < len(tokens) and tokens[at] == ("punct", ","):
            at += 1
            continue
        break
    if at < len(tokens) and tokens[at][0] in ("word", "id") and tokens[at][1].upper() not in _SQL_CLAUSES:
        if tokens[at][1].upper() == "AS":
            at += 1
        at += 1  # the table alias
    if at < len(tokens) and not (tokens[at][0] == "word" and tokens[at][1].upper() in _SQL_CLAUSES) \
            and tokens[at] != ("punct", ";"):
        raise Undetermined("something other than a clause follows the FROM list")
    if tokens[-1] == ("punct", ";") and tokens.count(("punct", ";")) == 1:
        pass
    elif ("punct", ";") in tokens:
        raise Undetermined("more than one statement")
    return tuple(names)


_ESQL_STRING = re.compile(r'"""(?:.|\n)*?"""|"(?:[^"\\\n]|\\.)*"')
_ESQL_REFUSED = frozenset({"ENRICH", "LOOKUP", "JOIN", "FROM", "TS", "METRICS", "FORK", "SUBQUERY"})


def esql_indices(query: str) -> tuple[str, ...]:
    """The indices of an ES|QL `FROM a[,b] [METADATA f, ...] | ...` query.

    Raises Undetermined when another command could read more: ENRICH, LOOKUP JOIN, a FROM or
    TS anywhere else, options after the source list, comments, or a first command other than FROM.
    """
    strings: list[str] = []

    def hide(m: re.Match[str]) -> str:
        strings.append(m.group(0))
        return f" \x00{len(strings) - 1} "

    text = _ESQL_STRING.sub(hide, query)
    if '"' in text or "//" in text or "/*" in text:
        raise Undetermined("comments or an unclosed string")
    source, _, rest = text.partition("|")
    words = source.replace(",", " , ").split()
    if not words or words[0].upper() != "FROM":
        raise Undetermined("only queries that start with FROM are read")
    names: list[str] = []
    expect_name = True
    at = 1
    while at < len(words):
        word = words[at]
        if expect_name:
            if word.startswith("\x00"):
                lit = strings[int(word[1:])]
                names.extend(n.strip() for n in lit.strip('"').split(","))
            elif word == "," or "(" in word or ")" in word or "[" in word:
                raise Undetermined("a source list that is not plain names")
            else:
                names.append(word)
            expect_name = False
        elif word == ",":
            expect_name = True
        elif word.upper() == "METADATA":
            if any(w.upper() in _ESQL_REFUSED or "(" in w for w in words[at + 1:]):
                raise Undetermined("METADATA followed by something else")
            break
        else:
            raise Undetermined(f"[{_clip(word)}] after the source list")
        at += 1
    if expect_name:
        raise Undetermined("FROM names no index")
    for word in re.findall(r"[A-Za-z_]+", rest):
        if word.upper() in _ESQL_REFUSED:
            raise Undetermined(f"[{word}] can read other indices")
    return tuple(names)


_PPL_HEAD = re.compile(r"\s*(?:search\s+)?source\s*=\s*", re.IGNORECASE)
_PPL_NAME = re.compile(r"`([^`]*)`|([^\s,|`\[\]()=]+)")
_PPL_REFUSED = frozenset({"SOURCE", "INDEX", "JOIN", "LOOKUP", "APPEND", "APPENDCOL", "APPENDPIPE", "SUBSEARCH"})


def ppl_indices(query: str) -> tuple[str, ...]:
    """The indices of an OpenSearch PPL `[search] source=a[, b] ...` query; Undetermined for subsearches and joins."""
    m = _PPL_HEAD.match(query)
    if m is None:
        raise Undetermined("only queries that start with source= are read")
    rest = query[m.end():]
    names: list[str] = []
    while True:
        name = _PPL_NAME.match(rest)
        if name is None:
            raise Undetermined("source= names no index")
        names.extend(n.strip() for n in (name.group(1) if name.group(1) is not None else name.group(2)).split(","))
        rest = rest[name.end():]
        comma = re.match(r"\s*,\s*", rest)
        if comma is None:
            break
        rest = rest[comma.end():]
    if rest and not rest[0].isspace() and rest[0] != "|":
        raise Undetermined("something other than a command follows the source list")
    if "[" in rest or "`" in rest:
        raise Undetermined("subsearches and quoted names after the source are not read")
    for word in re.findall(r"[A-Za-z_]+", rest):
        if word.upper() in _PPL_REFUSED:
            raise Undetermined(f"[{word}] can read other indices")
    return tuple(names)
