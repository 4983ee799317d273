export { Roomcast } from "./client.js";
export type { Options, SocketConstructor, SocketLike, Status, TokenContext } from "./client.js";
export { json } from "./codec.js";
export type { Codec } from "./codec.js";
export { RoomcastError } from "./types.js";
export type {
  Broadcast,
  DirectMessage,
  Events,
  Gap,
  History,
  Id,
  Joined,
  Limits,
  Position,
  Presence,
  PresenceChange,
  PresenceDiff,
  Rejoin,
  RoomMessage,
  State,
  Welcome,
} from "./types.js";
