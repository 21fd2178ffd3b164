"""Send realistic traffic from the evaluation data (evaldata/) through a running tersegate, per team.

Used to produce the README's audit report:

    python tests/fake_upstream.py --port 18081 &
    # config.yaml with upstreams.openai.base_url: http://127.0.0.1:18081/v1, listen port 18080
    tersegate serve --config config.yaml &
    python bench/demo_traffic.py --base-url http://127.0.0.1:18080/v1
    tersegate report --config config.yaml --by team,model

- rag: NaturalQuestions questions, each with 20 "Lost in the Middle"-format documents (the gold
  passage among other questions' passages), to gpt-4o-mini.
- agents / default: every SWE-agent trace replayed turn by turn (as the agent sent it), to gpt-4o.
- support: each long tool observation of the traces as a user message asking for a summary, to gpt-4o-mini.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for evaldata/
import evaldata


def rag_requests(n: int) -> list[list[dict[str, Any]]]:
    rows = evaldata.nq_rows()
    rng = random.Random(7)
    out = []
    for row in rows[:n]:
        others = [r["ctxs"][0] for r in rng.sample(rows, 19) if r is not row]
        docs = [*others[:19]]
        docs.insert(rng.randrange(20), row["ctxs"][0])
        search = [f"Document [{i + 1}](Title: {d['title']}) {d['text']}" for i, d in enumerate(docs)]
        prompt = evaldata.qa_prompt(search, row["question"])
        out.append([{"role": "user", "content": prompt}])
    return out


def trace_turns() -> list[list[dict[str, Any]]]:
    """Every turn of every trace, as the agent sent it (tool results with their ``tool_call_id``)."""
    return [turn for trace in evaldata.TRACES for turn in evaldata.turns(evaldata.agent_messages(trace))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--rag", type=int, default=30, help="number of NQ requests")
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key="sk-demo", max_retries=0)

    def send(team: str, model: str, messages: list[dict[str, Any]]) -> None:
        client.chat.completions.create(
            model=model, messages=messages, extra_headers={"X-Tersegate-Team": team}
        )  # type: ignore[arg-type]

    for messages in rag_requests(args.rag):
        send("rag", "gpt-4o-mini", messages)
    turns = trace_turns()
    for team in ("agents", "default"):
        for messages in turns:
            send(team, "gpt-4o", messages)
    for messages in turns[-1:]:
        for m in messages:
            if m["role"] in ("tool", "user") and isinstance(m["content"], str) and len(m["content"]) > 2000:
                send(
                    "support",
                    "gpt-4o-mini",
                    [{"role": "user", "content": "Summarise this:\n" + m["content"]}],
                )
    print(f"sent {args.rag} rag, {2 * len(turns)} agent/default and support requests")


if __name__ == "__main__":
    main()
