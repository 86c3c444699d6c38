"""LoopNet: enrich company records with an LLM, billed to the org member who asked.

The platform holds one org **service key** (made for an owner or admin of the org) and names the member it
acts for in the body's `user` field: the member's allocation pays, the usage row names the member. It talks
to the inference service with the official `openai` SDK and reads what each call cost from the headers.

    python examples/loopnet/enrich.py --member demo-user            # LOOPNET_SERVICE_KEY in the environment

Configuration (an argument wins over its variable):

    --base-url    LLM_BASE_URL         default http://localhost:8084/api/v1/llm
    --key         LOOPNET_SERVICE_KEY  the org service key (required)
    --member      LOOPNET_MEMBER       the member whose credits pay (required)
    --model       LOOPNET_MODEL        default demo-chat (the offline demo model)
    --input       a CSV of companies   default companies.csv beside this file

Exit codes: 0 every record enriched; 1 any other error (bad key, not a member, service down);
2 bad arguments; 3 out of credits (402: stops before the next record, nothing held for it);
4 rate limited and gave up (the request alone exceeds a limit, or --max-waits waits were not enough).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import openai
from openai import OpenAI

HERE = Path(__file__).resolve().parent
EXIT_OUT_OF_CREDITS = 3
EXIT_RATE_LIMITED = 4


class Stop(Exception):
    """Enrichment stops: `code` is the exit code, the message says why."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Enrich company records through the inference service.")
    parser.add_argument("--base-url", default=env("LLM_BASE_URL", "http://localhost:8084/api/v1/llm"))
    parser.add_argument("--key", default=env("LOOPNET_SERVICE_KEY", ""), help="org service key")
    parser.add_argument("--member", default=env("LOOPNET_MEMBER", ""), help="user id of the member who pays")
    parser.add_argument("--model", default=env("LOOPNET_MODEL", "demo-chat"))
    parser.add_argument("--input", type=Path, default=HERE / "companies.csv", help="CSV with a 'name' column")
    parser.add_argument("--max-tokens", type=int, default=200, help="the most one answer may use")
    parser.add_argument("--max-waits", type=int, default=5, help="429 waits per record before giving up")
    args = parser.parse_args(argv)
    if not args.key or not args.member:
        parser.error("a service key (--key or LOOPNET_SERVICE_KEY) and a member (--member or LOOPNET_MEMBER) "
                     "are required")
    return args


def enrich(client: OpenAI, company: dict[str, str], member: str, model: str,
           max_tokens: int) -> tuple[str, Mapping[str, str]]:
    """One billed call: `user` names the member who pays (a member of the service key's org)."""
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        user=member,
        messages=[{"role": "user", "content": f"Analyze this company data: {company}"}],
        max_tokens=max_tokens,
        extra_body={"task_type": "company_enrichment"},  # recorded on the usage row
    )
    return raw.parse().choices[0].message.content or "", raw.headers


def retry_delay(error: openai.RateLimitError) -> float | None:
    """Seconds to wait as the 429 says (nothing was held, so a retry is safe); None: waiting will not help."""
    headers = error.response.headers
    if headers.get("x-should-retry") == "false":  # the request alone is larger than the limit
        return None
    if "retry-after-ms" in headers:
        return int(headers["retry-after-ms"]) / 1000
    return float(headers.get("retry-after", "1"))


def enrich_waiting(client: OpenAI, company: dict[str, str], args: argparse.Namespace) -> tuple[str, Mapping[str, str]]:
    """`enrich`, waiting out 429s (at most --max-waits times); a 402 stops the run."""
    for waits in range(args.max_waits + 1):
        try:
            return enrich(client, company, args.member, args.model, args.max_tokens)
        except openai.RateLimitError as error:
            delay = retry_delay(error)
            if delay is None or waits == args.max_waits:
                raise Stop(EXIT_RATE_LIMITED, f"rate limited, giving up: {error.message}") from error
            print(f"rate limited: waiting {delay:.3f} s as told ({waits + 1} of {args.max_waits})", flush=True)
            time.sleep(delay)
        except openai.APIStatusError as error:
            if error.status_code != 402:
                raise
            body = error.body if isinstance(error.body, dict) else {}
            raise Stop(EXIT_OUT_OF_CREDITS, f"out of credits: the next call may cost up to {body.get('requested')} "
                                            f"credits, {body.get('available')} available "
                                            f"({body.get('funding')})") from error
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with args.input.open(newline="") as file:
        companies = list(csv.DictReader(file))
    # max_retries=0: this program waits out 429s itself (enrich_waiting), so it can say so and give up.
    client = OpenAI(base_url=args.base_url, api_key=args.key, max_retries=0)
    done = 0
    try:
        for company in companies:
            answer, headers = enrich_waiting(client, company, args)
            done += 1
            print(f"{company['name']}: cost {headers['X-Cost-Incurred']} credits, "
                  f"remaining {headers['X-Credits-Remaining']} credits, request {headers['X-Request-Id']}")
            print(f"    {answer.strip().splitlines()[0] if answer.strip() else '(empty answer)'}")
    except Stop as stop:
        print(f"stopped after {done} of {len(companies)} records: {stop}", file=sys.stderr)
        return stop.code
    except openai.APIError as error:
        print(f"stopped after {done} of {len(companies)} records: {error}", file=sys.stderr)
        return 1
    print(f"enriched {done} of {len(companies)} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
