"""`status` splits unsent rows into buckets that add up to the unsent total, during a seeded
outage with rows in every bucket. Regression: every pending row with any code was listed as
"held back: key or account refused", with "next attempt in 0 s", and the numbers did not add
up."""

import json
import re

from click.testing import CliRunner

from relay.cli.commands import main
from relay.core.unsent import BUCKETS
from relay.db import operations as ops
from tests.helpers import scalar
from tests.support.outage import NEXT_ATTEMPT_SECONDS, SEEDED, UNSENT, seed_outage


def test_every_unsent_row_is_in_one_bucket_and_the_buckets_add_up(database_url, db):
    seed_outage(database_url)
    with ops.connect(database_url) as conn:
        data = ops.status(conn)
    unsent = data["unsent"]
    buckets = unsent["buckets"]
    assert list(buckets) == list(BUCKETS)
    real = scalar(
        db, "SELECT count(*) FROM meter_event_outbox WHERE state IN ('pending', 'in_flight')"
    )
    assert unsent["total"] == real == UNSENT
    assert sum(b["rows"] for b in buckets.values()) == unsent["total"]
    assert data["counts"]["pending"] + data["counts"]["in_flight"] == unsent["total"]
    for bucket, groups in SEEDED.items():
        assert buckets[bucket]["rows"] == sum(n for _, _, n in groups), bucket
        coded = sorted((c, a, n) for c, a, n in groups if c)
        shown = sorted(
            (g["code"], g["stripe_account"], g["rows"]) for g in buckets[bucket]["groups"]
        )
        assert shown == coded, bucket
        for g in buckets[bucket]["groups"]:
            assert 0 < g["next_attempt_in_seconds"] <= NEXT_ATTEMPT_SECONDS, (bucket, g)


def test_status_text_and_json_show_the_buckets(database_url):
    seed_outage(database_url)
    env = {"OUTBOX_DATABASE_URL": database_url, "COLUMNS": "200"}
    out = CliRunner().invoke(main, ["status", "--json"], env=env)
    data = json.loads(out.stdout)
    assert data["unsent"]["buckets"]["held_auth"]["rows"] == 3
    assert data["outage"] is None or data["outage"]["state"] == "closed"  # the breaker's, apart
    text = CliRunner().invoke(main, ["status"], env=env).stdout
    assert re.search(rf"unsent in all\s+│ {UNSENT}\s", text), text
    for title in ("retrying: Stripe did not answer", "held: key or account refused", "due now"):
        assert title in text, text
    refused = next(line for line in text.splitlines() if "account_access_refused" in line)
    assert re.search(r"│ 2\s+│ account_access_refused\s+│ acct_a\s+│ [23][0-9] s", refused), refused
