"""The markdown tables of bench/agent_replay.py: invoices, cached shares, facts kept, the audit beside."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from agent_replay import APIS, DISCOUNTS, PASSTHROUGH, Replay, bill, discounted, price_of

from bench.sessions.shapes import Session, anthropic_turns, openai_turns
from compressors.tokenizer import tokenizer_for
from proxy.audit.pricing import PriceBook

LOST_SHOWN = 10  # lost facts listed per policy and API; the rest counted


def pct(a: float, b: float) -> str:
    return f"{100 * (a / b - 1):+.1f}%" if b else "-"


def _sessions_table(sessions: list[Session]) -> list[str]:
    count = tokenizer_for("gpt-5").count
    out = [
        "| session | code base | steps | requests | tool output tokens | last request, gpt-5 | last request, Claude |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in sessions:
        outputs = sum(count(step["output"]) for step in s["steps"])
        last_openai = openai_turns(s, "gpt-5")[-1]
        last_claude = anthropic_turns(s, "claude-sonnet-4-5")[-1]
        sizes = [
            sum(count(str(v)) for v in (b["messages"], b.get("tools"), b.get("system")))
            for b in (last_openai, last_claude)
        ]
        out.append(
            f"| {s['name']} | {s['repo']}@{s['commit'][:10]} | {len(s['steps'])} | {len(s['steps']) + 1} | "
            f"{outputs:,} | ~{sizes[0]:,} | ~{sizes[1]:,} |"
        )
    return out


def _group(runs: list[Replay], api: str) -> dict[str, dict[str, Replay]]:
    """policy -> session -> replay, plus an ``all`` session summing every session's turns."""
    grouped: dict[str, dict[str, Replay]] = defaultdict(dict)
    for run in runs:
        if run.api != api:
            continue
        grouped[run.label][run.session] = run
    for by_session in grouped.values():  # "all" last: every session's turns together
        total = Replay("all", api, next(iter(by_session.values())).label)
        for run in by_session.values():
            total.turns += run.turns
            total.fail_open += run.fail_open
        by_session["all"] = total
    return grouped


def _openai_table(runs: list[Replay]) -> list[str]:
    price = price_of("openai")
    share = 1 - price.cached_input / price.input
    out = [
        f"Prices: input ${price.input * 1e6:.3f}/M, cached ${price.cached_input * 1e6:.4f}/M "
        f'(a {100 * share:.0f}% discount; litellm\'s map, key `{price.key}`). "before" is the passthrough '
        "replay's invoice, \"after\" the policy's.\n",
        "| session | policy | input tokens | vs passthrough | cached share | invoice before | invoice after | "
        "change | at 50% | at 75% | at 90% | facts kept | fail-open |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    grouped = _group(runs, "openai")
    for session in grouped[PASSTHROUGH]:
        base = grouped[PASSTHROUGH][session]
        for label, by_session in grouped.items():
            run = by_session[session]
            prompt, cached = run.tokens()
            before, after = bill(base, price), bill(run, price)
            at = [pct(bill(run, discounted(price, d)), bill(base, discounted(price, d))) for d in DISCOUNTS]
            kept, steps = run.facts_kept()
            out.append(
                f"| {session} | {label} | {prompt:,} | {pct(prompt, base.tokens()[0])} | "
                f"{100 * cached / prompt:.1f}% | ${before:.2f} | ${after:.2f} | {pct(after, before)} | "
                + " | ".join(at)
                + f" | {kept}/{steps} | {run.fail_open} |"
            )
    return out


def _anthropic_table(runs: list[Replay]) -> list[str]:
    price = price_of("anthropic")
    out = [
        f"Prices: input ${price.input * 1e6:.2f}/M, cache reads ${price.cached_input * 1e6:.2f}/M, 5-minute "
        f"writes ${price.cache_write_5m * 1e6:.2f}/M (litellm's map, key `{price.key}`). Breakpoints as Claude "
        "Code places them: the system prompt and the last block of the newest message.\n",
        "| session | policy | input tokens | vs passthrough | read share | written | invoice before | "
        "invoice after | change | facts kept | fail-open |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    grouped = _group(runs, "anthropic")
    for session in grouped[PASSTHROUGH]:
        base = grouped[PASSTHROUGH][session]
        for label, by_session in grouped.items():
            run = by_session[session]
            prompt, read = run.tokens()
            before, after = bill(base, price), bill(run, price)
            kept, steps = run.facts_kept()
            out.append(
                f"| {session} | {label} | {prompt:,} | {pct(prompt, base.tokens()[0])} | "
                f"{100 * read / prompt:.1f}% | {run.written():,} | ${before:.2f} | ${after:.2f} | "
                f"{pct(after, before)} | {kept}/{steps} | {run.fail_open} |"
            )
    return out


def _lost(runs: list[Replay], sessions: list[Session]) -> list[str]:
    steps = {s["name"]: s["steps"] for s in sessions}
    out = []
    for run in sorted(runs, key=lambda r: (r.label, r.session, r.api)):
        lost = [(turn.step, fact) for turn in run.turns for fact in turn.lost]
        if not lost:
            continue
        failing = len({k for k, _ in lost})
        out.append(f"- **{run.label}**, {run.session}, {run.api}: {len(lost)} facts lost in {failing} steps")
        for k, fact in lost[:LOST_SHOWN]:
            command = steps[run.session][k - 1]["command"][:50].replace("|", "\\|")
            shown = fact.replace("\n", "\\n")[:80].replace("|", "\\|").replace("`", "'")
            out.append(f"  - step {k} (`{command}`): `{shown}`")
        if len(lost) > LOST_SHOWN:
            out.append(f"  - ... and {len(lost) - LOST_SHOWN} more")
    return out or ["None: every newest tool output kept all its facts."]


def _steps_table(runs: list[Replay], session: Session) -> list[str]:
    """Per step of one session (chat shape): the newest output's tokens as forwarded, facts kept."""
    by_label = {r.label: r for r in runs if r.api == "openai" and r.session == session["name"]}
    labels = list(by_label)
    out = [
        f"**{session['name']}** (tokens of the newest output as forwarded; ok = every fact kept, "
        "else how many were lost)\n",
        "| step | command | facts | " + " | ".join(labels) + " |",
        "|---:|---|---:|" + "---:|" * len(labels),
    ]
    for step in session["steps"]:
        cells = []
        for label in labels:
            turn = by_label[label].turns[step["n"]]
            cells.append(f"{turn.newest_tokens:,} {'ok' if not turn.lost else f'-{len(turn.lost)}'}")
        command = step["command"][:48].replace("|", "\\|").replace("`", "'")
        out.append(f"| {step['n']} | `{command}` | {len(step['facts'])} | " + " | ".join(cells) + " |")
    return out


def _served_table(served: dict[str, Any]) -> list[str]:
    out = [
        "| policy | API | invoice before | invoice after | invoice change | audit before | audit after | "
        "audit change | difference | audit before vs invoice before | facts lost |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    book = PriceBook()
    for api, (model, _) in APIS.items():
        invoices = served["invoice"].get(api)
        if not invoices:
            continue
        base = invoices[PASSTHROUGH]
        for label, after in invoices.items():
            audit_before, audit_after = served["audit"][api][label]
            change, reported = after / base - 1, audit_after / audit_before - 1
            out.append(
                f"| {label} | {api} ({book.price_for(model).key}) | ${base:.2f} | ${after:.2f} | "  # type: ignore[union-attr]
                f"{100 * change:+.1f}% | ${audit_before:.2f} | ${audit_after:.2f} | {100 * reported:+.1f}% | "
                f"{100 * (reported - change):+.2f} pp | {pct(audit_before, base)} | {served['lost'][api].get(label, 0)} |"
            )
    return out


def report(
    sessions: list[Session],
    runs: list[Replay],
    served: dict[str, Any] | None,
    *,
    command: str,
    seconds: float,
) -> str:
    lines = [
        "# Long agent sessions, replayed turn by turn and billed",
        "",
        f"`PYTHONPATH=. {command}` (in-process replays: {seconds:.0f} s). Produced by bench/agent_replay.py; "
        "the sessions and their provenance: bench/sessions/README.md. Turn k sends the history up to step k's "
        "tool output; the upstream's usage (tests/prefix_cache_upstream.py) is priced from litellm's map. "
        '"facts kept": steps whose NEWEST tool output, as forwarded, still holds every fact the next step needs. '
        "Policies run with a 60 s latency budget (what they save, not this machine's speed); `first30` keeps "
        "30% of each tool output's tokens (truncate, middle out) when first seen, without the 50,000-character skip.",
        "",
        "## Sessions",
        "",
        *_sessions_table(sessions),
        "",
        "## OpenAI chat shape, gpt-5, automatic prefix cache",
        "",
        *_openai_table(runs),
        "",
        "## Anthropic Messages shape, claude-sonnet-4-5, Claude Code's breakpoints",
        "",
        *_anthropic_table(runs),
        "",
        "## Facts lost from the newest tool output",
        "",
        *_lost(runs, sessions),
        "",
        "## Step by step (chat shape; the Messages shape forwards the same text)",
        "",
    ]
    for session in sessions:
        lines += [*_steps_table(runs, session), ""]
    if served is not None:
        lines += [
            "",
            "## Through `tersegate serve` (a subprocess), the audit beside the invoice",
            "",
            "Every session of each API through one `tersegate serve` per policy, JSONL audit on, to "
            "tests/prefix_cache_upstream.py on loopback; the invoice is priced from the upstream's reported usage, "
            "the audit's dollars are its `cost_before_usd` / `cost_after_usd` sums.",
            "",
            *_served_table(served),
        ]
    return "\n".join(lines) + "\n"
