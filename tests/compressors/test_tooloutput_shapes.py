"""tooloutput shape by shape, on small built outputs in each tool's own format (edge cases)."""

from __future__ import annotations

import time

from tooloutput_check import account

from compressors import Compressed, Target, create, tokenizer_for
from compressors.markers import find_markers
from compressors.tooloutput import SHAPES, choose
from compressors.tooloutput.lines import Doc
from compressors.tooloutput.query import Query


def run(text: str, budget: int = 300, query: str | None = None) -> Compressed:
    result = create("tooloutput", {"min_tokens": 50}).compress(
        text, target=Target(max_tokens=budget), query=query
    )
    account(text, result.text)
    return result


def shape_of(result: Compressed) -> str:
    return result.decisions[0].kind.removeprefix("shape:") if result.decisions else "unchanged"


def test_go_test_keeps_the_failure_and_its_message() -> None:
    passing = "".join(f"=== RUN   TestOk{i}\n--- PASS: TestOk{i} (0.00s)\n" for i in range(120))
    text = (
        passing
        + "=== RUN   TestSub\n    math_test.go:14: Sub(3, 1) = 3; want 2\n--- FAIL: TestSub (0.00s)\n"
        + "FAIL\nFAIL\texample.com/math\t0.003s\n"
    )
    result = run(text)
    assert shape_of(result) == "tests"
    for line in (
        "    math_test.go:14: Sub(3, 1) = 3; want 2",
        "--- FAIL: TestSub (0.00s)",
        "FAIL\texample.com/math\t0.003s",
    ):
        assert line in result.text
    assert any(m.unit == "tests" and "PASSED" in (m.kinds or "") for _, _, m in find_markers(result.text))


def test_cargo_test_keeps_the_panic_and_the_result_line() -> None:
    passing = "".join(f"test tests::case_{i} ... ok\n" for i in range(150))
    text = (
        "running 151 tests\n" + passing + "test tests::it_fails ... FAILED\n\nfailures:\n\n"
        "---- tests::it_fails stdout ----\nthread 'tests::it_fails' panicked at src/lib.rs:12:9:\n"
        "assertion `left == right` failed\n  left: 4\n right: 5\n\n\nfailures:\n    tests::it_fails\n\n"
        "test result: FAILED. 150 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n"
    )
    result = run(text)
    assert shape_of(result) == "tests"
    for line in ("panicked at src/lib.rs:12:9", "  left: 4", "test result: FAILED. 150 passed; 1 failed"):
        assert line in result.text
    assert "test tests::case_7 ... ok" not in result.text


def test_jest_keeps_the_failing_block_and_the_totals() -> None:
    suites = "".join(f"PASS src/mod{i}.test.js\n" for i in range(80))
    text = (
        suites + "FAIL src/sum.test.js\n  \u25cf sum \u203a adds numbers\n\n"
        "    expect(received).toBe(expected) // Object.is equality\n\n    Expected: 5\n    Received: 4\n\n"
        "      at Object.<anonymous> (src/sum.test.js:4:21)\n\n"
        "Test Suites: 1 failed, 80 passed, 81 total\nTests:       1 failed, 400 passed, 401 total\n"
    )
    result = run(text, budget=150)
    assert shape_of(result) == "tests"
    for line in ("    Received: 4", "(src/sum.test.js:4:21)", "Tests:       1 failed, 400 passed, 401 total"):
        assert line in result.text


def test_unittest_keeps_the_traceback_and_the_verdict() -> None:
    ok = "".join(f"test_{i} (tests.test_x.T.test_{i}) ... ok\n" for i in range(100))
    text = (
        ok
        + "test_b (tests.test_x.T.test_b) ... FAIL\n\n"
        + "=" * 70
        + "\nFAIL: test_b (tests.test_x.T.test_b)\n"
        + "-" * 70
        + '\nTraceback (most recent call last):\n  File "/x/tests/test_x.py", line 9, in test_b\n'
        "    self.assertEqual(1, 2)\nAssertionError: 1 != 2\n\n" + "-" * 70 + "\nRan 101 tests in 0.004s\n\n"
        "FAILED (failures=1)\n"
    )
    result = run(text, budget=200)
    assert shape_of(result) == "tests"
    for line in ("AssertionError: 1 != 2", "FAILED (failures=1)", "Ran 101 tests in 0.004s", "... FAIL"):
        assert line in result.text


def test_a_query_named_passing_test_is_kept() -> None:
    text = "".join(f"tests/test_app.py::test_case_{i} PASSED{' ' * 20}[{i:3d}%]\n" for i in range(100))
    text += "============================== 100 passed in 0.52s ===============================\n"
    result = run(text, budget=120, query="Task: is test_case_42 still passing? Call: Bash pytest -v")
    assert "tests/test_app.py::test_case_42 PASSED" in result.text
    assert "100 passed in 0.52s" in result.text


def test_tsc_eslint_cargo_and_go_build_errors_are_never_lost() -> None:
    noise = "".join(
        f"src/gen{i}.ts(1,1): error TS7006: Parameter 'x' implicitly has an 'any' type.\n" for i in range(60)
    )
    outputs = {
        "tsc": noise + "src/app.ts(12,5): error TS2322: Type 'string' is not assignable to type 'number'.\n"
        "Found 61 errors in 61 files.\n",
        "eslint": "/p/src/a.js\n"
        + "".join(f"  {i}:1  error  'v{i}' is defined but never used  no-unused-vars\n" for i in range(1, 60))
        + "  70:3  warning  Unexpected console statement  no-console\n\n\u2716 60 problems (59 errors, 1 warning)\n",
        "cargo": "".join(
            f"warning: unused variable: `v{i}`\n --> src/lib.rs:{i}:9\n  |\n{i} |     let v{i} = 1;\n  |         ^^ help: prefix it\n\n"
            for i in range(1, 40)
        )
        + 'error[E0308]: mismatched types\n --> src/main.rs:4:18\n  |\n4 |     let x: i32 = "a";\n  |                  ^^^ expected `i32`\n\n'
        'error: could not compile `demo` (bin "demo") due to 1 previous error; 39 warnings emitted\n',
        "go": "# example.com/demo\n"
        + "".join(f"./gen.go:{i}:2: declared and not used: v{i}\n" for i in range(1, 80))
        + "./main.go:5:2: undefined: foo\n",
    }
    must = {
        "tsc": ["src/app.ts(12,5): error TS2322", "Found 61 errors in 61 files."],
        "eslint": ["Unexpected console statement", "\u2716 60 problems (59 errors, 1 warning)"],
        "cargo": ["error[E0308]: mismatched types", " --> src/main.rs:4:18", "error: could not compile"],
        "go": ["./main.go:5:2: undefined: foo"],
    }
    for tool, text in outputs.items():
        result = run(text, budget=150)
        assert shape_of(result) == "diagnostics", tool
        for line in must[tool]:
            assert line in result.text, (tool, line)


def test_grouped_diagnostics_list_every_line_number() -> None:
    text = "".join(
        f"pkg/mod.py:{n}: error: Function is missing a type annotation  [no-untyped-def]\n"
        for n in range(10, 410, 2)
    )
    text += 'pkg/other.py:7: error: Name "x" is not defined  [name-defined]\nFound 201 errors in 2 files (checked 2 source files)\n'
    result = run(text, budget=100)
    [group] = [m for _, _, m in find_markers(result.text) if m.unit == "diagnostics"]
    assert group.kinds is not None and group.kinds.startswith("pkg/mod.py no-untyped-def:")
    listed = [int(n) for n in group.kinds.split("no-untyped-def:")[1].split(",")]
    kept = [int(line.split(":")[1]) for line in result.text.split("\n") if line.startswith("pkg/mod.py:")]
    assert group.count == len(listed) and sorted(listed + kept) == list(range(10, 410, 2))
    assert 'pkg/other.py:7: error: Name "x" is not defined  [name-defined]' in result.text
    assert "Found 201 errors" in result.text


def test_logs_keep_java_stack_traces_and_warnings_whole() -> None:
    info = "".join(
        f"2024-05-01 10:00:{i % 60:02d},123 INFO  [main] c.e.App - handled request {i}\n" for i in range(300)
    )
    trace = (
        "2024-05-01 10:05:00,456 ERROR [worker-1] c.e.Job - job failed\njava.lang.IllegalStateException: boom\n"
        "\tat com.example.Job.run(Job.java:42)\n\tat java.base/java.lang.Thread.run(Thread.java:833)\n"
        "Caused by: java.io.IOException: disk full\n\tat com.example.Disk.write(Disk.java:10)\n\t... 3 more\n"
    )
    text = info + trace + "2024-05-01 10:05:01,000 WARN  [main] c.e.App - retrying\n" + info
    result = run(text, budget=250)
    assert shape_of(result) == "logs"
    assert trace in result.text and "WARN  [main] c.e.App - retrying" in result.text
    assert result.text.startswith(info.split("\n")[0])


def test_search_results_keep_query_hits_and_mark_each_file() -> None:
    text = "".join(
        f"src/mod{f}.py:{n}:    value = compute_{f}_{n}(value)\n" for f in range(8) for n in range(1, 40)
    )
    text = text.replace(
        "src/mod5.py:17:    value = compute_5_17(value)", "src/mod5.py:17:    value = special_target(value)"
    )
    result = run(text, budget=200, query='Call: Grep {"pattern": "special_target"}')
    assert shape_of(result) == "search"
    assert "src/mod5.py:17:    value = special_target(value)" in result.text
    files = {m.example.split(":")[0] for _, _, m in find_markers(result.text) if m.example}
    assert len(files) == 8  # one marker per file


def test_ripgrep_heading_format_is_search() -> None:
    text = (
        "\n\n".join(
            f"src/m{f}.py\n" + "\n".join(f"{n}:    call_{n}()" for n in range(1, 30)) for f in range(6)
        )
        + "\n"
    )
    result = run(text, budget=150)
    assert shape_of(result) == "search"


def test_claude_read_keeps_the_lines_around_a_named_line_number() -> None:
    body = [f"{i:>6}\u2192    x_{i} = compute({i})" for i in range(1, 600)]
    text = "\n".join(body) + "\n"
    result = run(
        text, budget=400, query='Task: the value at line 300 is wrong. Call: Read {"file_path": "a.py"}'
    )
    assert shape_of(result) == "fileread"
    for n in (290, 300, 310):
        assert body[n - 1] in result.text


def test_fallback_keeps_error_like_lines_wherever_they_sit() -> None:
    lines = [f"building object {i} of the thing with a few words" for i in range(400)]
    lines[237] = "fatal: unable to access the remote repository"
    text = "\n".join(lines)
    result = run(text, budget=150)
    assert shape_of(result) == "fallback"
    assert "fatal: unable to access the remote repository" in result.text
    assert result.text.startswith(lines[0]) and result.text.endswith(lines[-1])


def test_text_that_looks_like_json_but_is_not_falls_back() -> None:
    text = "[" + "\n".join(f"item {i}, not json" for i in range(300)) + "]"
    result = run(text, budget=100)
    assert result.tokens_after < result.tokens_before


def test_every_shape_scores_within_zero_and_one() -> None:
    doc = Doc.of("plain words\n" * 50, Query.parse(None), None, tokenizer_for(None), 100)
    assert all(0.0 <= shape.score(doc) <= 1.0 for shape in SHAPES)
    assert choose(doc, 0.5)[0].name == "fallback"


def test_two_megabytes_compress_in_linear_time() -> None:
    line = "2024-05-01 10:00:00,123 INFO [main] c.e.App - handled request {} in {} ms\n"
    text = "".join(line.format(i, i % 97) for i in range(28_000))  # ~2 MB
    tokenizer = tokenizer_for(None)
    start = time.perf_counter()
    tokenizer.count(text)
    count_s = time.perf_counter() - start
    start = time.perf_counter()
    result = create("tooloutput").compress(text, target=Target(max_tokens=1500))
    compress_s = time.perf_counter() - start
    assert result.tokens_after <= 1600
    # the whole call, counting included, within a few token counts of the same text (load-independent)
    assert compress_s < 6 * count_s + 0.2, (compress_s, count_s)


def test_a_read_of_a_test_log_keeps_its_failures_with_their_line_numbers() -> None:
    log = "".join(f"tests/test_app.py::test_case_{i} PASSED{' ' * 20}[{i % 100:3d}%]\n" for i in range(700))
    log += "tests/test_app.py::test_broken FAILED                    [100%]\n"
    log += "========================= 1 failed, 700 passed in 3.10s =========================\n"
    text = "".join(f"{n:>6}\u2192{line}\n" for n, line in enumerate(log.splitlines(), 1))
    result = run(text, budget=200, query='Call: Read {"file_path": "/tmp/test.log"}')
    assert shape_of(result) == "fileread"
    assert "   701\u2192tests/test_app.py::test_broken FAILED" in result.text
    assert "   702\u2192========================= 1 failed, 700 passed in 3.10s" in result.text
    assert any(m.unit == "tests" for _, _, m in find_markers(result.text))


def test_logs_keep_a_server_error_access_line_and_the_line_before_an_error() -> None:
    info = "".join(
        f'2024-05-01 10:00:{i % 60:02d},123 INFO    uvicorn.access: 127.0.0.1:4{i:04d} - "GET /items/{i} HTTP/1.1" 200\n'
        for i in range(300)
    )
    failing = '2024-05-01 10:05:00,001 INFO    uvicorn.access: 127.0.0.1:49522 - "POST /login HTTP/1.1" 500\n'
    start = "2024-05-01 10:05:00,002 INFO    scheduler[21093]: job 0217 start argv=--shard 12\n"
    error = "2024-05-01 10:05:00,003 ERROR   scheduler[21093]: job 0217 failed\n"
    result = run(info + failing + info + start + error + info, budget=600)
    assert shape_of(result) == "logs"
    assert failing in result.text and start + error in result.text


def test_without_fallback_a_text_no_shape_recognises_goes_unchanged() -> None:
    task = "\n".join(
        f"Please look at the export job number {i} and tell me why it stopped." for i in range(60)
    )
    kept = create("tooloutput", {"min_tokens": 50, "fallback": False}).compress(
        task, target=Target(max_tokens=100)
    )
    assert kept.text == task and kept.note == "no shape recognised"
    assert run(task, budget=100).tokens_after < kept.tokens_after  # the fallback would cut it
