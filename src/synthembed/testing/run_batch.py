"""What `vllm run-batch -i INPUT -o OUTPUT` does, against any OpenAI-compatible server: each line of a batch input file
sent to its url (/v1/chat/completions), each reply written as a line of vLLM's output format (BatchRequestOutput:
{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}). It stands in for vLLM where none can
run (no GPU): in the tests against the loopback stand-in, and by hand against llama.cpp's server on a real model.

    python -m synthembed.testing.run_batch -i runs/gen/batches/00001.jsonl -o runs/gen/batches/00001.results.jsonl \\
        --base-url http://127.0.0.1:8080/v1

Lines go one at a time (a llama.cpp server answers one at a time anyway); a line the server refuses is written with its
status code and error body, as vLLM writes one. The output file is written whole at the end, as vLLM's is.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from pathlib import Path


def run_batch_file(input_path: str | Path, output_path: str | Path, base_url: str, timeout: float = 600.0) -> int:
    """Answer every line of `input_path` from the server at `base_url` (ending in /v1) into `output_path`; the number of
    lines answered with status 200. A line's "headers" (the stand-in's marker) go along as HTTP headers."""
    root = base_url.rstrip("/").removesuffix("/v1")
    results, ok = [], 0
    for number, raw in enumerate(Path(input_path).read_text(encoding="utf-8").splitlines()):
        if not raw.strip():
            continue
        line = json.loads(raw)
        request = urllib.request.Request(
            root + line["url"],
            data=json.dumps(line["body"]).encode("utf-8"),
            headers={"Content-Type": "application/json", **line.get("headers", {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                status, body = reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as err:
            status, body = err.code, json.loads(err.read() or b"{}")
        ok += status == 200
        results.append({"id": f"vllm-{number}", "custom_id": line["custom_id"],
                        "response": {"status_code": status, "request_id": f"vllm-batch-{number}", "body": body},
                        "error": None})  # fmt: skip
    Path(output_path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results), encoding="utf-8")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--input", required=True, help="a batch input file (JSONL)")
    parser.add_argument("-o", "--output", required=True, help="where to write the results (JSONL)")
    parser.add_argument("--base-url", required=True, help="the OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1")
    args = parser.parse_args(argv)
    ok = run_batch_file(args.input, args.output, args.base_url)
    print(f"{ok} lines answered -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
