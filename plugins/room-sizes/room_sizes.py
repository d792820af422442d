"""room-sizes: a room named ``NAME#N`` holds at most N people (2 <= N <= the
server's room-max), whatever room-max says for other rooms. It decides such
a ``login`` itself with a ``join`` of capacity N (the host checks capacity
atomically and answers ``error full``); other logins and every other message
go on to the next policy.

A Python policy is a module with a class ``WitWorld`` whose methods are the
world's exports (on_connect, on_message, on_disconnect). Records are
dataclasses and variants are classes named ``Verdict_Done``, ``Action_Join``...
Build and install it with:
    scripts/install-policy.sh plugins/room-sizes/room_sizes.py
"""

import json

import wit_world
from wit_world.imports import state
from wit_world.imports.types import (
    Action_Join,
    Envelope,
    JoinRequest,
    Verdict_Done,
    Verdict_Next,
)

DEFAULT_ROOM_MAX = 10


class WitWorld(wit_world.WitWorld):
    def on_connect(self, s: str, peer_addr: str):
        return Verdict_Next()

    def on_message(self, e: Envelope):
        if e.kind != "login" or e.data is None:
            return Verdict_Next()
        try:
            login = json.loads(e.data)
        except ValueError:
            return Verdict_Next()  # the default answers badRequest
        room = login.get("roomrequest") if isinstance(login, dict) else None
        username = login.get("username") if isinstance(login, dict) else None
        if not isinstance(room, str) or not isinstance(username, str):
            return Verdict_Next()
        size = capacity(room)
        if size is None:
            return Verdict_Next()
        return Verdict_Done(
            [Action_Join(JoinRequest(session=e.from_, room=room, username=username, capacity=size))]
        )

    def on_disconnect(self, s: str):
        return []


def capacity(room: str):
    """N of a room named ``NAME#N``, capped by the server's room-max."""
    name, sep, n = room.rpartition("#")
    if not sep or not name or not n.isdigit() or len(n) > 4:
        return None
    try:
        room_max = int(state.config("room-max") or DEFAULT_ROOM_MAX)
    except ValueError:
        room_max = DEFAULT_ROOM_MAX
    return min(max(int(n), 2), room_max)
