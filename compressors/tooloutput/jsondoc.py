"""JSON documents (arrays of similar records, pretty-printed documents): layout whitespace removed;
arrays of records keep their first and last records and those the query names, a marker string
counting the rest. The result is still valid JSON; its markers say where it is a digest."""

from __future__ import annotations

from compressors.jsondigest import shrink
from compressors.tooloutput.fallback import Fallback
from compressors.tooloutput.lines import Doc
from compressors.tooloutput.shape import Cut, Shape

__all__ = ["JsonDoc"]


class JsonDoc(Shape):
    name = "json"

    def score(self, doc: Doc) -> float:
        head = doc.text.lstrip()[:1]
        tail = doc.text.rstrip()[-1:]
        if (head, tail) not in (("{", "}"), ("[", "]")):
            return 0.0
        return 0.95  # compress() parses it; a text that does not parse falls back there

    def compress(self, doc: Doc, budget: int) -> Cut:
        words = [w.lower() for w in sorted(doc.query.names | doc.query.words)]
        small = shrink(doc.text, budget, doc.tokenizer.count, terms=words, ref=doc.ref)
        if small is None:  # looked like JSON, is not: the plain cut
            return Fallback().compress(doc, budget)
        tokens = doc.tokenizer.count(small.text)
        met = tokens <= budget * 1.05
        note = (
            ""
            if met
            else f"kept {tokens} tokens for a {budget}-token budget: a JSON document of few, big values"
        )
        return Cut(small.text, tokens, met, note)
