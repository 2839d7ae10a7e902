"""What the revision's Python source says when the offline SQL cannot: CONCURRENTLY calls
outside ``autocommit_block()`` and the waivers the revision declares."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_hokmdb.migration.lint.findings import (
    MIN_REASON_WORDS,
    WAIVERS_NAME,
)


@dataclass(frozen=True)
class _SourceFacts:
    waivers: dict[str, str]
    waiver_problems: list[tuple[str, str, int]]  # (rule, problem, line)
    concurrently_outside_block: list[int]  # lines in upgrade()


def _is_autocommit_with(node: ast.With | ast.AsyncWith) -> bool:
    for item in node.items:
        call = item.context_expr
        if isinstance(call, ast.Call):
            func = call.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == "autocommit_block":
                return True
    return False


def _concurrent_calls_outside_block(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[int]:
    lines: list[int] = []

    def visit(node: ast.AST, inside: bool) -> None:
        if isinstance(node, (ast.With, ast.AsyncWith)) and _is_autocommit_with(node):
            inside = True
        if isinstance(node, ast.Call) and not inside:
            for kw in node.keywords:
                if (
                    kw.arg == "postgresql_concurrently"
                    and isinstance(kw.value, ast.Constant)
                    and kw.value.value is True
                ):
                    lines.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    for stmt in function.body:
        visit(stmt, False)
    return lines


def _read_source(path: Path) -> _SourceFacts:
    tree = ast.parse(path.read_text(), filename=str(path))
    waivers: dict[str, str] = {}
    problems: list[tuple[str, str, int]] = []
    concurrent: list[int] = []
    for node in tree.body:
        target_value: tuple[ast.expr, ast.expr | None] | None = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target_value = (node.targets[0], node.value)
        elif isinstance(node, ast.AnnAssign):
            target_value = (node.target, node.value)
        if target_value and isinstance(target_value[0], ast.Name) and target_value[0].id == WAIVERS_NAME:
            value = target_value[1]
            try:
                literal: Any = ast.literal_eval(value) if value is not None else None
            except (ValueError, TypeError, SyntaxError):
                literal = None
            if not isinstance(literal, dict):
                problems.append(
                    ("*", f"{WAIVERS_NAME} must be a literal dict of rule name -> reason", node.lineno)
                )
                continue
            for rule, reason in literal.items():
                if not isinstance(rule, str):
                    problems.append((str(rule), "a waiver's key must be the rule's name", node.lineno))
                elif not isinstance(reason, str) or len(reason.split()) < MIN_REASON_WORDS:
                    problem = (
                        f"the waiver of {rule!r} has no reason ({reason!r}); say why the rule does not apply "
                        f"to this revision, in at least {MIN_REASON_WORDS} words"
                    )
                    problems.append((rule, problem, node.lineno))
                else:
                    waivers[rule] = reason.strip()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "upgrade":
            concurrent = _concurrent_calls_outside_block(node)
    return _SourceFacts(waivers, problems, concurrent)


def revision_waivers(path: Path) -> dict[str, str]:
    """The revision's waivers (``hokmdb_lint_waivers = {rule: reason}``) that carry a reason:
    the same dict waives lint rules and the suite's own rules for that revision."""
    return dict(_read_source(path).waivers)
