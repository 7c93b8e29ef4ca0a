"""Retrying a run, and the operator routes: dead letters and status."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from shared.models import RunStatus
from tests.api.conftest import TOKENS, MakeApi
from tests.support.wait import wait_for
from tests.test_dev import run_cli
from workers.worker import Worker

ALICE = TOKENS["alice"]


async def test_an_ended_run_is_retried_as_a_new_run_linked_to_it(make_api: MakeApi) -> None:
    async with make_api() as api, api.client() as alice, api.client("bob") as bob:
        first = await api.create_run(alice, input={"prompt": "again", "paragraphs": 2})
        run = await api.producer.start(first["run_id"])
        early = await alice.post(f"/v1/runs/{first['run_id']}/retry")
        assert early.status_code == 409 and "running" in early.json()["error"]["message"]
        await api.runtime.runs.finish(run, RunStatus.FAILED, error="tool crashed")
        assert (await bob.post(f"/v1/runs/{first['run_id']}/retry")).status_code == 404

        retried = await alice.post(f"/v1/runs/{first['run_id']}/retry")

        assert retried.status_code == 202, retried.text
        new = (await alice.get(f"/v1/runs/{retried.json()['run_id']}")).json()
        assert new["run_id"] != first["run_id"] and new["retry_of"] == first["run_id"]
        assert new["status"] == "queued" and new["session_id"] == first["session_id"]
        assert (new["tool"], new["input"]) == ("story", {"prompt": "again", "paragraphs": 2})


async def test_operators_list_replay_and_purge_dead_letters(make_api: MakeApi) -> None:
    async with (
        make_api(admin_owners="alice") as api,
        api.client() as alice,
        api.client("bob") as bob,
    ):
        worker = Worker(api.runtime, reaper=False)
        await worker.start()
        try:
            body = f"not json {uuid.uuid4().hex}".encode()
            await api.runtime.broker.publish_run(body)  # the worker dead-letters it

            async def mine() -> list[dict[str, Any]]:
                listed = (await alice.get("/v1/dead")).json()["dead_letters"]
                return [d for d in listed if d["body_preview"] == body.decode()]

            await wait_for(mine, message="the malformed request dead-lettered")
            [letter] = await mine()
            assert letter["queue"] == api.runtime.names.runs_queue and "malformed" in str(
                letter["reason"]
            )
            assert letter["size"] == len(body) and 0 <= float(str(letter["age_s"])) < 60
            assert (await bob.get("/v1/dead")).status_code == 403
            assert (await bob.get("/v1/status")).status_code == 403

            replayed = await alice.post(f"/v1/dead/{letter['id']}/replay")
            assert replayed.status_code == 200 and replayed.json()["id"] == letter["id"]
            # Back on its queue, the worker refuses it again: a new dead letter, a new id.
            await wait_for(lambda: _one_with_another_id(mine, letter["id"]), message="dead again")
            again = await alice.post(f"/v1/dead/{letter['id']}/replay")
            assert again.status_code == 404

            # The CLI, as an operator runs it.
            [letter] = await mine()
            code, out, err = await run_cli("dead", "list", "--url", api.url, "--token", ALICE)
            assert code == 0 and letter["id"] in out, err
            code, out, err = await run_cli("dead", "purge", "--yes", "--url", api.url)
            assert code == 4 and "401" in err  # no token, no purge
            code, out, err = await run_cli(
                "dead", "purge", "--yes", "--url", api.url, "--token", ALICE
            )
            assert code == 0 and out.startswith("purged ") and await mine() == []
        finally:
            await worker.stop(grace_s=0)


async def _one_with_another_id(
    mine: Callable[[], Awaitable[list[dict[str, object]]]], old_id: object
) -> bool:
    letters = await mine()
    return len(letters) == 1 and letters[0]["id"] != old_id
