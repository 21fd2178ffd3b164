"""Per-team policies: ``policies/<name>.yaml``, parsed and validated once, at load.

A policy says which requests it applies to (``routes``, ``models``), how it runs
(``mode``, ``latency_budget_ms``, ``min_saving_tokens``), where question-aware
compressors get their query, and an ordered list of rules; the first rule that
matches a text part wins. Every problem is a ``file:line: message``; rules whose
selection depends on a part's age are loaded with a warning, because a part that
changes form as it ages breaks the provider's prompt cache from that part on.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from compressors.base import Compressor, OptionsError, Target
from compressors.preserve import PreserveSpec
from compressors.registry import create, names
from proxy.config.model import Config
from proxy.config.yamlsource import ConfigError, ConfigErrors, Fields, Node, default_of, load_yaml
from proxy.exchange import COMPRESSIBLE_ROUTES
from proxy.policy.compaction import Knobs

__all__ = [
    "ROLES",
    "Match",
    "Policy",
    "PolicySet",
    "QuerySpec",
    "Rule",
    "Step",
    "load_policies",
    "load_policy",
]

ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant", "tool", "function")
MODES: tuple[str, ...] = ("enforce", "shadow", "off")
# Figures from bench/replay.py (bench/RESULTS.md, "Cost truth under prompt caching").
_CACHE_WARNING = (
    "{key} changes a part's form as it ages, which breaks provider prompt caching "
    "from that part on: replaying SWE-agent traces against a prefix cache, halving tool outputs once "
    "2 turns old raised the bill by 23.7% at a 90% cached discount (and saved only 0.9% at 75%, 16.6% "
    "at 50%), while halving them when first sent saved 33.6% (36.3% at 50%); `tersegate report` flags "
    "a team whose cache-adjusted saving is negative"
)


@dataclass(frozen=True, slots=True)
class Match:
    """Which parts a rule selects. ``roles=None`` means any role."""

    roles: frozenset[str] | None = None
    min_tokens: int = 0
    max_tokens: int | None = None
    tool_names: tuple[str, ...] | None = None  # globs
    skip_last_user: bool = False
    older_than_turns: int | None = None  # at least N assistant turns followed the part


@dataclass(frozen=True, slots=True)
class Step:
    """One compressor of a rule's chain: its output is the next step's input."""

    compressor_name: str
    compressor: Compressor
    target: Target
    preserve: PreserveSpec | None


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    match: Match
    action: Literal["compress", "drop"]
    steps: tuple[Step, ...]  # applied in order; empty for drop rules
    # Stable hash of everything that shapes the output (compressors, options, targets,
    # preserve): the memo key, so an edited rule never reuses old results.
    identity: str

    @property
    def compressor_name(self) -> str:
        """``normalize``, or a chain as ``normalize>truncate``."""
        return ">".join(step.compressor_name for step in self.steps) or "drop"

    @property
    def compressor(self) -> Compressor | None:
        """The last step's compressor (the one the target applies to); None for drop rules."""
        return self.steps[-1].compressor if self.steps else None

    @property
    def target(self) -> Target | None:
        return self.steps[-1].target if self.steps else None

    @property
    def preserve(self) -> PreserveSpec | None:
        return self.steps[-1].preserve if self.steps else None


@dataclass(frozen=True, slots=True)
class QuerySpec:
    kind: Literal["last_user", "pattern"] = "last_user"
    pattern: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    file: str
    mode: Literal["enforce", "shadow", "off"] = "enforce"
    routes: tuple[str, ...] = COMPRESSIBLE_ROUTES
    models: tuple[str, ...] = ("*",)
    min_saving_tokens: int = 50
    latency_budget_ms: float = 300.0
    allow_client_override: bool = False
    retrieve: bool = False  # markers carry hash=<id>, originals are kept, tersegate_expand is offered
    query: QuerySpec = QuerySpec()
    rules: tuple[Rule, ...] = ()
    compaction: Knobs | None = None  # None: old parts keep their form (docs/compaction.md)

    def applies(self, route: str, model: str | None) -> bool:
        if not any(fnmatch.fnmatchcase(route, glob) for glob in self.routes):
            return False
        return any(fnmatch.fnmatchcase(model or "", glob) for glob in self.models)


@dataclass(frozen=True, slots=True)
class PolicySet:
    """The policies of every team, swapped as a whole on reload."""

    policies: Mapping[str, Policy] = field(default_factory=dict)
    team_policy: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[ConfigError, ...] = ()

    def for_team(self, team: str) -> Policy | None:
        name = self.team_policy.get(team)
        return self.policies.get(name) if name is not None else None


def _str_list(f: Fields, key: str, default: tuple[str, ...] | None) -> tuple[str, ...] | None:
    value = f.get(key, list, None)
    if value is None:
        return default
    if not all(isinstance(item, str) for item in value):
        node = f.node_of(key)
        f.errors.append((node or f.node).error(f"{f.what}.{key} must be a list of strings"))
        return default
    return tuple(value)


def _parse_match(node: Node | None, what: str, errors: list[ConfigError]) -> Match:
    if node is None or node.value is None:
        return Match()
    f = Fields(node, errors, what=what)
    roles = _str_list(f, "roles", None)
    if roles is not None:
        for role in roles:
            if role not in ROLES:
                at = f.node_of("roles") or node
                errors.append(at.error(f"{what}.roles: unknown role {role!r} (known: {', '.join(ROLES)})"))
    for key in ("min_tokens", "max_tokens"):
        f.check(key, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "must be >= 0")
    f.check("older_than_turns", lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1")
    match = Match(
        roles=frozenset(roles) if roles is not None else None,
        min_tokens=f.get_field(Match, "min_tokens", int),
        max_tokens=f.get_field(Match, "max_tokens", int),
        tool_names=_str_list(f, "tool_names", default_of(Match, "tool_names")),
        skip_last_user=f.get_field(Match, "skip_last_user", bool),
        older_than_turns=f.get_field(Match, "older_than_turns", int),
    )
    for key in ("older_than_turns", "skip_last_user"):
        child = f.node_of(key)
        if child is not None and child.value not in (None, False):
            errors.append(
                ConfigError(child.file, child.line, f"{what}.{key}: " + _CACHE_WARNING.format(key=key), True)
            )
    f.finish()
    return match


def _build_compressor(f: Fields, name: str, options: dict[str, Any], what: str) -> Compressor | None:
    if name not in names():
        at = f.node_of("compressor") or f.node
        f.errors.append(
            at.error(f"{what}.compressor: unknown compressor {name!r} (known: {', '.join(names())})")
        )
        return None
    try:
        return create(name, options)
    except OptionsError as exc:
        at = f.node_of("options") or f.node_of("compressor") or f.node
        f.errors.append(at.error(f"{what}.options: {exc}"))
    except ImportError as exc:
        at = f.node_of("compressor") or f.node
        f.errors.append(at.error(f"{what}.compressor: {name} is not available ({exc})"))
    return None


def _parse_target(f: Fields, compressor: str) -> Target:
    rate = f.get("rate", float, None)
    max_tokens = f.get("max_tokens", int, None)
    if rate is not None and not 0 < rate <= 1:
        f.check("rate", lambda _: False, "must be in (0, 1]")
        rate = None
    if max_tokens is not None and max_tokens < 1:
        f.check("max_tokens", lambda _: False, "must be an integer >= 1")
        max_tokens = None
    if rate is None and max_tokens is None:
        # normalize is a clean-up that ignores the budget; lossy compressors halve by default.
        rate = 1.0 if compressor == "normalize" else 0.5
    return Target(rate=rate, max_tokens=max_tokens)


def _parse_preserve(f: Fields, what: str) -> tuple[PreserveSpec | None, list[Any] | None]:
    items = f.get("preserve", list, None)
    if items is None:
        return None, None
    try:
        return PreserveSpec.parse(items), items
    except ValueError as exc:
        at = f.node_of("preserve") or f.node
        f.errors.append(at.error(f"{what}.preserve: {exc}"))
        return None, None


_Preserve = tuple[PreserveSpec | None, list[Any] | None]  # parsed, and as written (for the identity)
_SINGLE_KEYS = ("compressor", "options", "rate", "max_tokens")


def _parse_step(
    f: Fields, what: str, *, build: bool, required: bool = False, inherited: _Preserve = (None, None)
) -> tuple[Step | None, list[Any]]:
    """One compressor with its target, options and preserve, read from a rule (the single form)
    or from one of its ``steps``; and what shapes its output, for the rule's identity."""
    name = f.get("compressor", str, "normalize", required=required)
    options = f.get("options", dict, {})
    target = _parse_target(f, name)
    preserve, items = _parse_preserve(f, what)
    if items is None:
        preserve, items = inherited
    compressor = _build_compressor(f, name, options, what) if build else None
    shape = [name, options, target.rate, target.max_tokens, items]
    return (Step(name, compressor, target, preserve) if compressor is not None else None), shape


def _parse_steps(f: Fields, node: Node, what: str) -> tuple[tuple[Step, ...], list[Any]]:
    """``steps: [{compressor: normalize}, {compressor: truncate, max_tokens: 2000}]``: applied in
    order, each step's output the next one's input. A ``preserve`` on the rule is every step's default."""
    for key in _SINGLE_KEYS:
        if key in f:
            f.errors.append(f.node.error(f"{what}: {key} goes in a step when the rule has steps", key=key))
    inherited = _parse_preserve(f, what)
    if not isinstance(node.value, list) or not node.value:
        f.errors.append(node.error(f"{what}.steps must be a non-empty list of {{compressor: ...}}"))
        return (), []
    steps: list[Step] = []
    shapes: list[Any] = []
    for i, item in enumerate(node.value):
        step_what = f"{what}.steps[{i}]"
        g = Fields(item, f.errors, what=step_what)
        step, shape = _parse_step(g, step_what, build=True, required=True, inherited=inherited)
        g.finish()
        shapes.append(shape)
        if step is not None:
            steps.append(step)
    return tuple(steps), shapes


def _parse_rule(node: Node, index: int, errors: list[ConfigError]) -> Rule | None:
    f = Fields(node, errors, what=f"rules[{index}]")
    name = f.get("name", str, "", required=True)
    what = f"rules[{index}] ({name})" if name else f"rules[{index}]"
    f.what = what
    before = len([e for e in errors if not e.warning])
    action = f.get("action", str, "compress")
    f.check("action", lambda v: v in ("compress", "drop"), "must be compress or drop")
    match = _parse_match(f.node_of("match"), f"{what}.match", errors)
    steps_node = f.node_of("steps")
    if action == "drop" and match.older_than_turns is None:
        errors.append(node.error(f"{what}: action drop is only allowed with match.older_than_turns"))
    if steps_node is not None and action == "drop":
        errors.append(steps_node.error(f"{what}: a drop rule has no steps"))
    if steps_node is not None and action != "drop":
        steps, step_shapes = _parse_steps(f, steps_node, what)
        shape: list[Any] = [action, "steps", step_shapes]
    else:  # the single-compressor form (its identity as before steps existed: memo entries stay valid)
        step, step_shape = _parse_step(f, what, build=action != "drop")
        steps, shape = ((step,) if step is not None else ()), [action, *step_shape]
    f.finish()
    if len([e for e in errors if not e.warning]) > before:
        return None
    identity = hashlib.sha256(orjson.dumps(shape, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()
    return Rule(
        name=name,
        match=match,
        action="drop" if action == "drop" else "compress",
        steps=steps,
        identity=identity[:32],
    )


def _parse_query(f: Fields) -> QuerySpec:
    node = f.node_of("query")
    if node is None or node.value is None or node.value == "last_user":
        return QuerySpec()
    if not isinstance(node.value, dict):
        f.errors.append(node.error('query must be last_user or {pattern: "<regex with one group>"}'))
        return QuerySpec()
    q = Fields(node, f.errors, what="query")
    source = q.get("pattern", str, "", required=True)
    q.finish()
    if not source:
        return QuerySpec()
    try:
        pattern = re.compile(source, re.MULTILINE)
    except re.error as exc:
        f.errors.append(node.error(f"query.pattern: invalid regex: {exc}"))
        return QuerySpec()
    if pattern.groups != 1:
        f.errors.append(node.error(f"query.pattern must have exactly one group, has {pattern.groups}"))
        return QuerySpec()
    return QuerySpec(kind="pattern", pattern=pattern)


def _parse_compaction(node: Node | None, errors: list[ConfigError]) -> Knobs | None:
    """``compaction: {keep_last, keep_tokens, margin, idle_s, min_tokens, horizon, max_lines, roles,
    breakpoint}``;
    ``true`` or ``{}`` for the defaults, ``false`` (or no key) for none."""
    if node is None or node.value is None or node.value is False:
        return None
    if node.value is True:
        return Knobs()
    f = Fields(node, errors, what="compaction")

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    for key in ("keep_last", "keep_tokens", "min_tokens"):
        f.check(key, count, "must be an integer >= 0")
    for key in ("horizon", "max_lines"):
        f.check(key, lambda v: count(v) and v >= 1, "must be an integer >= 1")
    f.check(
        "margin", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "must be > 0"
    )
    f.check(
        "idle_s", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "must be > 0"
    )
    f.check("breakpoint", lambda v: isinstance(v, bool), "must be true or false")
    roles = _str_list(f, "roles", None)
    for role in roles or ():
        if role not in ROLES:
            at = f.node_of("roles") or node
            errors.append(at.error(f"compaction.roles: unknown role {role!r} (known: {', '.join(ROLES)})"))
    idle = f.get("idle_s", float, None)
    knobs = Knobs(
        roles=frozenset(roles) if roles is not None else default_of(Knobs, "roles"),
        idle_s=float(idle) if idle is not None else None,
        keep_last=f.get_field(Knobs, "keep_last", int),
        keep_tokens=f.get_field(Knobs, "keep_tokens", int),
        margin=f.get_field(Knobs, "margin", float),
        min_tokens=f.get_field(Knobs, "min_tokens", int),
        horizon=f.get_field(Knobs, "horizon", int),
        max_lines=f.get_field(Knobs, "max_lines", int),
        breakpoint=f.get_field(Knobs, "breakpoint", bool),
    )
    f.finish()
    return knobs


def _parse_rules(f: Fields) -> tuple[Rule, ...]:
    node = f.node_of("rules")
    if node is None or node.value is None:
        f.errors.append(f.node.error("policy: missing required key 'rules' (use rules: [] for none)"))
        return ()
    if not isinstance(node.value, list):
        f.errors.append(node.error("rules must be a list"))
        return ()
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(node.value):
        name_node = item.value.get("name") if isinstance(item.value, dict) else None
        if name_node is not None and name_node.value in seen:
            f.errors.append(name_node.error(f"rules[{i}]: duplicate rule name {name_node.value!r}"))
        elif name_node is not None:
            seen.add(name_node.value)
        rule = _parse_rule(item, i, f.errors)
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


def _parse_mode(f: Fields) -> Literal["enforce", "shadow", "off"]:
    """``mode``; YAML 1.1 reads an unquoted ``off`` as false, which means off here."""
    mode = f.get("mode", (str, bool), default_of(Policy, "mode"))
    if mode is False:
        return "off"
    if mode is True:
        f.check("mode", lambda v: False, 'must be enforce, shadow or off (quote it: mode: "off")')
        return default_of(Policy, "mode")  # type: ignore[no-any-return]
    f.check("mode", lambda v: v in MODES, "must be enforce, shadow or off")
    return "off" if mode == "off" else "shadow" if mode == "shadow" else "enforce"


def _parse_policy(root: Node, errors: list[ConfigError], *, expected_name: str | None) -> Policy:
    f = Fields(root, errors, what="policy")
    name = f.get("name", str, "", required=True)
    if expected_name is not None and name and name != expected_name:
        errors.append(
            root.error(f"policy name {name!r} must match its file name {expected_name!r}", key="name")
        )
    mode = _parse_mode(f)
    f.check("min_saving_tokens", lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0")
    f.check("latency_budget_ms", lambda v: isinstance(v, (int, float)) and v > 0, "must be > 0")
    routes = _str_list(f, "routes", default_of(Policy, "routes")) or ()
    for route in routes:
        if not any(fnmatch.fnmatchcase(r, route) for r in COMPRESSIBLE_ROUTES):
            at = f.node_of("routes") or root
            errors.append(
                ConfigError(at.file, at.line, f"policy.routes: {route!r} matches no compressible route", True)
            )
    policy = Policy(
        name=name,
        file=root.file,
        mode=mode,
        routes=routes,
        models=_str_list(f, "models", default_of(Policy, "models")) or (),
        min_saving_tokens=f.get_field(Policy, "min_saving_tokens", int),
        latency_budget_ms=f.get_field(Policy, "latency_budget_ms", float),
        allow_client_override=f.get_field(Policy, "allow_client_override", bool),
        retrieve=f.get_field(Policy, "retrieve", bool),
        query=_parse_query(f),
        rules=_parse_rules(f),
        compaction=_parse_compaction(f.node_of("compaction"), errors),
    )
    f.finish()
    return policy


def load_policy(path: Path, *, expected_name: str | None = None) -> tuple[Policy, list[ConfigError]]:
    """Load one policy file; return it with its warnings, raise :class:`ConfigErrors` on errors."""
    root = load_yaml(path)
    errors: list[ConfigError] = []
    policy = _parse_policy(root, errors, expected_name=expected_name)
    if any(not e.warning for e in errors):
        raise ConfigErrors(errors)
    return policy, errors


def load_policies(config: Config, *, all_files: bool = False) -> PolicySet:
    """Load every policy referenced by ``teams.<team>.policy`` (and, with
    ``all_files``, every ``*.yaml`` in ``policies_dir``, as ``tersegate check`` does).

    Raises :class:`ConfigErrors` with every error (warnings included) if any."""
    errors: list[ConfigError] = []
    policies: dict[str, Policy] = {}
    wanted: dict[str, Path] = {}
    for team in config.teams.values():
        if team.policy is None:
            continue
        path = config.policies_dir / f"{team.policy}.yaml"
        if not path.is_file():
            line = config.team_lines.get(team.name, 0)
            errors.append(
                ConfigError(str(config.path), line, f"teams.{team.name}.policy: policy file {path} not found")
            )
            continue
        wanted[team.policy] = path
    if all_files and config.policies_dir.is_dir():
        for path in sorted(config.policies_dir.glob("*.yaml")):
            wanted.setdefault(path.stem, path)
    for name, path in wanted.items():
        try:
            policy, found = load_policy(path, expected_name=name)
        except ConfigErrors as exc:
            errors.extend(exc.errors)
            continue
        errors.extend(found)
        policies[name] = policy
    if any(not e.warning for e in errors):
        raise ConfigErrors(errors)
    team_policy = {t.name: t.policy for t in config.teams.values() if t.policy is not None}
    return PolicySet(policies=policies, team_policy=team_policy, warnings=tuple(errors))
