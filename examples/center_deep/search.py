"""Center-Deep: bill a search fee through the credit authority, then summarise the results with an LLM.

The search is not an LLM call, so nothing bills it for free: the platform bills it itself, straight through
the authority's gRPC hot path with the Python client's hold (Reserve the most a query may cost → search →
Commit the real price; the hold is Released if the search fails). The summary is an LLM call through the
inference service (the `openai` SDK, an org service key, the member in `user`), billed there.

    python examples/center_deep/search.py --member demo-user --org demo-org "credit pools" "rate limits"

Configuration (an argument wins over its variable):

    --authority   CREDIT_AUTHORITY_ADDR     default 127.0.0.1:50051
                  CREDIT_SERVICE_TOKEN      bearer token for the authority, role spend (required; a platform
                                            credential scoped to the org is the recommended one)
    --base-url    LLM_BASE_URL              default http://localhost:8084/api/v1/llm
    --key         CENTER_DEEP_SERVICE_KEY   org service key for the summaries (required)
    --member      CENTER_DEEP_MEMBER        the member whose credits pay (required)
    --org         CENTER_DEEP_ORG           the org that pays (default: the member's default org)
    --model       CENTER_DEEP_MODEL         default demo-chat (the offline demo model)
    --index       a JSON list of documents  default index.json beside this file (stands in for the search backend)

Price of a query: 0.200 credits plus 0.050 credits a result; the hold is the price of --limit results.

Exit codes: 0 every query searched and summarised; 1 any other error; 2 bad arguments;
3 out of credits (the authority refused the hold, or the summary got 402); 4 rate limited;
5 the search failed (its hold was released: nothing charged for it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import openai
from openai import AsyncOpenAI

from credit_client import Charge, CreditClient, CreditClientError, InsufficientCredits, RateLimited

HERE = Path(__file__).resolve().parent
QUERY_FEE_MC = 200  # millicredits (1 credit = 1,000): 0.200 credits a query …
RESULT_FEE_MC = 50  # … plus 0.050 credits a result returned
EXIT_OUT_OF_CREDITS = 3
EXIT_RATE_LIMITED = 4
EXIT_SEARCH_FAILED = 5


class SearchFailed(Exception):
    """The search backend failed (here: the index could not be read)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Search, billed per query, and summarise the results.")
    parser.add_argument("queries", nargs="+", help="what to search for")
    parser.add_argument("--authority", default=env("CREDIT_AUTHORITY_ADDR", "127.0.0.1:50051"))
    parser.add_argument("--base-url", default=env("LLM_BASE_URL", "http://localhost:8084/api/v1/llm"))
    parser.add_argument("--key", default=env("CENTER_DEEP_SERVICE_KEY", ""), help="org service key")
    parser.add_argument("--member", default=env("CENTER_DEEP_MEMBER", ""), help="user id of the member who pays")
    parser.add_argument("--org", default=env("CENTER_DEEP_ORG", ""), help="org id (default: the member's)")
    parser.add_argument("--model", default=env("CENTER_DEEP_MODEL", "demo-chat"))
    parser.add_argument("--index", type=Path, default=HERE / "index.json")
    parser.add_argument("--limit", type=int, default=5, help="results per query, at most")
    parser.add_argument("--max-tokens", type=int, default=200, help="the most one summary may use")
    args = parser.parse_args(argv)
    args.token = env("CREDIT_SERVICE_TOKEN", "")
    if not (args.token and args.key and args.member):
        parser.error("CREDIT_SERVICE_TOKEN, a service key (--key or CENTER_DEEP_SERVICE_KEY) and a member "
                     "(--member or CENTER_DEEP_MEMBER) are required")
    return args


def price(results: int) -> int:
    """The price of a query that returned `results` results, in millicredits."""
    return QUERY_FEE_MC + RESULT_FEE_MC * results


def search(index: Path, query: str, limit: int) -> list[dict[str, Any]]:
    """The work being billed: a keyword search over a small JSON index."""
    try:
        documents = json.loads(index.read_text())
    except (OSError, ValueError) as error:
        raise SearchFailed(f"the search index {index} cannot be read: {error}") from error
    words = query.lower().split()
    scored = [(sum(word in f"{doc['title']} {doc['text']}".lower() for word in words), doc) for doc in documents]
    return [doc for score, doc in sorted(scored, key=lambda pair: -pair[0]) if score][:limit]


async def billed_search(credits: CreditClient, args: argparse.Namespace,
                        query: str) -> tuple[list[dict[str, Any]], Charge]:
    """Reserve the most the query may cost, search, commit the real price; a failed search releases the hold."""
    async with credits.hold(user_id=args.member, org_id=args.org, amount_millicredits=price(args.limit),
                            service_type="search", service_name="center-deep-search",
                            metadata={"query": query}) as hold:
        results = search(args.index, query, args.limit)  # raises → the hold is released, nothing charged
        hold.commit(price(len(results)), metadata={"results": len(results)})
    assert hold.result is not None  # set by the commit when the block ends
    return results, hold.result


async def summarise(llm: AsyncOpenAI, args: argparse.Namespace, query: str,
                    results: list[dict[str, Any]]) -> tuple[str, Mapping[str, str]]:
    """One LLM call through the inference service, billed there to the same member."""
    raw = await llm.chat.completions.with_raw_response.create(
        model=args.model,
        user=args.member,
        messages=[{"role": "system", "content": "Summarize search results concisely"},
                  {"role": "user", "content": json.dumps({"query": query, "results": results})}],
        max_tokens=args.max_tokens,
        extra_body={"task_type": "search_summary"},
    )
    return raw.parse().choices[0].message.content or "", raw.headers


def as_credits(millicredits: int) -> str:
    return f"{millicredits // 1000}.{millicredits % 1000:03d}" if millicredits >= 0 else f"-{as_credits(-millicredits)}"


async def run(args: argparse.Namespace) -> None:
    # max_retries=3: the SDK waits out a 429 as its Retry-After / retry-after-ms say, then retries.
    llm = AsyncOpenAI(base_url=args.base_url, api_key=args.key, max_retries=3)
    async with CreditClient(args.authority, args.token) as authority:
        for query in args.queries:
            results, charge = await billed_search(authority, args, query)
            print(f"search {query!r}: {len(results)} results, fee {as_credits(charge.charged_millicredits)} credits, "
                  f"remaining {as_credits(charge.available_millicredits)} credits, "
                  f"reservation {charge.reservation_id}", flush=True)
            if not results:
                print("summary: skipped (no results)")
                continue
            summary, headers = await summarise(llm, args, query, results)
            print(f"summary: cost {headers['X-Cost-Incurred']} credits, remaining {headers['X-Credits-Remaining']} "
                  f"credits, request {headers['X-Request-Id']}")
            print(f"    {summary.strip().splitlines()[0] if summary.strip() else '(empty answer)'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(run(args))
    except SearchFailed as error:
        print(f"search failed, its hold was released (nothing charged): {error}", file=sys.stderr)
        return EXIT_SEARCH_FAILED
    except InsufficientCredits as error:
        print(f"out of credits: the search may cost up to {as_credits(error.requested)} credits, "
              f"{as_credits(error.available)} available ({error.funding})", file=sys.stderr)
        return EXIT_OUT_OF_CREDITS
    except RateLimited as error:
        print(f"rate limited ({error.scope} {error.limit}): retry after {error.retry_after} s", file=sys.stderr)
        return EXIT_RATE_LIMITED
    except openai.APIStatusError as error:
        print(f"summary refused ({error.status_code}): {error.message}", file=sys.stderr)
        return {402: EXIT_OUT_OF_CREDITS, 429: EXIT_RATE_LIMITED}.get(error.status_code, 1)
    except (CreditClientError, openai.APIError) as error:  # e.g. PermissionDenied: not a member, or not in scope
        print(f"error ({type(error).__name__}): {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
