"""The local Discord's DAVE coordinator with real davey sessions and no sockets.

Each `Client` answers the coordinator's frames the way discord.py 2.7.1's
`received_binary_message` does (ops 25, 27, 29, 30 → davey calls, op 28 and op 23 back),
so the coordinator's leaf bookkeeping, epochs and external proposals are checked against
davey itself: after every join and leave, all members share one epoch and encrypt/decrypt
each other's frames.
"""

from __future__ import annotations

import struct
from typing import Any

import davey
import pytest

from voicetrack_local.discord.dave import DaveCall
from voicetrack_local.discord.mls import ExternalSender, proposals_payload, split_commit_welcome

pytestmark = pytest.mark.unit

CHANNEL = 1_234_567_890_123_456_789


class Client:
    """A DAVE member: a davey session driven by the coordinator's frames."""

    def __init__(self, call: DaveCall, user_id: int) -> None:
        self.call = call
        self.user_id = user_id
        self.connected = True
        self.session = davey.DaveSession(1, user_id, CHANNEL)
        self.executed: list[int] = []

    async def send_json(self, op: int, d: Any) -> None:
        assert op == 22
        self.executed.append(d["transition_id"])

    async def send_binary(self, op: int, payload: bytes) -> None:
        if op == 25:
            self.session.set_external_sender(payload)
        elif op == 27:
            assert payload[0] == 0  # append
            result = self.session.process_proposals(davey.ProposalsOperationType.append,
                                                    payload[1:])
            if isinstance(result, davey.CommitWelcome):
                await self.call.commit_welcome(self, result.commit + (result.welcome or b""))
        elif op in (29, 30):
            (tid,) = struct.unpack_from(">H", payload)
            if op == 29:
                self.session.process_commit(payload[2:])
            else:
                self.session.process_welcome(payload[2:])
            await self.call.transition_ready(self, tid)

    async def join(self) -> None:
        await self.call.welcome_client(self)
        await self.call.key_package(self, self.session.get_serialized_key_package())

    async def leave(self) -> None:
        self.connected = False
        await self.call.left(self)


def assert_one_group(clients: list[Client], epoch: int) -> None:
    assert {c.session.epoch for c in clients} == {epoch}
    assert all(c.session.ready for c in clients)
    frame = clients[0].session.encrypt_opus(b"\xf8\x01\x02\x03")
    for other in clients[1:]:
        assert other.session.decrypt(clients[0].user_id, davey.MediaType.audio,
                                     frame) == b"\xf8\x01\x02\x03"


async def test_joins_and_leaves_keep_one_group() -> None:
    call = DaveCall(CHANNEL)
    bot, alice, bob, carol = (Client(call, uid) for uid in (1, 2, 3, 4))
    await bot.join()
    assert call.commits == 0 and not bot.session.ready  # alone: waits for company
    await alice.join()
    assert_one_group([bot, alice], epoch=1)
    assert call.leaves == [1, 2] and bot.executed == alice.executed == [1]
    await bob.join()
    assert_one_group([bot, alice, bob], epoch=2)
    await alice.leave()
    assert_one_group([bot, bob], epoch=3)
    assert call.leaves == [1, None, 3]
    await carol.join()  # takes the leftmost blank leaf
    assert_one_group([bot, bob, carol], epoch=4)
    assert call.leaves == [1, 4, 3]
    assert carol.session.own_leaf_index == 1


async def test_rejoin_with_a_new_key_package_replaces_the_old_leaf() -> None:
    call = DaveCall(CHANNEL)
    bot, alice = Client(call, 1), Client(call, 2)
    await bot.join()
    await alice.join()
    alice.session.reinit(1, 2, CHANNEL)  # what discord.py does after op 31 or a new op 4
    await alice.join()
    assert_one_group([bot, alice], epoch=2)
    assert call.leaves == [1, 2]


def test_split_commit_welcome_matches_davey() -> None:
    sender = ExternalSender(CHANNEL)
    a, b = davey.DaveSession(1, 1, CHANNEL), davey.DaveSession(1, 2, CHANNEL)
    for s in (a, b):
        s.set_external_sender(sender.package)
    payload = proposals_payload([sender.add(b.get_serialized_key_package(), 0)])
    result = a.process_proposals(davey.ProposalsOperationType.append, payload[1:])
    assert result is not None and result.welcome is not None
    assert split_commit_welcome(result.commit + result.welcome) == (result.commit,
                                                                    result.welcome)
    assert split_commit_welcome(result.commit) == (result.commit, None)
    with pytest.raises(ValueError):
        split_commit_welcome(result.commit[:40])
