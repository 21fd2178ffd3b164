"""Small texts the tests build themselves, so every feature keeps tests where the evaluation data is absent.

They imitate the shapes of the public data (a passage with its question, a few-shot chain-of-thought
prompt) from wordfreq's word list and a seeded generator: the same text on every machine.
"""

from __future__ import annotations

import functools
import json
import random
import time
from pathlib import Path

from wordfreq import top_n_list

from proxy.exchange import Exchange, Rewrite

__all__ = ["agent_history", "audited_exchange", "corpus", "few_shot_prompt", "passages", "write_agent_trace"]

_NAMES = ("Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov", "Ken Thompson")
_PLACES = ("Bonn", "Vienna", "Lisbon", "Oslo", "Kyoto", "Quito", "Nairobi", "Perth")


@functools.cache
def _words() -> tuple[str, ...]:
    return tuple(w for w in top_n_list("en", 3000) if w.isalpha() and len(w) > 2)


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_words()) for _ in range(rng.randint(8, 18))]
    return " ".join(words).capitalize() + rng.choice((".", ".", ".", ";", ","))


def passages(count: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """``(passage, question)`` pairs: a few sentences naming who did something where and when, and the
    question that asks for it (its answer, the name, is in the passage)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        name, place, year = rng.choice(_NAMES), rng.choice(_PLACES), rng.randint(1800, 2020)
        thing = rng.choice(_words())
        fact = f"The {thing} project was started by {name} in {place} in {year}."
        sentences = [_sentence(rng) for _ in range(rng.randint(4, 9))]
        sentences.insert(rng.randrange(len(sentences) + 1), fact)
        out.append((" ".join(sentences), f"who started the {thing} project in {place} (passage {i})"))
    return out


def corpus(count: int = 1500) -> list[str]:
    """Texts to train a tiny tokenizer on: the passages and their questions."""
    return [text for pair in passages(count, seed=1) for text in pair]


def few_shot_prompt(shots: int = 8, *, seed: int = 0) -> str:
    """A chain-of-thought prompt in GSM8K's few-shot format: ``Question:`` / ``Let's think step by step`` /
    reasoning lines with numbers / ``The answer is N``, blocks separated by blank lines."""
    rng = random.Random(seed)
    blocks = []
    for _ in range(shots):
        a, b, c = rng.randint(2, 90), rng.randint(2, 40), rng.randint(2, 9)
        thing = rng.choice(_words())
        blocks.append(
            f"Question: A shop has {a} boxes of {thing}. It buys {b} more boxes, and each box holds {c} "
            f"items. How many items does the shop have?\nLet's think step by step\n"
            f"The shop has {a} + {b} = {a + b} boxes.\nEach box holds {c} items, so it has "
            f"{a + b} * {c} = {(a + b) * c} items.\nThe answer is {(a + b) * c}"
        )
    return "\n\n".join(blocks)


def _file_dump(rng: random.Random, name: str, lines: int) -> str:
    """A file as a coding agent's ``open`` shows it: numbered lines, trailing spaces, runs of blank lines."""
    body = []
    for n in range(1, lines + 1):
        words = [rng.choice(_words()) for _ in range(rng.randint(2, 6))]
        body.append(f"{n}:    {'_'.join(words[:2])} = compute({n}, {' + '.join(words[2:]) or 'None'})    ")
        if n % 7 == 0:
            body.append("\n\n")
    return f"[File: /repo/src/{name}.py ({lines} lines total)]\n" + "\n".join(body) + "\n\n\n\n(Open file)"


def agent_history(turns: int = 6, *, seed: int = 0) -> list[dict[str, object]]:
    """A function-calling coding agent's ``history`` in SWE-agent's trace format (``tool_call_ids``, and
    fields the API does not take): a task, then per turn a tool call and its output; the last output is a
    file of a few thousand tokens."""
    rng = random.Random(seed)
    history: list[dict[str, object]] = [
        {
            "role": "system",
            "content": "You are a coding agent. Use the tools to fix the issue.",
            "agent": "main",
        },
        {
            "role": "user",
            "content": "The parser drops the last field of each record. Fix it.",
            "agent": "main",
        },
    ]
    for k in range(turns):
        name = f"module_{k}"
        call = {
            "id": f"call_{k}",
            "type": "function",
            "function": {"name": "open", "arguments": f'{{"path": "{name}.py"}}'},
        }
        history.append(
            {
                "role": "assistant",
                "content": f"Let me open {name}.py.",
                "tool_calls": [call],
                "thought": "look",
            }
        )
        lines = 400 if k == turns - 1 else rng.randint(30, 60)
        history.append(
            {"role": "tool", "content": _file_dump(rng, name, lines), "tool_call_ids": [call["id"]]}
        )
    history.append({"role": "assistant", "content": "The fix is in module_0.py.", "tool_calls": None})
    return history


def write_agent_trace(path: Path, turns: int = 6, *, seed: int = 0) -> Path:
    """:func:`agent_history` written as a ``.traj`` file, as the evaluation data's traces are."""
    path.write_text(json.dumps({"history": agent_history(turns, seed=seed), "info": {}}), encoding="utf-8")
    return path


def audited_exchange(i: int) -> Exchange:
    """A finished, compressed chat request for the audit sink (request id ``req<i>``)."""
    return Exchange(
        request_id=f"req{i}",
        method="POST",
        route="/v1/chat/completions",
        team="default",
        key_id=None,
        upstream="openai",
        started=time.time(),
        compressible=True,
        model="gpt-4o",
        status=200,
        rewrite=Rewrite(policy="p", mode="enforce", tokens_before=100, tokens_after=60),
        usage={"prompt_tokens": 80, "completion_tokens": 5},
    )


TICKET_WORDS = str.split(
    "the printer on floor three keeps jamming whenever someone sends a large job and the support team "
    "asked the customer about model number firmware version network settings toner cartridge warranty "
    "status ticket escalation engineer visit schedule tomorrow morning after checking logs error code"
)


def ticket(chars: int, seed: int, *, end: str = "\n") -> str:
    """A long support ticket of ``chars`` characters: unique per seed, compressible by the ``tokens``
    compressor, sentences ending in ``end``, then a question (tests/proxy/test_bounded.py, bench/bounded.py)."""
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < chars:
        words = " ".join(rng.choice(TICKET_WORDS) for _ in range(rng.randint(8, 20)))
        sentence = f"{words.capitalize()} (ref {rng.randint(1000, 99999)}).{end}"
        out.append(sentence)
        size += len(sentence)
    return "".join(out)[:chars] + f"{end[-1:] or ' '}Question: what should the engineer check first?"
