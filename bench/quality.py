"""Every quality benchmark of issue #3 in one run: relevance (NQ, KV) then tokens (NQ, GSM8K).

    python bench/quality.py [--only relevance|tokens] [--limit N]

Runs ``bench/quality_relevance.py --scorers embedding`` (the default scorer, the one
the bars are about) and ``bench/quality_tokens.py`` with their defaults; each prints
its table with the bars. ``--limit`` caps the NQ questions of both (a quick look;
the figures in bench/RESULTS.md use all 2,655).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality_relevance
import quality_tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("relevance", "tokens"))
    parser.add_argument("--limit", type=int, default=None, help="NQ questions per benchmark")
    args = parser.parse_args(argv)
    limit = ["--limit", str(args.limit)] if args.limit else []
    if args.only in (None, "relevance"):
        print("## relevance (NQ 20 documents, KV 75 keys)\n", flush=True)
        quality_relevance.main(["--scorers", "embedding", *limit])
    if args.only in (None, "tokens"):
        print("\n## tokens (NQ oracle passages, GSM8K)\n", flush=True)
        return quality_tokens.main(limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
