"""Build bench/RESULTS.md: the summary table (bench/results/summary.md) followed by every
benchmark's own figures and commands (bench/results/<area>.md).

    python bench/assemble_results.py
"""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = (
    "overhead",
    "forwarding_hardening",
    "speed",
    "quality_relevance",
    "quality_tokens",
    "policy",
    "cost",
    "anthropic",
    "compaction",
    "memo",
    "audit",
    "workers",
)


def main() -> None:
    parts = [(RESULTS / "summary.md").read_text().rstrip()]
    for name in ORDER:
        text = (RESULTS / f"{name}.md").read_text().rstrip()
        # Each file's headings move one level down under RESULTS.md's own title.
        parts.append("\n".join("#" + line if line.startswith("#") else line for line in text.splitlines()))
    out = RESULTS.parent / "RESULTS.md"
    out.write_text("\n\n".join(parts) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
