// The signaling wire format (docs/protocol.md, v1). This module is the
// only place that knows frame shapes; everything else uses these helpers.

export type ErrorType =
  | 'full'
  | 'badRequest'
  | 'notInRoom'
  | 'rateLimited'
  | 'forbidden'
  | 'internal'
  | 'passwordRequired'
  | 'wrongPassword'

export interface Member {
  sessionId: string
  username: string
}

export interface JoinedFrame {
  type: 'joined'
  selfId: string
  room: string | null
  members: Member[]
  iceServers: RTCIceServer[]
}
export interface LoginFrame {
  type: 'login'
  from: string
  username: string
  room: string | null
}
export interface OfferFrame {
  type: 'offer'
  from: string
  username: string | null
  description: RTCSessionDescriptionInit
}
export interface AnswerFrame {
  type: 'answer'
  from: string
  description: RTCSessionDescriptionInit
}
export interface CandidateFrame {
  type: 'candidate'
  from: string
  candidate: RTCIceCandidateInit
}
export interface LogoutFrame {
  type: 'logout'
  from: string
  username: string | null
}
export interface ErrorFrame {
  type: 'error'
  errorType: string
  errorText: string
}
/** The answer to `hello`: what the server's policy chain offers (e.g. "password", "kick"). */
export interface HelloFrame {
  type: 'hello'
  capabilities: string[]
}
/** moderation: the room's owner removed us; close 4001 follows. */
export interface KickedFrame {
  type: 'kicked'
  room: string | null
  by: string | null
}
export interface RandomCheckResultFrame {
  type: 'randomCheckResult'
  ok: boolean
  room: string
}

export type ServerFrame =
  | JoinedFrame
  | LoginFrame
  | OfferFrame
  | AnswerFrame
  | CandidateFrame
  | LogoutFrame
  | ErrorFrame
  | RandomCheckResultFrame
  | HelloFrame
  | KickedFrame

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}
function str(v: unknown): string | null {
  return typeof v === 'string' ? v : null
}

/** An SDP may arrive as an object ({type, sdp}) or, from older clients, as a JSON string of one. */
function parseDescription(v: unknown, fallbackType: 'offer' | 'answer'): RTCSessionDescriptionInit | null {
  if (typeof v === 'string') {
    try {
      const inner = JSON.parse(v)
      if (isObj(inner)) return parseDescription(inner, fallbackType)
    } catch {
      /* a raw SDP string */
    }
    return v.startsWith('v=') ? { type: fallbackType, sdp: v } : null
  }
  if (!isObj(v)) return null
  const sdp = str(v.sdp)
  if (sdp === null) return null
  const t = str(v.type)
  const type = t === 'offer' || t === 'answer' || t === 'pranswer' || t === 'rollback' ? t : fallbackType
  return { type, sdp }
}

function parseCandidate(v: unknown): RTCIceCandidateInit | null {
  if (typeof v === 'string') {
    try {
      return parseCandidate(JSON.parse(v))
    } catch {
      return null
    }
  }
  if (!isObj(v)) return null
  const candidate = str(v.candidate)
  if (candidate === null) return null
  const out: RTCIceCandidateInit = { candidate }
  if (typeof v.sdpMid === 'string' || v.sdpMid === null) out.sdpMid = v.sdpMid as string | null
  if (typeof v.sdpMLineIndex === 'number' || v.sdpMLineIndex === null) out.sdpMLineIndex = v.sdpMLineIndex as number | null
  if (typeof v.usernameFragment === 'string') out.usernameFragment = v.usernameFragment
  return out
}

function parseIceServers(v: unknown): RTCIceServer[] {
  if (!Array.isArray(v)) return []
  const out: RTCIceServer[] = []
  for (const s of v) {
    if (!isObj(s)) continue
    const urls = Array.isArray(s.urls) ? s.urls.filter((u): u is string => typeof u === 'string') : str(s.urls)
    if (!urls || (Array.isArray(urls) && urls.length === 0)) continue
    const server: RTCIceServer = { urls }
    if (typeof s.username === 'string') server.username = s.username
    if (typeof s.credential === 'string') server.credential = s.credential
    out.push(server)
  }
  return out
}

/** Parse one text frame from the host. Returns null for anything we do not understand. */
export function parseServerFrame(text: string): ServerFrame | null {
  let m: unknown
  try {
    m = JSON.parse(text)
  } catch {
    return null
  }
  if (!isObj(m) || typeof m.type !== 'string') return null
  const from = str(m.from) ?? ''
  switch (m.type) {
    case 'joined': {
      const selfId = str(m.data)
      if (!selfId) return null
      const members = Array.isArray(m.members)
        ? m.members
            .filter(isObj)
            .map((x) => ({ sessionId: str(x.sessionId) ?? '', username: str(x.username) ?? '' }))
            .filter((x) => x.sessionId !== '')
        : []
      return { type: 'joined', selfId, room: str(m.room), members, iceServers: parseIceServers(m.iceServers) }
    }
    case 'login': {
      if (!from) return null
      const d = isObj(m.data) ? m.data : {}
      // The host's validated name first (a policy may rewrite data).
      const username = str(m.username) ?? str(d.username) ?? ''
      return { type: 'login', from, username, room: str(d.roomrequest) }
    }
    case 'offer': {
      const description = parseDescription(m.data, 'offer')
      if (!from || !description) return null
      return { type: 'offer', from, username: str(m.username), description }
    }
    case 'answer': {
      const description = parseDescription(m.data, 'answer')
      if (!from || !description) return null
      return { type: 'answer', from, description }
    }
    case 'candidate': {
      const candidate = parseCandidate(m.data)
      if (!from || !candidate) return null
      return { type: 'candidate', from, candidate }
    }
    case 'logout': {
      const d = isObj(m.data) ? m.data : {}
      const id = from || str(d.sessionId) || ''
      if (!id) return null
      return { type: 'logout', from: id, username: str(d.username) ?? str(m.username) }
    }
    case 'error': {
      const msg = isObj(m.message) ? m.message : isObj(m.data) ? m.data : {}
      return {
        type: 'error',
        errorType: str(msg.errorType) ?? 'internal',
        errorText: str(msg.errorText) ?? str(m.message) ?? '',
      }
    }
    case 'randomCheckResult': {
      const d = isObj(m.data) ? m.data : {}
      const room = str(d.roomrequest)
      if (room === null) return null
      return { type: 'randomCheckResult', ok: d.result === 'ok', room }
    }
    case 'hello': {
      const d = isObj(m.data) ? m.data : {}
      const capabilities = Array.isArray(d.capabilities)
        ? d.capabilities.filter((c): c is string => typeof c === 'string' && c.length > 0 && c.length <= 32)
        : []
      return { type: 'hello', capabilities }
    }
    case 'kicked': {
      const d = isObj(m.data) ? m.data : {}
      return { type: 'kicked', room: str(d.room), by: str(d.by) }
    }
    default:
      return null
  }
}

// ---- client → server -------------------------------------------------------

export type ClientFrame = Record<string, unknown> & { type: string }

export const frames = {
  /** `password` goes out only when non-empty (and only to a server that declared "password"). */
  login: (roomrequest: string, username: string, password = ''): ClientFrame => ({
    type: 'login',
    data: password ? { roomrequest, username, password } : { roomrequest, username },
  }),
  hello: (): ClientFrame => ({ type: 'hello' }),
  kick: (to: string): ClientFrame => ({ type: 'kick', to }),
  offer: (to: string, username: string, description: RTCSessionDescriptionInit): ClientFrame => ({
    type: 'offer',
    to,
    username,
    data: { type: description.type, sdp: description.sdp },
  }),
  answer: (to: string, description: RTCSessionDescriptionInit): ClientFrame => ({
    type: 'answer',
    to,
    data: { type: description.type, sdp: description.sdp },
  }),
  candidate: (to: string, candidate: RTCIceCandidateInit): ClientFrame => ({
    type: 'candidate',
    to,
    data: candidate,
  }),
  randomCheck: (id: string): ClientFrame => ({ type: 'randomCheck', data: id }),
}

/**
 * Close codes after which the client must not come back on its own: a policy
 * refused or removed this session (1008, 4000–4999, e.g. 4001 "removed by the
 * room owner"). Anything else (1006 network loss, 1001 restart, …) reconnects.
 */
export function isFinalClose(code: number): boolean {
  return code === 1008 || (code >= 4000 && code <= 4999)
}

export const ROOM_MAX_LEN = 128
export const NAME_MAX_LEN = 64

/** Trim and check a room id or user name the way the host does (length in Unicode scalar values). */
export function validateField(value: string, max: number): { value: string; ok: boolean; reason?: 'empty' | 'long' | 'chars' } {
  const v = value.trim()
  if (v.length === 0) return { value: v, ok: false, reason: 'empty' }
  if ([...v].length > max) return { value: v, ok: false, reason: 'long' }
  // control, bidi-override, zero-width and invisible characters are refused by the host (host/src/signaling/names.rs)
  if (/[\u0000-\u001f\u007f-\u009f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb\u{1d173}-\u{1d17a}\u{e0000}-\u{e007f}]/u.test(v)) {
    return { value: v, ok: false, reason: 'chars' }
  }
  return { value: v, ok: true }
}

export function uuidv4(): string {
  const c = globalThis.crypto
  if (c && typeof c.randomUUID === 'function') return c.randomUUID()
  const b = new Uint8Array(16)
  c.getRandomValues(b)
  b[6] = (b[6] & 0x0f) | 0x40
  b[8] = (b[8] & 0x3f) | 0x80
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}

export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/i
