"""A FastAPI shop: an order and the job that ships it commit together, and a worker runs
inside the server.

    pip install 'simple-durable-jobs[fastapi]' uvicorn
    uvicorn examples.fastapi_app:app

    curl -X POST localhost:8000/orders -H 'content-type: application/json' \\
         -d '{"ref": "o-1", "item": "book", "quantity": 1}'
    curl localhost:8000/orders/o-1                     # shipped, with its tracking number
    open http://localhost:8000/admin/jobs/             # the dashboard (user ops, $APP_OPS_PASSWORD)

$APP_DATABASE_URL picks the database (default sqlite:///shop.db; the app's tables and the
jobs share it, so that an order and its job are one transaction); APP_WORKER=0 serves
the web only, for deployments whose jobs run in `sdj worker` processes.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPBasic
from pydantic import BaseModel

import durable_jobs as jobs
from durable_jobs.contrib.fastapi import Enqueuer, enqueuer, lifespan, mount_dashboard

engine = sa.create_engine(os.environ.get("APP_DATABASE_URL", "sqlite:///shop.db"))
storage = jobs.SQLStorage(engine)
queue = jobs.Queue(storage)

metadata = sa.MetaData()
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("ref", sa.String(64), primary_key=True),
    sa.Column("item", sa.String(64), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("job_id", sa.String(64)),
)
stock = sa.Table(
    "stock",
    metadata,
    sa.Column("item", sa.String(64), primary_key=True),
    sa.Column("quantity", sa.Integer, nullable=False),
)


@queue.job(retries=5)
def ship_order(ref: str) -> str:
    with engine.begin() as conn:
        conn.execute(orders.update().where(orders.c.ref == ref).values(status="shipped"))
    return f"track-{ref}"


# What this process's queue reported lately (enqueues, starts, outcomes), for GET /activity.
activity: deque[dict[str, Any]] = deque(maxlen=200)


async def record(stream: jobs.EventStream) -> None:
    async for event in stream:
        activity.append(
            {"event": type(event).__name__, "job_id": event.job.id, "type": event.job.type}
        )


@asynccontextmanager
async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
    storage.migrate()
    metadata.create_all(engine)
    with engine.begin() as conn:
        if conn.execute(sa.select(sa.func.count()).select_from(stock)).scalar() == 0:
            conn.execute(stock.insert(), [{"item": "book", "quantity": 3}])
    with queue.events() as stream:
        recorder = asyncio.create_task(record(stream))
        async with lifespan(queue, worker=os.environ.get("APP_WORKER", "1") != "0")(app):
            yield
        stream.close()
        await recorder


app = FastAPI(lifespan=app_lifespan)


def db() -> Iterator[sa.Connection]:
    """The request's transaction: committed after the endpoint, rolled back if it raises."""
    with engine.begin() as conn:
        yield conn


# scope="function": the transaction ends before the response is sent, so a 201 means
# committed. (By default FastAPI runs the code after `yield` once the response is sent.)
Database = Depends(db, scope="function")
Connection = Annotated[sa.Connection, Database]
Enqueue = Annotated[Enqueuer, Depends(enqueuer(queue, Database))]


class Order(BaseModel):
    ref: str
    item: str
    quantity: int = 1


@app.post("/orders", status_code=201)
def place_order(order: Order, conn: Connection, enqueue: Enqueue) -> dict[str, str]:
    job_id = enqueue(ship_order, order.ref)
    conn.execute(orders.insert().values(**order.model_dump(), status="placed", job_id=job_id))
    taken = conn.execute(
        stock.update()
        .where(stock.c.item == order.item, stock.c.quantity >= order.quantity)
        .values(quantity=stock.c.quantity - order.quantity)
    )
    if taken.rowcount == 0:
        # The order and its job were written above; raising rolls both back.
        raise HTTPException(409, f"not enough {order.item!r} in stock")
    return {"ref": order.ref, "job_id": job_id}


@app.get("/orders/{ref}")
def get_order(ref: str, conn: Connection) -> dict[str, Any]:
    row = conn.execute(sa.select(orders).where(orders.c.ref == ref)).mappings().first()
    if row is None:
        raise HTTPException(404, f"no order {ref!r}")
    job = queue.get_job(row["job_id"])
    assert job is not None  # committed with the order
    result = None if job.result is None else job.result.decode()
    return {**row, "job": {"status": job.status.value, "result": result}}


@app.get("/activity")
def get_activity() -> list[dict[str, Any]]:
    return list(activity)


basic = HTTPBasic()
OPS_PASSWORD = os.environ.get("APP_OPS_PASSWORD", "change-me")


async def operator(request: Request) -> bool:
    """HTTP Basic: user ``ops``; without credentials the browser is asked for them."""
    credentials = await basic(request)
    assert credentials is not None  # HTTPBasic() raises 401 when they are missing
    return secrets.compare_digest(credentials.username, "ops") & secrets.compare_digest(
        credentials.password, OPS_PASSWORD
    )


mount_dashboard(app, queue, "/admin/jobs", allow=operator, auth=operator)
