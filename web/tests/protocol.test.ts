import { describe, it, expect } from 'vitest'
import { parseServerFrame, frames, validateField, uuidv4, UUID_RE } from '../src/lib/protocol'

const p = (o: unknown) => parseServerFrame(JSON.stringify(o))

describe('parseServerFrame', () => {
  it('reads joined with members and iceServers', () => {
    const f = p({
      type: 'joined',
      data: 'me',
      room: 'r1',
      members: [{ sessionId: 'a', username: 'A' }, { bogus: 1 }],
      iceServers: [
        { urls: 'stun:h:3478' },
        { urls: ['turn:h:3478?transport=udp'], username: '123:me', credential: 'x' },
        { urls: 5 },
      ],
    })
    expect(f).toEqual({
      type: 'joined',
      selfId: 'me',
      room: 'r1',
      members: [{ sessionId: 'a', username: 'A' }],
      iceServers: [
        { urls: 'stun:h:3478' },
        { urls: ['turn:h:3478?transport=udp'], username: '123:me', credential: 'x' },
      ],
    })
  })

  it('reads a joined from an old host (no extras)', () => {
    expect(p({ type: 'joined', data: 'me' })).toMatchObject({ selfId: 'me', members: [], iceServers: [] })
  })

  it('reads login, offer, answer, candidate, logout', () => {
    expect(p({ type: 'login', from: 'n', data: { roomrequest: 'r', username: 'New' } })).toEqual({
      type: 'login',
      from: 'n',
      username: 'New',
      room: 'r',
    })
    expect(p({ type: 'offer', from: 'a', username: 'A', to: 'me', data: { type: 'offer', sdp: 'v=0' } })).toEqual({
      type: 'offer',
      from: 'a',
      username: 'A',
      description: { type: 'offer', sdp: 'v=0' },
    })
    // older clients may stringify the description
    expect(p({ type: 'answer', from: 'a', data: JSON.stringify({ type: 'answer', sdp: 'v=0' }) })).toMatchObject({
      description: { type: 'answer', sdp: 'v=0' },
    })
    expect(p({ type: 'candidate', from: 'a', data: { candidate: 'candidate:1', sdpMid: '0', sdpMLineIndex: 0 } })).toEqual({
      type: 'candidate',
      from: 'a',
      candidate: { candidate: 'candidate:1', sdpMid: '0', sdpMLineIndex: 0 },
    })
    expect(p({ type: 'logout', from: 'a', data: { username: 'A', sessionId: 'a' } })).toEqual({
      type: 'logout',
      from: 'a',
      username: 'A',
    })
  })

  it('reads errors and randomCheckResult', () => {
    expect(p({ type: 'error', message: { errorType: 'full', errorText: 'room is full' } })).toEqual({
      type: 'error',
      errorType: 'full',
      errorText: 'room is full',
    })
    expect(p({ type: 'randomCheckResult', data: { result: 'ok', roomrequest: 'u' } })).toEqual({
      type: 'randomCheckResult',
      ok: true,
      room: 'u',
    })
    expect(p({ type: 'randomCheckResult', data: { result: 'fail', roomrequest: 'u' } })).toMatchObject({ ok: false })
  })

  it('ignores garbage and unknown types', () => {
    expect(parseServerFrame('not json')).toBeNull()
    expect(parseServerFrame('[1,2]')).toBeNull()
    expect(p({ type: 7 })).toBeNull()
    expect(p({ type: 'kick' })).toBeNull()
    expect(p({ type: 'offer', data: { sdp: 'x' } })).toBeNull() // no from
    expect(p({ type: 'offer', from: 'a', data: 5 })).toBeNull()
    expect(p({ type: 'joined' })).toBeNull()
  })
})

describe('client frames', () => {
  it('match protocol.md exactly', () => {
    expect(frames.login('room', 'me')).toEqual({ type: 'login', data: { roomrequest: 'room', username: 'me' } })
    expect(frames.offer('b', 'Me', { type: 'offer', sdp: 's' })).toEqual({
      type: 'offer',
      to: 'b',
      username: 'Me',
      data: { type: 'offer', sdp: 's' },
    })
    expect(frames.answer('b', { type: 'answer', sdp: 's' })).toEqual({ type: 'answer', to: 'b', data: { type: 'answer', sdp: 's' } })
    expect(frames.candidate('b', { candidate: 'c', sdpMid: '0' })).toEqual({
      type: 'candidate',
      to: 'b',
      data: { candidate: 'c', sdpMid: '0' },
    })
    expect(frames.randomCheck('u')).toEqual({ type: 'randomCheck', data: 'u' })
  })
})

describe('validateField', () => {
  it('trims and bounds like the host', () => {
    expect(validateField('  room 1 ', 128)).toEqual({ value: 'room 1', ok: true })
    expect(validateField('   ', 128)).toMatchObject({ ok: false, reason: 'empty' })
    expect(validateField('a'.repeat(65), 64)).toMatchObject({ ok: false, reason: 'long' })
    expect(validateField('가'.repeat(64), 64)).toMatchObject({ ok: true })
    expect(validateField('😀'.repeat(64), 64)).toMatchObject({ ok: true }) // scalar values, not UTF-16 units
    expect(validateField('a\u200bb', 64)).toMatchObject({ ok: false, reason: 'chars' })
    expect(validateField('a\u202eb', 64)).toMatchObject({ ok: false, reason: 'chars' })
    expect(validateField('a\nb', 64)).toMatchObject({ ok: false, reason: 'chars' })
    for (const bad of ['a\u061cb', 'a\u2028b', 'a\u034fb', '\u3164', 'a\u{e0041}b', 'a\u00adb']) {
      expect(validateField(bad, 64)).toMatchObject({ ok: false, reason: 'chars' })
    }
    expect(validateField('\u2764\ufe0f', 64)).toMatchObject({ ok: true })
  })
})

describe('uuidv4', () => {
  it('is a v4 UUID and varies', () => {
    const a = uuidv4()
    expect(a).toMatch(UUID_RE)
    expect(uuidv4()).not.toBe(a)
  })
})
