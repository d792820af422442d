import { describe, it, expect, beforeEach, vi } from 'vitest'
import { Signaling, defaultSignalingUrl } from '../src/lib/signaling'
import { FakeWebSocket, resetFakes } from './fakes'

function make() {
  const timers: Array<{ fn: () => void; ms: number }> = []
  const sig = new Signaling('wss://h/ws', {
    WebSocketImpl: FakeWebSocket as unknown as new (u: string) => WebSocket,
    backoff: [100, 200, 400],
    setTimer: (fn, ms) => {
      const t = { fn, ms }
      timers.push(t)
      return t
    },
    clearTimer: (t) => {
      const i = timers.indexOf(t as (typeof timers)[number])
      if (i >= 0) timers.splice(i, 1)
    },
  })
  return { sig, timers }
}

describe('Signaling', () => {
  beforeEach(resetFakes)

  it('uses wss://host/ws (ws:// only for plain http)', () => {
    expect(defaultSignalingUrl({ protocol: 'https:', host: 'chat.example:8443' })).toBe('wss://chat.example:8443/ws')
    expect(defaultSignalingUrl({ protocol: 'http:', host: 'localhost:5173' })).toBe('ws://localhost:5173/ws')
  })

  it('queues frames until open, then sends them in order', () => {
    const { sig } = make()
    const statuses: string[] = []
    sig.on('status', (s) => statuses.push(s))
    sig.connect()
    expect(sig.send({ type: 'randomCheck', data: 'x' })).toBe(true)
    sig.send({ type: 'login', data: { roomrequest: 'r', username: 'u' } })
    const ws = FakeWebSocket.last()
    expect(ws.url).toBe('wss://h/ws')
    expect(ws.sent).toEqual([])
    ws.open()
    expect(ws.sent.map((f) => f.type)).toEqual(['randomCheck', 'login'])
    expect(statuses).toEqual(['connecting', 'open'])
  })

  it('emits parsed frames and drops unknown ones', () => {
    const { sig } = make()
    const got: unknown[] = []
    sig.on('frame', (f) => got.push(f))
    sig.connect()
    const ws = FakeWebSocket.last()
    ws.open()
    ws.receive({ type: 'joined', data: 'me' })
    ws.receive('garbage')
    ws.receive({ type: 'somethingNew' })
    expect(got).toHaveLength(1)
    expect(got[0]).toMatchObject({ type: 'joined', selfId: 'me' })
  })

  it('reconnects with backoff after a drop and resets the backoff once open', () => {
    const { sig, timers } = make()
    const closes: unknown[] = []
    sig.on('close', (c) => closes.push(c))
    sig.connect()
    FakeWebSocket.last().open()
    FakeWebSocket.last().drop()
    expect(closes).toEqual([{ code: 1006, reason: '', willReconnect: true, final: false }])
    expect(timers).toHaveLength(1)
    expect(timers[0].ms).toBeGreaterThanOrEqual(80)
    expect(timers[0].ms).toBeLessThanOrEqual(120)
    timers.shift()!.fn()
    expect(FakeWebSocket.instances).toHaveLength(2)
    FakeWebSocket.last().drop() // failed attempt: longer wait
    expect(timers[0].ms).toBeGreaterThanOrEqual(160)
    timers.shift()!.fn()
    FakeWebSocket.last().open()
    FakeWebSocket.last().drop()
    expect(timers[0].ms).toBeLessThanOrEqual(120) // back to the first step
  })

  it('does not come back after a close that means so (4001, 1008, 4xxx), until asked to', () => {
    for (const code of [4001, 1008, 4000, 4999]) {
      const { sig, timers } = make()
      const closes: any[] = []
      sig.on('close', (c) => closes.push(c))
      sig.connect()
      FakeWebSocket.last().open()
      const n = FakeWebSocket.instances.length
      FakeWebSocket.last().drop(code)
      expect(closes).toEqual([{ code, reason: '', willReconnect: false, final: true }])
      expect(sig.status).toBe('idle')
      expect(timers).toHaveLength(0)
      expect(FakeWebSocket.instances).toHaveLength(n)
      // nothing is queued for a socket that is not coming
      expect(sig.send({ type: 'login' })).toBe(false)
      sig.connect() // the user asks again
      expect(FakeWebSocket.instances).toHaveLength(n + 1)
    }
    // network losses and restarts still reconnect
    for (const code of [1006, 1001, 1000, 1009, 1011]) {
      const { sig, timers } = make()
      sig.connect()
      FakeWebSocket.last().open()
      FakeWebSocket.last().drop(code)
      expect(timers).toHaveLength(1)
    }
  })

  it('drops queued frames with the socket that closed (a new socket is a new session)', () => {
    const { sig, timers } = make()
    sig.connect()
    sig.send({ type: 'offer', to: 'x', data: {} })
    FakeWebSocket.last().drop()
    timers.shift()!.fn()
    FakeWebSocket.last().open()
    expect(FakeWebSocket.last().sent).toEqual([])
  })

  it('close() stops for good and restart() opens a fresh socket', () => {
    const { sig, timers } = make()
    const onClose = vi.fn()
    sig.on('close', onClose)
    sig.connect()
    const ws = FakeWebSocket.last()
    ws.open()
    sig.close()
    expect(ws.closedWith).toBe(1000)
    expect(sig.status).toBe('idle')
    expect(onClose).not.toHaveBeenCalled()
    expect(timers).toHaveLength(0)
    expect(sig.send({ type: 'login' })).toBe(false)
    sig.restart()
    expect(FakeWebSocket.instances).toHaveLength(2)
  })
})
