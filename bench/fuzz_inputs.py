"""Long fuzz run: generated usage facts recorded three ways (record_usage, outbox_record_usage(),
plain INSERT) on a scratch database; prints how many were tried, accepted, refused, and the
crashes and disagreements (both must be 0). The suite runs the same check bounded
(tests/integration/library/test_input_agreement.py).

    python -m bench.fuzz_inputs                    # 5,000 examples
    python -m bench.fuzz_inputs --examples 50000 --database-url postgresql://postgres@host/postgres
"""

import argparse
import time
from collections import Counter

import psycopg
from hypothesis import HealthCheck, Phase, given, settings

from bench.common import ADMIN_URL, scratch_database
from bench.usage_inputs import ACCEPTED, FACTS, Fact, judge


def run(url: str, examples: int) -> tuple[Counter[str], list[str]]:
    """Judge up to `examples` generated facts; returns counts and the first few problems."""
    counts: Counter[str] = Counter()
    problems: list[str] = []
    with psycopg.connect(url) as conn:

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # count, do not shrink
            suppress_health_check=list(HealthCheck),
        )
        @given(fact=FACTS)
        def one(fact: Fact) -> None:
            verdicts = judge(conn, fact)
            counts["examples"] += 1
            counts["crashes"] += len(verdicts.crashes)
            if not verdicts.agree:
                counts["disagreements"] += 1
            counts["accepted" if verdicts.library == ACCEPTED else "refused"] += 1
            if (verdicts.crashes or not verdicts.agree) and len(problems) < 5:
                problems.append(f"{verdicts} for {fact!r:.300}")

        one()
    return counts, problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--database-url", default=ADMIN_URL)
    args = parser.parse_args()
    started = time.monotonic()
    with scratch_database(args.database_url) as url:
        counts, problems = run(url, args.examples)
    elapsed = time.monotonic() - started
    print("| examples tried | accepted | refused | crashes | disagreements | seconds |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {counts['examples']:,} | {counts['accepted']:,} | {counts['refused']:,} "
        f"| {counts['crashes']} | {counts['disagreements']} | {elapsed:.0f} |"
    )
    for problem in problems:
        print(problem)


if __name__ == "__main__":
    main()
