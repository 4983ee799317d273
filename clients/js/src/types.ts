// The wire's events (proto/PROTOCOL.md §3) and the client's own events.

/** A request id: the client uses integers below 2^53. */
export type Id = number | string;

/** Where a client is in a room's history: the last offset it was sent, in an epoch. */
export interface Position {
  offset: number;
  epoch: string;
}

export interface Limits {
  max_message_bytes: number;
  max_rooms: number;
  rate_per_s: number;
  burst: number;
  ping_interval_ms: number;
  presence_events_max: number;
}

export interface Welcome {
  ev: "welcome";
  conn: string;
  user: string;
  instance: string;
  limits: Limits;
  batch: boolean;
}

/** A message published to a room. `offset`/`epoch` only in rooms with history, `key` only when published with one. */
export interface RoomMessage {
  ev: "message";
  room: string;
  from: string;
  data: unknown;
  ts: number;
  mid: string;
  key?: string;
  offset?: number;
  epoch?: string;
}

/** A message sent to this user; `queued` when it waited in the offline queue (may repeat: drop duplicates by `mid`). */
export interface DirectMessage {
  ev: "direct";
  from: string;
  data: unknown;
  ts: number;
  mid: string;
  queued: boolean;
}

/** `joined` / `left`: a user's first connection came into, or last one left, a room. */
export interface PresenceChange {
  ev: "joined" | "left";
  room: string;
  user: string;
  count: number;
}

export interface PresenceDiff {
  ev: "presence_diff";
  room: string;
  joins: string[];
  leaves: string[];
  count: number;
}

/** A broadcast to every connection (of the tenant) from the server API or an admin. */
export interface Broadcast {
  ev: "broadcast";
  from: string;
  data: unknown;
  ts: number;
  mid: string;
}

export interface Presence {
  room: string;
  users: string[];
  count: number;
}

export interface History {
  room: string;
  messages: RoomMessage[];
  offset: number;
  epoch: string;
  complete: boolean;
}

/** What a join's ack said. `offset`/`epoch` for rooms with history; `recovered` when `since` was given. */
export interface Joined {
  room: string;
  offset?: number;
  epoch?: string;
  recovered?: boolean;
}

/**
 * After a reconnect, one per room the client was in. `recovered`: every
 * message missed while away was replayed (rooms with history only).
 * Otherwise messages may have been missed: reload the room's state.
 * `error` when the room could not be joined again (it is then left).
 */
export interface Rejoin {
  room: string;
  recovered: boolean;
  error?: RoomcastError;
}

/**
 * The server reported a gap in a room's messages. The client asked for the
 * missing part itself (`history` since its last offset) and delivered it as
 * `message` events; `recovered: false` means it could not: reload the room.
 */
export interface Gap {
  room: string;
  epoch: string;
  offset: number;
  recovered: boolean;
}

/**
 * Connection state. `code` of `disconnected` is the WebSocket close code,
 * or the HTTP status of a refused upgrade (401, 403, 429, 503) when the
 * platform reports it or the client found the token expired itself.
 */
export type State =
  | { state: "connecting"; attempt: number; url: string }
  | { state: "connected"; welcome: Welcome }
  | { state: "disconnected"; code: number; reason: string; willReconnect: boolean }
  | { state: "reconnecting"; delayMs: number; attempt: number };

export interface Events {
  state: State;
  message: RoomMessage;
  joined: PresenceChange;
  left: PresenceChange;
  presence_diff: PresenceDiff;
  direct: DirectMessage;
  broadcast: Broadcast;
  rejoin: Rejoin;
  gap: Gap;
  /** An `error` event that answers no pending request (`rate_limited`, `bad_frame`). */
  error: RoomcastError;
}

/**
 * A failed request: `code` is a wire error code (PROTOCOL.md §5), or
 * `timeout`, `disconnected` (the connection ended before the answer) or
 * `closed` (the client was closed).
 */
export class RoomcastError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "RoomcastError";
  }
}
