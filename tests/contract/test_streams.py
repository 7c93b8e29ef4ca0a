"""The `StreamStore` contract, over the embedded store and real Redis alike."""

from __future__ import annotations

import asyncio

from shared.eventlog.base import Stores
from shared.eventlog.streams import MESSAGE, Producer, StreamConfig

TEXT = StreamConfig("text/plain")
P = "owner"


async def messages(stores: Stores, path: str) -> list[bytes]:
    found = await stores.streams.read(P, path, 0, 100)
    assert found is not None
    return [e.json for e in found[1] if e.type == MESSAGE]


async def test_create_is_idempotent_per_config(stores: Stores) -> None:
    s = stores.streams
    assert (await s.create(P, "a", TEXT, [b"x"], False))[0] == "created"
    assert (await s.create(P, "a", StreamConfig("TEXT/plain"), [], False))[0] == "exists"
    assert (await s.create(P, "a", StreamConfig("text/plain", ttl_s=5), [], False))[0] == (
        "conflict"
    )
    assert await s.info("someone else", "a") is None  # streams are per owner


async def test_producer_dedup_fencing_and_gaps(stores: Stores) -> None:
    s = stores.streams
    await s.create(P, "p", TEXT, [], False)
    ok = await s.append(P, "p", "text/plain", [b"0"], producer=Producer("w", 0, 0))
    assert (ok.status, ok.tail) == ("ok", 1)
    dup = await s.append(P, "p", "text/plain", [b"0"], producer=Producer("w", 0, 0))
    assert (dup.status, dup.seq) == ("duplicate", 0)
    gap = await s.append(P, "p", "text/plain", [b"2"], producer=Producer("w", 0, 2))
    assert (gap.status, gap.seq) == ("gap", 1)
    assert (
        await s.append(P, "p", "text/plain", [b"e"], producer=Producer("w", 1, 0))
    ).status == "ok"
    stale = await s.append(P, "p", "text/plain", [b"z"], producer=Producer("w", 0, 1))
    assert (stale.status, stale.epoch) == ("stale_epoch", 1)
    assert await messages(stores, "p") == [b"0", b"e"]


async def test_concurrent_retries_store_once(stores: Stores) -> None:
    s = stores.streams
    await s.create(P, "r", TEXT, [], False)
    done = await asyncio.gather(
        *(s.append(P, "r", "text/plain", [b"m"], producer=Producer("w", 0, 0)) for _ in range(10))
    )
    assert sorted(d.status for d in done) == ["duplicate"] * 9 + ["ok"]
    assert await messages(stores, "r") == [b"m"]


async def test_close_is_atomic_with_the_final_append(stores: Stores) -> None:
    s = stores.streams
    await s.create(P, "c", TEXT, [b"a"], False)
    closed = await s.append(P, "c", "text/plain", [b"z"], close=True)
    assert (closed.status, closed.tail, closed.closed) == ("ok", 2, True)
    assert (await s.append(P, "c", "text/plain", [b"late"])).status == "closed"
    found = await s.read(P, "c", 0, 10)
    assert found is not None
    assert [e.type for e in found[1]] == [MESSAGE, MESSAGE, "c"]


async def test_delete_with_forks_is_soft_until_the_last_fork_goes(stores: Stores) -> None:
    s = stores.streams
    await s.create(P, "src", TEXT, [b"a"], False)
    assert await s.retain(P, "src") == "ok"
    await s.create(
        P, "fork", StreamConfig("text/plain", fork_of="src", fork_offset=1), [b"a"], False
    )
    assert await s.delete(P, "src") == "soft"
    info = await s.info(P, "src")
    assert info is not None and info.gone
    assert (await s.create(P, "src", TEXT, [], False))[0] == "gone"
    assert await s.delete(P, "fork") == "deleted"
    assert await s.info(P, "src") is None


async def test_concurrent_appends_keep_their_order_and_own_answers(stores: Stores) -> None:
    """What a pipelining producer sends at once (seq 0..n) is stored in that order, and
    each append gets its own answer even when they share a round trip."""
    s = stores.streams
    await s.create(P, "burst", TEXT, [], False)
    await s.create(P, "other", TEXT, [], False)
    sends = [
        s.append(P, "burst", "text/plain", [str(i).encode()], producer=Producer("w", 0, i))
        for i in range(40)
    ]
    sends.insert(20, s.append(P, "other", "application/json", [b"1"]))  # refused: its own
    sends.append(s.append(P, "burst", "text/plain", [b"again"], producer=Producer("w", 0, 3)))
    done = await asyncio.gather(*sends)
    assert [d.status for d in done[:20] + done[21:41]] == ["ok"] * 40
    assert [d.tail for d in done[:20] + done[21:41]] == list(range(1, 41))
    assert done[20].status == "type_mismatch"
    assert (done[41].status, done[41].seq) == ("duplicate", 39)
    assert await messages(stores, "burst") == [str(i).encode() for i in range(40)]


async def test_a_page_joins_what_fits_like_a_response_body(stores: Stores) -> None:
    s = stores.streams
    await s.create(P, "b", TEXT, [b"aa", b"bbb", b"c"], False)
    await s.create(P, "j", StreamConfig("application/json"), [b"1", b'{"x":2}'], True)
    found = await s.page(P, "b", 0, 10, 5)
    assert found is not None
    info, chunk = found
    assert (info.tail, chunk.body, chunk.count, chunk.last) == (3, b"aabbb", 2, 2)
    found = await s.page(P, "b", 1, 10, 1)  # one message even when it alone is too big
    assert found is not None and (found[1].body, found[1].last) == (b"bbb", 2)
    found = await s.page(P, "b", 3, 10, 5)
    assert found is not None and (found[1].body, found[1].count) == (b"", 0)
    found = await s.page(P, "j", 0, 10, 1 << 20)  # JSON: commas; the close marker is no message
    assert found is not None and found[0].closed
    assert (found[1].body, found[1].count, found[1].last) == (b'1,{"x":2}', 2, 2)
    assert await s.page(P, "missing", 0, 10, 5) is None


async def test_a_page_of_messages_of_any_sizes_is_what_fits_in_order(stores: Stores) -> None:
    # Sizes that make a reader reading in batches (sized from the mean so far) guess
    # wrong both ways: small then large, large then small.
    sizes = [1, 2, 3, 500, 4, 4, 4, 4, 4, 4, 900, 1, 1, 1, 1, 1, 1, 1, 1, 1, 300, 7]
    bodies = [bytes([65 + i]) * n for i, n in enumerate(sizes)]
    s = stores.streams
    await s.create(P, "sizes", TEXT, bodies, True)
    for limit in (3, 8, 50):
        for most in (1, 5, 10, 600, 1000, 1 << 20):
            after = 0
            while after < len(bodies):
                found = await s.page(P, "sizes", after, limit, most)
                assert found is not None
                chunk = found[1]
                # What fits: at least one message, then greedily in order.
                want = [bodies[after]]
                for body in bodies[after + 1 : after + limit]:
                    if sum(map(len, want)) + len(body) > most:
                        break
                    want.append(body)
                assert (chunk.body, chunk.count, chunk.last) == (
                    b"".join(want),
                    len(want),
                    after + len(want),
                ), (limit, most, after)
                after = chunk.last
            end = await s.page(P, "sizes", after, limit, most)
            assert end is not None and (end[1].body, end[1].count) == (b"", 0)
