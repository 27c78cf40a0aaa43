"""The relay's own connections: settings that keep its short statements cheap."""

from relay.db.pool import make_pool


async def test_the_relay_pool_never_compiles_its_statements(database_url: str) -> None:
    # The v2 claim's estimated cost passes jit_above_cost on a large backlog: compiling it took
    # about 100 ms a claim (relay/db/pool.py, NO_JIT).
    pool = make_pool(database_url, max_size=1)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            row = await (await conn.execute("SHOW jit")).fetchone()
        assert row == ("off",)
    finally:
        await pool.close()
