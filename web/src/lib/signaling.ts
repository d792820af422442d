// One WebSocket to the host, speaking protocol.md. Reconnects with backoff while
// wanted, except after a close that means "do not come back" (isFinalClose:
// 1008, 4000–4999 — a policy refused or removed us); frames queued before the
// socket opens are sent on open (and dropped if that socket closes first: a
// new socket is a new session).
import { isFinalClose, parseServerFrame, type ClientFrame, type ServerFrame } from './protocol'

export type SignalingStatus = 'idle' | 'connecting' | 'open' | 'closed'

export interface SignalingEvents {
  open: () => void
  /** `final`: the server told us not to come back; no reconnect follows until connect() is called again */
  close: (info: { code: number; reason: string; willReconnect: boolean; final: boolean }) => void
  frame: (frame: ServerFrame) => void
  status: (status: SignalingStatus) => void
}

type WSCtor = new (url: string) => WebSocket

export interface SignalingOptions {
  WebSocketImpl?: WSCtor
  /** delays in ms for consecutive reconnect attempts (last one repeats) */
  backoff?: number[]
  setTimer?: (fn: () => void, ms: number) => unknown
  clearTimer?: (t: unknown) => void
}

export function defaultSignalingUrl(loc: Pick<Location, 'protocol' | 'host'> = location): string {
  const scheme = loc.protocol === 'http:' ? 'ws' : 'wss'
  return `${scheme}://${loc.host}/ws`
}

export class Signaling {
  status: SignalingStatus = 'idle'
  private ws: WebSocket | null = null
  private queue: string[] = []
  private wanted = false
  private attempt = 0
  private timer: unknown = null
  private listeners: { [K in keyof SignalingEvents]: Set<SignalingEvents[K]> } = {
    open: new Set(),
    close: new Set(),
    frame: new Set(),
    status: new Set(),
  }
  private readonly WS: WSCtor
  private readonly backoff: number[]
  private readonly setTimer: (fn: () => void, ms: number) => unknown
  private readonly clearTimer: (t: unknown) => void

  constructor(
    readonly url: string,
    opts: SignalingOptions = {},
  ) {
    this.WS = opts.WebSocketImpl ?? (globalThis.WebSocket as unknown as WSCtor)
    this.backoff = opts.backoff ?? [300, 1000, 2000, 4000, 8000]
    this.setTimer = opts.setTimer ?? ((fn, ms) => setTimeout(fn, ms))
    this.clearTimer = opts.clearTimer ?? ((t) => clearTimeout(t as ReturnType<typeof setTimeout>))
  }

  on<K extends keyof SignalingEvents>(event: K, fn: SignalingEvents[K]): () => void {
    this.listeners[event].add(fn)
    return () => this.listeners[event].delete(fn)
  }

  private emit<K extends keyof SignalingEvents>(event: K, ...args: Parameters<SignalingEvents[K]>) {
    for (const fn of this.listeners[event]) (fn as (...a: unknown[]) => void)(...args)
  }

  private setStatus(s: SignalingStatus) {
    if (this.status === s) return
    this.status = s
    this.emit('status', s)
  }

  /** Open (or keep) the socket; reconnect automatically until close() is called. */
  connect() {
    this.wanted = true
    if (this.ws && (this.ws.readyState === 0 || this.ws.readyState === 1)) return
    if (this.timer !== null) {
      this.clearTimer(this.timer)
      this.timer = null
    }
    this.open()
  }

  private open() {
    this.setStatus('connecting')
    let ws: WebSocket
    try {
      ws = new this.WS(this.url)
    } catch {
      this.scheduleReconnect()
      return
    }
    this.ws = ws
    ws.onopen = () => {
      if (this.ws !== ws) return
      this.attempt = 0
      this.setStatus('open')
      const q = this.queue
      this.queue = []
      for (const text of q) ws.send(text)
      this.emit('open')
    }
    ws.onmessage = (ev: MessageEvent) => {
      if (this.ws !== ws || typeof ev.data !== 'string') return
      const frame = parseServerFrame(ev.data)
      if (frame) this.emit('frame', frame)
    }
    ws.onclose = (ev: CloseEvent) => {
      if (this.ws !== ws) return
      this.ws = null
      this.queue = []
      const final = isFinalClose(ev.code)
      if (final) this.wanted = false
      // 'closed' means "down, coming back"; after a final close no socket is coming: 'idle'
      this.setStatus(final ? 'idle' : 'closed')
      const willReconnect = this.wanted
      this.emit('close', { code: ev.code, reason: ev.reason, willReconnect, final })
      if (willReconnect) this.scheduleReconnect()
    }
    ws.onerror = () => {
      /* a close event always follows */
    }
  }

  private scheduleReconnect() {
    if (!this.wanted || this.timer !== null) return
    const base = this.backoff[Math.min(this.attempt, this.backoff.length - 1)]
    this.attempt++
    const delay = Math.round(base * (0.8 + Math.random() * 0.4))
    this.timer = this.setTimer(() => {
      this.timer = null
      if (this.wanted) this.open()
    }, delay)
  }

  /** Send a frame now, or when the socket opens. Returns false if there is no socket coming. */
  send(frame: ClientFrame): boolean {
    const text = JSON.stringify(frame)
    if (this.ws && this.ws.readyState === 1) {
      this.ws.send(text)
      return true
    }
    if (this.wanted) {
      this.queue.push(text)
      if (!this.ws) this.connect()
      return true
    }
    return false
  }

  /** Close for good (no reconnect) — leaving a room is closing its session. */
  close() {
    this.wanted = false
    this.queue = []
    if (this.timer !== null) {
      this.clearTimer(this.timer)
      this.timer = null
    }
    const ws = this.ws
    this.ws = null
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null
      try {
        ws.close(1000)
      } catch {
        /* ignore */
      }
    }
    this.setStatus('idle')
  }

  /** Drop the current socket and open a new one (a new session) at once. */
  restart() {
    this.close()
    this.attempt = 0
    this.connect()
  }
}
