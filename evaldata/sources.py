"""Where each evaluation file comes from: a public GitHub repository at a fixed commit.

Every file was copied byte for byte (``git show <commit>:<path>``), so its git blob
hash (SHA-1 of ``b"blob <size>\\0" + content``) identifies it; ``python -m evaldata.fetch``
checks it after each download. The README's "Evaluation data" lists the same sources
and licences.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["SOURCES", "Source", "blob_hash"]


@dataclass(frozen=True, slots=True)
class Source:
    folder: str  # under the data root
    repo: str  # owner/name on GitHub
    commit: str
    licence: str
    files: tuple[tuple[str, str, str], ...]  # (name in folder, path in the repository, git blob hash)

    def url(self, path: str) -> str:
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{path}"


def blob_hash(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


_PROMPTS = "src/lost_in_the_middle/prompts"
_TRAJ = "trajectories/demonstrations"
_TEST_TRAJ = "tests/test_data/trajectories"
_MT_BENCH = "fastchat/llm_judge/data/mt_bench"

SOURCES: tuple[Source, ...] = (
    Source(
        "lost-in-the-middle",
        "nelson-liu/lost-in-the-middle",
        "29b8a6d042ce29abccee3db1a73171a107d7e6af",
        "code MIT; NaturalQuestions CC BY-SA 3.0, Wikipedia passages CC BY-SA",
        (
            ("LICENSE", "LICENSE", "759b79bd8c82acb24f368f0d3a776f62aa569fe6"),
            (
                "nq-open-oracle.jsonl.gz",
                "qa_data/nq-open-oracle.jsonl.gz",
                "9e0e498f7feaca12e5ff1f40526ed7f7a6d9b7d9",
            ),
            (
                "kv-retrieval-75_keys.jsonl.gz",
                "kv_retrieval_data/kv-retrieval-75_keys.jsonl.gz",
                "6d125bd4c448d2697c26948b9be66c3bfe33a392",
            ),
            (
                "kv-retrieval-140_keys.jsonl.gz",
                "kv_retrieval_data/kv-retrieval-140_keys.jsonl.gz",
                "45d0bcd57a6d3f5219894ebc625f21e30e42df8a",
            ),
            ("qa.prompt", f"{_PROMPTS}/qa.prompt", "9a2dae3460719cacb9f94b05374c8efaf41c2295"),
            (
                "closedbook_qa.prompt",
                f"{_PROMPTS}/closedbook_qa.prompt",
                "1058d398f84828a85e639359a7fc44765a425bae",
            ),
            (
                "kv_retrieval.prompt",
                f"{_PROMPTS}/kv_retrieval.prompt",
                "67922a73dc35d3c67e8eeee848a2f8cdac47020b",
            ),
        ),
    ),
    # The blob is the same in the fork aiomodel/chain-of-thought-hub; FranxYao/chain-of-thought-hub is upstream.
    Source(
        "gsm8k",
        "lu-wang-dl/chain-of-thought-hub",
        "d52bae89527daca8a354f97561438f12725df780",
        "MIT (Yao Fu)",
        (
            ("LICENSE.chain-of-thought-hub", "LICENSE", "67abf0d6130a4ee8b21a85131440bd63f6c6cf32"),
            (
                "prompt_hardest.txt",
                "gsm8k/lib_prompt/prompt_hardest.txt",
                "c8deaea4c8a383bee09e3560c50b3124ef0594ce",
            ),
            (
                "prompt_original.txt",
                "gsm8k/lib_prompt/prompt_original.txt",
                "efac210c0a39f2416314b3daaea6a19c504877fa",
            ),
        ),
    ),
    Source(
        "gsm8k",
        "openai/grade-school-math",
        "3101c7d5072418e28b9008a6636bde82a006892c",
        "MIT (OpenAI)",
        (
            ("LICENSE.grade-school-math", "LICENSE", "9e84fcbc4d81a1f433c90caf9f1cef373c12edae"),
            (
                "gsm8k_test.jsonl",
                "grade_school_math/data/test.jsonl",
                "e4c2ff4942b9a78bd74f04141224c11e28d12dc9",
            ),
        ),
    ),
    Source(
        "openai-openapi",
        "openai/openai-openapi",
        "f85dbe223d40e1a31cba812ab2d755c7e98a92a3",
        "MIT",
        (
            ("LICENSE", "LICENSE", "4f14854c3243516f3de1487a60f14882874d7e3a"),
            ("openapi.json", "openapi.json", "81787a35e9c439ed471dc41f3d71c01228a54822"),
            ("openapi.yaml", "openapi.yaml", "cc54f3a8e4c6737bd945051cd6654e0a20913743"),
        ),
    ),
    Source(
        "swe-agent-traces",
        "SWE-agent/SWE-agent",
        "3ea751c087f32b16e039a2233dd6eefecef325d5",
        "MIT (SWE-agent; SWE-bench task records MIT)",
        (
            ("LICENSE", "LICENSE", "e702436e21844c5c519de31ab68277a6d3b427d9"),
            (
                "marshmallow-1867__function_calling_replace.traj",
                f"{_TRAJ}/replay__marshmallow-code__marshmallow-1867__function_calling_replace__install-1/"
                "marshmallow-code__marshmallow-1867.traj",
                "e03387a099616f5df3e9f119bfbb7fb1e98bf00a",
            ),
            (
                "marshmallow-1867__function_calling_replace_from_source.traj",
                f"{_TRAJ}/replay__marshmallow-code__marshmallow-1867__function_calling_replace_from_source/"
                "marshmallow-code__marshmallow-1867.traj",
                "052d5837ac76e08292b298de892904ae1a5f4402",
            ),
            (
                "gpt4__pydicom-1458.traj",
                f"{_TEST_TRAJ}/gpt4__swe-bench-dev-easy_first_only__default__t-0.00__p-0.95__c-3.00__install-1/"
                "pydicom__pydicom-1458.traj",
                "1ff4b19d423f53ed2411331bdc84e8ef43a74336",
            ),
            (
                "gpt4__swe-agent-test-repo-i1.traj",
                f"{_TEST_TRAJ}/gpt4__swe-agent__test-repo__default_from_url__t-0.00__p-0.95__c-3.00__install-1/"
                "swe-agent__test-repo-i1.traj",
                "4da9917138cd422011b92455e64f4dc626332f0d",
            ),
            (
                "ctf_web_i_got_id_demo.traj",
                f"{_TRAJ}/ctf/web/i_got_id_demo.traj",
                "f36674646402ad4557b41c49f6c5bcb81e29ec59",
            ),
            (
                "swe-bench-lite-test.json",
                "tests/test_data/data_sources/swe-bench-lite-test.json",
                "30259c0708973dd330d96a70996c035655824371",
            ),
            (
                "swe-bench-dev-easy.json",
                "tests/test_data/data_sources/swe-bench-dev-easy.json",
                "44beb7848b1f876e8c2574d46d98817bc96853c3",
            ),
        ),
    ),
    Source(
        "mt-bench",
        "lm-sys/FastChat",
        "0e6d3e4beaab66f4d3f93db72541a4abab8af28d",
        "Apache-2.0",
        (
            ("LICENSE", "LICENSE", "261eeb9e9f8b2b4b0d119366dda99c6fd7d35c64"),
            ("question.jsonl", f"{_MT_BENCH}/question.jsonl", "464e2c22f7a021a0f9a584d232338a9a17c40066"),
            (
                "reference_answer_gpt-4.jsonl",
                f"{_MT_BENCH}/reference_answer/gpt-4.jsonl",
                "8b66387a3129cbb117178fe515491df553dd52df",
            ),
        ),
    ),
)
