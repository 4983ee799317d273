#!/usr/bin/env python3
"""Writes proto/vectors.json, the wire protocol's test vectors.

The bytes come from Python's json and msgpack packages, not from the Rust
code, so that tests/vectors.rs proves a client written in another language
interoperates with the server byte for byte. Each vector is one frame in
both codecs:

  json         compact JSON text, fields in the Rust struct's declaration
               order (the order serde_json writes them);
  msgpack_hex  the same object as a MessagePack map with string keys, the
               smallest encoding of every integer, floats as float64 and
               strings as str (what rmp_serde::to_vec_named writes).

Object keys inside `data` are sorted, because the server holds `data` as a
serde_json::Value whose maps are ordered by key.

Refused vectors are client frames the server answers with an error (their
`code`) that carries no id; `json` is null for a frame JSON cannot express
(MessagePack bin).

Usage:
  pip install msgpack            # jsonschema too, to check the vectors
  python3 scripts/gen-vectors.py           # rewrite proto/vectors.json
  python3 scripts/gen-vectors.py --check   # fail if the file is stale
"""

import argparse
import json
import pathlib
import re
import sys

import msgpack

ROOT = pathlib.Path(__file__).resolve().parent.parent
VECTORS = ROOT / "proto" / "vectors.json"
SCHEMA = ROOT / "proto" / "schema.json"

U64_MAX = 2**64 - 1
I64_MIN = -(2**63)
TS = 1767225600123  # 2026-01-01T00:00:00.123Z in ms since the Unix epoch.
LIMITS = {
    "max_message_bytes": 65536,
    "max_rooms": 100,
    "rate_per_s": 50,
    "burst": 100,
    "ping_interval_ms": 25000,
    "presence_events_max": 1000,
}


def data(value):
    """A `data` value as the server holds it: object keys sorted."""
    if isinstance(value, dict):
        return {k: data(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [data(v) for v in value]
    return value


def client(op, id=None, room=None, to=None, payload=None, cmd=None, since=None, limit=None, key=None):
    """A ClientFrame: fields in declaration order, absent ones left out."""
    frame = {"op": op}
    for name, value in (("id", id), ("room", room), ("to", to), ("cmd", cmd)):
        if value is not None:
            frame[name] = value
    if payload is not None:
        frame["data"] = data(payload)
    if since is not None:
        frame["since"] = {"offset": since[0], "epoch": since[1]}
    if limit is not None:
        frame["limit"] = limit
    if key is not None:
        frame["key"] = key
    return frame


def message(room, sender, payload, mid, offset=None, epoch=None, key=None):
    ev = {
        "ev": "message",
        "room": room,
        "from": sender,
        "data": data(payload),
        "ts": TS,
        "mid": mid,
    }
    if key is not None:
        ev["key"] = key
    if offset is not None:
        ev["offset"] = offset
        ev["epoch"] = epoch
    return ev


EPOCH = "19b1a2c3d4e5f"  # A history epoch (opaque to clients).


def direct(sender, payload, mid, queued, ts=TS):
    return {
        "ev": "direct",
        "from": sender,
        "data": data(payload),
        "ts": ts,
        "mid": mid,
        "queued": queued,
    }


def error(code, text, id=None):
    ev = {"ev": "error"}
    if id is not None:
        ev["id"] = id
    ev["code"] = code
    ev["text"] = text
    return ev


def presence(room, users, id=None):
    ev = {"ev": "presence"}
    if id is not None:
        ev["id"] = id
    ev.update(room=room, users=users, count=len(users))
    return ev


def joined(room, user, count, kind="joined"):
    return {"ev": kind, "room": room, "user": user, "count": count}


GOBLIN = {
    "name": "Goblin \u2694\ufe0f",
    "initiative": 17,
    "hp": -12,
    "pos": [3, 4.5],
    "status": None,
    "visible": True,
    "notes": {
        "text": 'line 1\nline 2\t"quoted" \\ /\u0001',
        "big": U64_MAX,
        "small": I64_MIN,
        "ratio": -0.25,
    },
}
# 16 keys and 16 items: the map16 and array16 forms of MessagePack.
WIDE = {f"k{i:02}": i * 1000 for i in range(16)}
LONG = "\u00e9" + "x" * 299  # 301 bytes: a str16.
ID_64 = "r" * 60 + "-064"  # Exactly MAX_REQ_ID_LEN bytes.
LONG_ROOM = "campaign:7:encounter:1234567890:round-12"  # 40 bytes: a str8.

CLIENT = [
    ("join_num_id", client("join", id=1, room="encounter:42")),
    ("join_no_id", client("join", room="lobby")),
    ("join_str_id", client("join", id="j-1", room="campaign:7:map.v2_A-1")),
    ("join_long_room", client("join", id=0, room=LONG_ROOM)),
    ("leave_num_id", client("leave", id=2, room="encounter:42")),
    ("leave_no_id", client("leave", room="lobby")),
    ("publish_num_id_object", client("publish", id=3, room="encounter:42", payload=GOBLIN)),
    ("publish_no_id_string", client("publish", room="lobby", payload="hello")),
    (
        "publish_str_id_array",
        client("publish", id="pub-7", room="lobby", payload=[1, "two", 3.25, False, None, [], {}]),
    ),
    ("publish_wide_object", client("publish", id=65535, room="lobby", payload={"wide": WIDE, "seq": list(range(16))})),
    ("publish_no_data", client("publish", id=4, room="lobby")),
    ("publish_keyed", client("publish", room="encounter:42", payload={"x": 3, "y": 4.5}, key="pos:alice")),
    ("send_num_id", client("send", id=300, to="user-17", payload={"text": "hi"})),
    ("send_no_id", client("send", to="alice", payload=42)),
    ("send_str_id_long_data", client("send", id="s-1", to="bob", payload={"text": LONG})),
    ("presence_num_id", client("presence", id=70000, room="encounter:42")),
    ("presence_no_id", client("presence", room="lobby")),
    ("ping_num_id", client("ping", id=5)),
    ("ping_str_id", client("ping", id="p-5")),
    ("ping_no_id", client("ping")),
    ("ping_max_num_id", client("ping", id=U64_MAX)),
    ("ping_max_str_id", client("ping", id=ID_64)),
    ("join_admin_stats", client("join", id=20, room="$admin:stats")),
    ("leave_admin_stats_no_id", client("leave", room="$admin:stats")),
    ("admin_kick_user", client("admin", id=21, cmd="kick_user", payload={"user": "bob", "reason": "spam"})),
    ("admin_rooms_str_id", client("admin", id="rooms-1", cmd="rooms", payload={"cursor": "0", "limit": 100})),
    ("admin_instances_no_id", client("admin", cmd="instances")),
    ("join_since", client("join", id=21, room="game:7", since=(41, EPOCH))),
    ("join_since_no_id", client("join", room="game:7", since=(0, EPOCH))),
    ("history_since", client("history", id=22, room="game:7", since=(U64_MAX, EPOCH))),
    ("history_limit", client("history", id="h-1", room="game:7", limit=50)),
    ("history_limit_no_id", client("history", room="game:7", limit=1)),
]

STATS = {
    "ts": TS,
    "interval_ms": 2000,
    "instances": [
        {
            "id": "i-eu-1",
            "address": "10.0.0.5:8080",
            "version": "0.1.0",
            "uptime_s": 3600,
            "draining": False,
            "connections": 1200,
            "users": 1100,
            "rooms": 80,
            "msgs_in_per_s": 150.5,
            "msgs_out_per_s": 150.5,
            "deliveries_per_s": 9000.0,
            "direct_per_s": 2.0,
            "offline_depth": 12,
            "slow_consumer_closes": 1,
            "slow_consumer_drops": 0,
            "bus": {"mode": "cluster", "connected": True, "ready": True, "reconnects": 0, "lagged": 0, "outbox": 0},
            "outbox": 0,
            "rss_bytes": 52428800,
            "cpu_percent": 12.5,
            "ts": TS,
        }
    ],
    "totals": {"instances": 1, "connections": 1200.0, "deliveries_per_s": 9000.0},
    "top_rooms": {
        "by_members": [{"tenant": "", "room": "lobby", "members": 900}],
        "by_rate": [{"tenant": "t1", "room": "encounter:42", "msgs_per_s": 40.0}],
    },
}

SERVER = [
    (
        "welcome",
        {
            "ev": "welcome",
            "conn": "i-eu-1:17",
            "user": "alice",
            "instance": "i-eu-1",
            "limits": LIMITS,
            "batch": False,
        },
    ),
    (
        "welcome_anonymous_batch",
        {
            "ev": "welcome",
            "conn": "2f1d0c6e-4b5a-4f3e-8d2c-1b0a9f8e7d6c:7",
            "user": "anon-5be0c9a4-7",
            "instance": "2f1d0c6e-4b5a-4f3e-8d2c-1b0a9f8e7d6c",
            "limits": {
                "max_message_bytes": 1048576,
                "max_rooms": 10000,
                "rate_per_s": 1000,
                "burst": 2000,
                "ping_interval_ms": 100,
                "presence_events_max": 0,
            },
            "batch": True,
        },
    ),
    ("ack_num_id", {"ev": "ack", "id": 1}),
    ("ack_str_id", {"ev": "ack", "id": "j-1"}),
    ("ack_max_num_id", {"ev": "ack", "id": U64_MAX}),
    ("ack_history_join", {"ev": "ack", "id": 20, "offset": 0, "epoch": EPOCH}),
    ("ack_recovered", {"ev": "ack", "id": 21, "offset": 91, "epoch": EPOCH, "recovered": True}),
    ("ack_not_recovered", {"ev": "ack", "id": "j-3", "offset": 300, "epoch": EPOCH, "recovered": False}),
    ("message_history", message("game:7", "alice", {"move": [3, 4]}, "3f9a1c2e-5", offset=42, epoch=EPOCH)),
    ("message_history_max_offset", message("game:7", "bob", None, "3f9a1c2e-6", offset=U64_MAX, epoch=EPOCH)),
    (
        "history_event",
        {
            "ev": "history",
            "id": 22,
            "room": "game:7",
            "messages": [
                message("game:7", "alice", {"n": 1}, "3f9a1c2e-7", offset=42, epoch=EPOCH),
                message("game:7", "bob", "x", "3f9a1c2e-8", offset=43, epoch=EPOCH),
            ],
            "offset": 43,
            "epoch": EPOCH,
            "complete": True,
        },
    ),
    (
        "history_event_incomplete_no_id",
        {"ev": "history", "room": "game:7", "messages": [], "offset": 0, "epoch": EPOCH, "complete": False},
    ),
    ("gap", {"ev": "gap", "room": "game:7", "epoch": EPOCH, "offset": 57}),
    ("error_num_id", error("not_joined", "not in room `lobby`", id=3)),
    ("error_str_id", error("forbidden", "the token does not allow room `encounter:43`", id="j-2")),
    ("error_no_id", error("bad_frame", "expected value at line 1 column 1")),
    ("error_unknown_op", error("unknown_op", "unknown op `subscribe`", id=9)),
    ("error_bad_request", error("bad_request", "op `join` needs field `room`", id=10)),
    ("error_invalid_room", error("invalid_room", "room names are 1 to 128 bytes of A-Z a-z 0-9 : _ - .", id=11)),
    ("error_rate_limited", error("rate_limited", "over 50 ops/s")),
    ("error_too_many_rooms", error("too_many_rooms", "already in 100 rooms", id=12)),
    ("error_unavailable", error("unavailable", "the bus is unavailable, retry", id=13)),
    ("error_not_found", error("not_found", "no such instance", id=21)),
    ("stats", {"ev": "stats", "data": data(STATS)}),
    ("admin_result_num_id", {"ev": "admin", "id": 21, "cmd": "kick_user", "result": data({"user": "bob", "tenant": "", "kicked_here": 1, "instances_told": 1})}),
    ("admin_result_no_id", {"ev": "admin", "cmd": "drain", "result": data({"instance": "i-eu-1", "draining": True})}),
    ("joined", joined("encounter:42", "alice", 3)),
    ("left", joined("encounter:42", "bob", 2, kind="left")),
    ("left_empty", joined("lobby", "alice", 0, kind="left")),
    (
        "presence_diff",
        {"ev": "presence_diff", "room": "encounter:42", "joins": ["alice", "carol"], "leaves": ["bob"], "count": 5},
    ),
    ("presence_event_num_id", presence("encounter:42", ["alice", "bob", "user-17"], id=70000)),
    ("presence_event_str_id", presence("campaign:7:map", ["alice"], id="who")),
    ("presence_event_no_id_empty", presence("lobby", [])),
    ("message_object", message("encounter:42", "alice", GOBLIN, "3f9a1c2e-0")),
    ("message_string", message("lobby", "bob", "hello", "3f9a1c2e-1")),
    ("message_null", message("lobby", "bob", None, "3f9a1c2e-2")),
    ("message_wide", message(LONG_ROOM, "alice", {"wide": WIDE, "seq": list(range(16))}, "3f9a1c2e-ff")),
    ("message_keyed", message("encounter:42", "alice", {"x": 3, "y": 4.5}, "3f9a1c2e-3", key="pos:alice")),
    ("direct_live", direct("alice", {"text": "hi"}, "3f9a1c2e-100", False)),
    ("direct_queued", direct("server", {"text": LONG}, "b07c44d1-9", True, ts=TS - 60000)),
    (
        "broadcast_admin",
        {"ev": "broadcast", "from": "$admin", "data": {"text": "restart in 5 minutes"}, "ts": TS, "mid": "3f9a1c2e-7"},
    ),
    ("pong_num_id", {"ev": "pong", "id": 5}),
    ("pong_str_id", {"ev": "pong", "id": "p-5"}),
    ("pong_no_id", {"ev": "pong"}),
    ("reconnect", {"ev": "reconnect", "after_ms": 1500, "reason": "server draining"}),
    (
        "batch_two",
        {
            "ev": "batch",
            "events": [
                message("lobby", "bob", {"n": 1}, "3f9a1c2e-101"),
                joined("lobby", "carol", 4),
            ],
        },
    ),
]


# Frames refused without an id: (name, frame, error code). A frame holding
# bytes has no JSON form.
REFUSED = [
    ("ping_null_id", {"op": "ping", "id": None}, "bad_frame"),
    ("join_null_id", {"op": "join", "id": None, "room": "lobby"}, "bad_frame"),
    ("ping_bin_id", {"op": "ping", "id": b"p-5"}, "bad_frame"),
    ("ping_negative_id", {"op": "ping", "id": -1}, "bad_frame"),
    ("ping_float_id", {"op": "ping", "id": 1.5}, "bad_frame"),
    ("ping_long_str_id", {"op": "ping", "id": ID_64 + "5"}, "bad_request"),
    ("publish_bin_data", {"op": "publish", "room": "lobby", "data": b"\x00\x01"}, "bad_frame"),
    ("publish_empty_key", {"op": "publish", "room": "lobby", "key": ""}, "bad_request"),
    ("publish_long_key", {"op": "publish", "room": "lobby", "key": "k" * 129}, "bad_request"),
    ("frame_is_array", ["ping", 1], "bad_frame"),
]


def has_bytes(obj):
    if isinstance(obj, bytes):
        return True
    if isinstance(obj, dict):
        return any(has_bytes(v) for v in obj.values())
    if isinstance(obj, list):
        return any(has_bytes(v) for v in obj)
    return False


def encode(direction, name, obj, code=None):
    vector = {
        "name": name,
        "direction": direction,
        "json": None
        if has_bytes(obj)
        else json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False),
        "msgpack_hex": msgpack.packb(obj, use_bin_type=True).hex(),
    }
    if code is not None:
        vector["code"] = code
    return vector


def check_schema(vectors):
    """Validates every vector against proto/schema.json, if jsonschema is installed."""
    try:
        import jsonschema
    except ImportError:
        print("jsonschema not installed: vectors not checked against the schema", file=sys.stderr)
        return
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for vector in vectors:
        if vector["json"] is None:
            continue
        root = "ServerEvent" if vector["direction"] == "server" else "Request"
        sub = dict(schema, **{"$ref": f"#/$defs/{root}"})
        sub.pop("anyOf")
        validator = jsonschema.Draft202012Validator(sub)
        obj = json.loads(vector["json"])
        if vector["direction"] == "refused":
            assert not validator.is_valid(obj), f"{vector['name']}: the schema accepts it"
        else:
            validator.validate(obj)
    # Anonymous users in the vectors have the documented form.
    anon = re.compile(schema["$defs"]["AnonymousUserId"]["pattern"])
    for vector in vectors:
        user = json.loads(vector["json"] or "{}").get("user", "") if vector["direction"] == "server" else ""
        if user.startswith("anon-"):
            assert anon.search(user), f"{vector['name']}: {user} is not an AnonymousUserId"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if proto/vectors.json is stale")
    args = parser.parse_args()

    vectors = (
        [encode("client", n, o) for n, o in CLIENT]
        + [encode("server", n, o) for n, o in SERVER]
        + [encode("refused", n, o, code) for n, o, code in REFUSED]
    )
    names = [v["name"] for v in vectors]
    assert len(names) == len(set(names)), "vector names must be unique"
    for vector in vectors:
        if vector["json"] is None:
            continue
        obj = msgpack.unpackb(bytes.fromhex(vector["msgpack_hex"]), raw=False)
        assert obj == json.loads(vector["json"]), vector["name"]
    check_schema(vectors)

    text = json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"
    if args.check:
        if VECTORS.read_text() != text:
            sys.exit(f"{VECTORS} is stale: run scripts/gen-vectors.py")
        return
    VECTORS.write_text(text)
    print(f"wrote {len(vectors)} vectors to {VECTORS}")


if __name__ == "__main__":
    main()
