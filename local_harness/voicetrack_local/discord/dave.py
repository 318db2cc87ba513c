"""The voice server's DAVE coordinator for one call: who is in the MLS group, and when.

DAVE protocol whitepaper (daveprotocol.com), "Voice Gateway Opcodes" and "Group
membership": the server never holds group secrets. It

1. sends op 25 (external sender) to each DAVE client after op 4;
2. collects each client's key package (op 26) and proposes adds and removes as op 27 to
   the group's members (to a lone member, which then creates the group from its pending
   state at epoch 0 — davey/libdave's behaviour and the test rig's);
3. takes the first commit (op 28) of a round, announces it to the members as op 29
   `[transition_id u16] commit` and sends joiners op 30 `[transition_id u16] welcome`;
4. waits for op 23 (transition ready) from each recipient, then sends op 22 execute.

A client that cannot apply a commit or welcome sends op 31 and a fresh key package, which
this coordinator treats as "remove its old leaf, add the new package".

Leaf indices follow RFC 9420 §12.1.1 / §12.3: removes first, then each add takes the
leftmost blank leaf (or extends the tree); trailing blank leaves are truncated (§7.7).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from dataclasses import dataclass, field
from typing import Any, Protocol

from voicetrack_local.discord.mls import ExternalSender, proposals_payload, split_commit_welcome

log = logging.getLogger(__name__)

OP_EXECUTE_TRANSITION = 22
OP_EXTERNAL_SENDER = 25
OP_PROPOSALS = 27
OP_ANNOUNCE_COMMIT = 29
OP_WELCOME = 30
TRANSITION_TIMEOUT_S = 3.0


class Member(Protocol):
    """A DAVE-capable voice member (the voice server's connection object)."""

    user_id: int
    connected: bool

    async def send_json(self, op: int, d: Any) -> None: ...

    async def send_binary(self, op: int, payload: bytes) -> None: ...


@dataclass
class _Round:
    """Proposals in flight: sent to `targets`, adding `joiners`, removing `removed` leaves."""

    epoch: int
    targets: list[Member]
    joiners: list[Member]
    removed: list[int]
    creator: Member | None
    proposed: bool = False
    """Op 27 has gone to every target (a commit is announced only after that, so no
    member gets op 29 before the proposals it commits)."""
    winner: tuple[Member, bytes, bytes | None] | None = None


@dataclass
class DaveCall:
    """The MLS group of one voice channel, from the external sender's side."""

    channel_id: int
    sender: ExternalSender = field(init=False)
    epoch: int = 0
    leaves: list[int | None] = field(default_factory=list)
    """User id at each leaf index (None = blank)."""
    group: dict[int, Member] = field(default_factory=dict)
    """Members that hold the current epoch, by user id."""
    packages: dict[int, tuple[Member, bytes]] = field(default_factory=dict)
    """Key packages waiting to be added, by user id (insertion order = join order)."""
    removals: list[int] = field(default_factory=list)
    round: _Round | None = None
    transition: tuple[int, set[int], list[Member]] | None = None
    next_transition: int = 1
    commits: int = 0
    tasks: set[asyncio.Future[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.sender = ExternalSender(self.channel_id)

    async def welcome_client(self, member: Member) -> None:
        """Op 25, right after op 4 SESSION_DESCRIPTION."""
        await member.send_binary(OP_EXTERNAL_SENDER, self.sender.package)

    async def key_package(self, member: Member, package: bytes) -> None:
        """Op 26 from `member`."""
        self._drop_leaf(member.user_id)
        self.packages[member.user_id] = (member, package)
        await self.advance()

    async def left(self, member: Member) -> None:
        """`member` has left the call."""
        self.packages.pop(member.user_id, None)
        self._drop_leaf(member.user_id)
        if self.transition is not None:
            await self.transition_ready(member, self.transition[0])
        await self.advance()

    async def invalid(self, member: Member, transition_id: int) -> None:
        """Op 31: the member drops its state; its new key package (op 26) follows."""
        log.info("user %s refused transition %s", member.user_id, transition_id)
        self._drop_leaf(member.user_id)
        await self.transition_ready(member, transition_id)

    def _drop_leaf(self, user_id: int) -> None:
        if self.group.pop(user_id, None) is not None and user_id in self.leaves:
            self.removals.append(self.leaves.index(user_id))
        if not self.group:  # nobody holds the group any more: the next one starts over
            self.leaves, self.removals, self.epoch = [], [], 0

    async def advance(self) -> None:
        """Open the next round of proposals when nothing is in flight."""
        if self.round is not None or self.transition is not None:
            return
        waiting = [m for m, _ in self.packages.values() if m.connected]
        if not self.group:
            if len(waiting) < 2:
                return  # a lone member waits for company (its pending group is epoch 0)
            creator, joiners = waiting[0], waiting[1:]
            self.packages.pop(creator.user_id)
            self.round = _Round(0, [creator], joiners, [], creator)
            proposals = [self.sender.add(self.packages[j.user_id][1], 0) for j in joiners]
        else:
            if not waiting and not self.removals:
                return
            removed = sorted(set(self.removals))
            proposals = [self.sender.remove(leaf, self.epoch) for leaf in removed]
            proposals += [self.sender.add(self.packages[j.user_id][1], self.epoch)
                          for j in waiting]
            self.round = _Round(self.epoch, list(self.group.values()), waiting, removed, None)
        rnd, payload = self.round, proposals_payload(proposals)
        for target in rnd.targets:
            await target.send_binary(OP_PROPOSALS, payload)
        rnd.proposed = True
        if rnd.winner is not None:
            await self._announce(rnd)

    async def commit_welcome(self, member: Member, data: bytes) -> None:
        """Op 28 from `member`: the first valid commit of the open round wins."""
        rnd = self.round
        if rnd is None or member not in rnd.targets or rnd.winner is not None:
            return
        try:
            commit, welcome = split_commit_welcome(data)
        except ValueError as exc:
            log.warning("op 28 from %s does not parse: %s", member.user_id, exc)
            return
        rnd.winner = (member, commit, welcome)
        if rnd.proposed:
            await self._announce(rnd)

    async def _announce(self, rnd: _Round) -> None:
        """Op 29 to the members, op 30 to the joiners; then wait for their op 23."""
        assert rnd.winner is not None
        _, commit, welcome = rnd.winner
        self.round = None
        tid = self.next_transition
        self.next_transition = tid % 0xFFFF + 1
        self._apply(rnd)
        self.commits += 1
        recipients = [*rnd.targets, *rnd.joiners]
        self.transition = (tid, {m.user_id for m in recipients}, recipients)
        prefix = struct.pack(">H", tid)
        for target in rnd.targets:
            await target.send_binary(OP_ANNOUNCE_COMMIT, prefix + commit)
        if rnd.joiners and welcome is not None:
            for joiner in rnd.joiners:
                await joiner.send_binary(OP_WELCOME, prefix + welcome)
        asyncio.get_running_loop().call_later(TRANSITION_TIMEOUT_S, self._schedule_expiry, tid)

    def _apply(self, rnd: _Round) -> None:
        """The group after the winning commit (RFC 9420 §12.3 order)."""
        if rnd.creator is not None:
            self.leaves = [rnd.creator.user_id]
            self.group[rnd.creator.user_id] = rnd.creator
        for leaf in rnd.removed:
            if leaf < len(self.leaves):
                self.leaves[leaf] = None
        self.removals = [leaf for leaf in self.removals if leaf not in rnd.removed]
        for joiner in rnd.joiners:
            self.packages.pop(joiner.user_id, None)
            if None in self.leaves:
                self.leaves[self.leaves.index(None)] = joiner.user_id
            else:
                self.leaves.append(joiner.user_id)
            self.group[joiner.user_id] = joiner
        while self.leaves and self.leaves[-1] is None:
            self.leaves.pop()
        self.epoch = rnd.epoch + 1
        for joiner in rnd.joiners:  # a joiner that left meanwhile is removed next round
            if not joiner.connected:
                self._drop_leaf(joiner.user_id)

    async def transition_ready(self, member: Member, transition_id: int) -> None:
        """Op 23; when every recipient is ready, op 22 executes the transition."""
        if self.transition is None or self.transition[0] != transition_id:
            return
        self.transition[1].discard(member.user_id)
        if not self.transition[1]:
            await self._execute()

    def _schedule_expiry(self, transition_id: int) -> None:
        task = asyncio.ensure_future(self._expire(transition_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _expire(self, transition_id: int) -> None:
        if self.transition is not None and self.transition[0] == transition_id:
            log.warning("transition %s: no op 23 from %s; executing", transition_id,
                        sorted(self.transition[1]))
            await self._execute()

    async def _execute(self) -> None:
        assert self.transition is not None
        tid, _, recipients = self.transition
        self.transition = None
        for member in recipients:
            if member.connected:
                await member.send_json(OP_EXECUTE_TRANSITION, {"transition_id": tid})
        await self.advance()
