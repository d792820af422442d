// unique-names: no two people in a room share a name. A login whose
// username is already used in that room (ignoring case and surrounding
// spaces) is answered `error nameTaken`, so the client can ask for another
// name; everything else goes on to the next policy.
//
// A JavaScript policy is an ES module exporting the world's functions in
// camelCase (onConnect, onMessage, onDisconnect). Records are objects with
// camelCase keys, variants are {tag, val}, option<T> is the value or null.
// Build and install it with: scripts/install-policy.sh plugins/unique-names/unique-names.js

import state from "webrtc-chat:policy/state@0.1.0";

const NEXT = { tag: "next" };

export function onConnect(_session, _peerAddr) {
  return NEXT;
}

export function onMessage(e) {
  if (e.kind !== "login" || e.data === null) return NEXT;
  let login;
  try {
    login = JSON.parse(e.data);
  } catch {
    return NEXT; // the default answers badRequest
  }
  if (typeof login?.roomrequest !== "string" || typeof login?.username !== "string") {
    return NEXT;
  }
  const wanted = normalise(login.username);
  // Members of the room the login asks for, other than the sender (a
  // member logging in again keeps its own name).
  const taken = state
    .members(login.roomrequest)
    .filter((m) => m !== e.from)
    .some((m) => normalise(state.usernameOf(m) ?? "") === wanted);
  if (!taken) return NEXT;
  return {
    tag: "done",
    val: [
      {
        tag: "error",
        val: {
          to: e.from,
          errorType: "nameTaken",
          errorText: "Someone in this room already uses that name; pick another.",
        },
      },
    ],
  };
}

export function onDisconnect(_session) {
  return [];
}

function normalise(name) {
  return name.trim().toLowerCase();
}
