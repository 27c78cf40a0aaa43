"""A sample application using outbox-relay as a typed library, checked by `mypy --strict`
(tests/acceptance/adoption/test_library.py): sync callers get RecordedUsage, async callers an
awaitable."""

import psycopg
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import outbox
from outbox import CancelRequest, RecordedUsage

URL = "postgresql+psycopg://app@db/app"


def with_session(request_id: str) -> int:
    with Session(create_engine(URL)) as session, session.begin():
        recorded = outbox.record_usage(
            session, event_name="api_calls", customer="cus_1", value=1, identifier=request_id
        )
        return recorded.id


def with_sqlalchemy_connection(request_id: str) -> bool:
    with create_engine(URL).begin() as conn:
        recorded: RecordedUsage = outbox.record_usage(
            conn, event_name="api_calls", customer="cus_1", value=1, identifier=request_id
        )
        return recorded.created


def with_psycopg(request_id: str) -> str:
    with psycopg.connect("postgresql://app@db/app") as conn:
        first = outbox.record_usage(
            conn, event_name="api_calls", customer="cus_1", value=1, identifier=request_id
        )
        with conn.cursor() as cur:
            cancelled: CancelRequest = outbox.cancel_usage(cur, identifier=first.identifier)
        return cancelled.state


async def with_async_session(request_id: str) -> int:
    async with AsyncSession(create_async_engine(URL)) as session, session.begin():
        recorded = await outbox.record_usage(
            session, event_name="api_calls", customer="cus_1", value=1, identifier=request_id
        )
        return recorded.id


async def with_async_connection(request_id: str) -> str:
    async with create_async_engine(URL).begin() as conn:
        cancelled = await outbox.cancel_usage(conn, identifier=request_id)
        return cancelled.action


async def with_psycopg_async(request_id: str) -> int:
    async with await psycopg.AsyncConnection.connect("postgresql://app@db/app") as conn:
        recorded = await outbox.record_usage(
            conn, event_name="api_calls", customer="cus_1", value=1, identifier=request_id
        )
        async with conn.cursor() as cur:
            again = await outbox.record_usage(
                cur, event_name="api_calls", customer="cus_1", value=1, identifier=request_id
            )
        return recorded.id + again.id
