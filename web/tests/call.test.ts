import { describe, it, expect, beforeEach, vi } from 'vitest'
import { setActivePinia, createPinia } from 'pinia'
import { CallController } from '../src/call'
import { FakeWebSocket, FakePC, FakeStream, FakeTrack, fakePCFactory, fakeStreamFactory, flush, resetFakes } from './fakes'
import type { LocalMedia } from '../src/lib/media'
import { CHAT_PROTOCOL } from '../src/lib/peers'

function setup(media?: Partial<LocalMedia>) {
  const timers: Array<() => void> = []
  const stream = new FakeStream([new FakeTrack('audio'), new FakeTrack('video')])
  const call = new CallController({
    url: 'wss://h/ws',
    signaling: {
      WebSocketImpl: FakeWebSocket as unknown as new (u: string) => WebSocket,
      setTimer: (fn) => {
        timers.push(fn)
        return fn
      },
      clearTimer: () => {},
    },
    createPeerConnection: fakePCFactory,
    createStream: fakeStreamFactory,
    getLocalMedia: async () => ({
      stream: stream as unknown as MediaStream,
      hasVideo: true,
      hasAudio: true,
      issue: 'none',
      ...media,
    }),
  })
  return { call, timers, stream }
}

async function joinRoom(call: CallController, members: { sessionId: string; username: string }[] = []) {
  call.start()
  const ws = FakeWebSocket.last()
  ws.open()
  await call.join(' room1 ', ' Me ')
  expect(ws.sentOf('login')).toEqual([{ type: 'login', data: { roomrequest: 'room1', username: 'Me' } }])
  ws.receive({
    type: 'joined',
    data: 'me',
    room: 'room1',
    members: [{ sessionId: 'me', username: 'Me' }, ...members],
    iceServers: [{ urls: 'turn:h:3478', username: 'u', credential: 'c' }],
  })
  return ws
}

describe('CallController', () => {
  beforeEach(() => {
    resetFakes()
    setActivePinia(createPinia())
  })

  it('validates fields before joining', async () => {
    const { call } = setup()
    await call.join('  ', 'x'.repeat(70))
    expect(call.session.phase).toBe('login')
    expect(call.session.roomIssue).toBe('empty')
    expect(call.session.nameIssue).toBe('long')
  })

  it('joins: media first, then login; joined takes ICE servers only from the host', async () => {
    const { call } = setup()
    await joinRoom(call, [{ sessionId: 'old', username: 'Old' }])
    const s = call.session
    expect(s.phase).toBe('room')
    expect(s.selfId).toBe('me')
    expect(s.iceServers).toEqual([{ urls: 'turn:h:3478', username: 'u', credential: 'c' }])
    expect(call.peersStore.list.map((p) => [p.id, p.username, p.state])).toEqual([['old', 'Old', 'new']])
    expect(call.chat.entries[0]).toMatchObject({ kind: 'notice', notice: 'youJoined', params: { room: 'room1' } })
  })

  it('sends login once the socket opens if it was not open yet', async () => {
    const { call } = setup()
    call.start()
    await call.join('r', 'n')
    const ws = FakeWebSocket.last()
    expect(ws.sent).toEqual([])
    ws.open()
    expect(ws.sentOf('login')).toHaveLength(1)
  })

  it('a newcomer login: notice, tile, and an offer from us with the ICE servers of joined', async () => {
    const { call } = setup()
    const ws = await joinRoom(call)
    ws.receive({ type: 'login', from: 'new', data: { roomrequest: 'room1', username: 'Newbie' } })
    await flush()
    expect(call.chat.entries.at(-1)).toMatchObject({ notice: 'joined', params: { name: 'Newbie' } })
    expect(call.peersStore.byId.new.username).toBe('Newbie')
    expect(FakePC.instances[0].config.iceServers).toEqual([{ urls: 'turn:h:3478', username: 'u', credential: 'c' }])
    expect(ws.sentOf('offer')).toEqual([{ type: 'offer', to: 'new', username: 'Me', data: expect.objectContaining({ type: 'offer' }) }])
  })

  it('answers an offer from an existing member; logout removes the tile with a notice', async () => {
    const { call } = setup()
    const ws = await joinRoom(call, [{ sessionId: 'old', username: 'Old' }])
    ws.receive({ type: 'offer', from: 'old', username: 'Old', to: 'me', data: { type: 'offer', sdp: 'o' } })
    await flush()
    expect(ws.sentOf('answer')).toEqual([{ type: 'answer', to: 'old', data: expect.objectContaining({ type: 'answer' }) }])
    ws.receive({ type: 'candidate', from: 'old', to: 'me', data: { candidate: 'candidate:1', sdpMid: '0', sdpMLineIndex: 0 } })
    await flush()
    expect(FakePC.instances[0].candidates).toHaveLength(1)
    ws.receive({ type: 'logout', from: 'old', data: { username: 'Old', sessionId: 'old' } })
    expect(call.peersStore.count).toBe(0)
    expect(FakePC.instances[0].closed).toBe(true)
    expect(call.chat.entries.at(-1)).toMatchObject({ notice: 'left', params: { name: 'Old' } })
  })

  it('a logout about ourselves (the host took us out) returns to the login screen, camera released', async () => {
    const { call, stream } = setup()
    const ws = await joinRoom(call, [{ sessionId: 'old', username: 'Old' }])
    ws.receive({ type: 'logout', from: 'me', data: { username: 'Me', sessionId: 'me' } })
    expect(call.session.phase).toBe('login')
    expect(call.session.error).toMatchObject({ type: 'notInRoom' })
    expect(call.peersStore.count).toBe(0)
    expect(stream.getTracks().every((t) => t.readyState === 'ended')).toBe(true)
  })

  it('a full room returns to the login screen with the error, camera released', async () => {
    const { call, stream } = setup()
    call.start()
    const ws = FakeWebSocket.last()
    ws.open()
    await call.join('busy', 'Me')
    ws.receive({ type: 'error', message: { errorType: 'full', errorText: 'room is full' } })
    expect(call.session.phase).toBe('login')
    expect(call.session.error).toEqual({ type: 'full', text: 'room is full' })
    expect(stream.getTracks().every((t) => t.readyState === 'ended')).toBe(true)
    // and the user can try again
    await call.join('other', 'Me')
    expect(ws.sentOf('login')).toHaveLength(2)
  })

  it('random room: draws UUIDs until the host says ok', async () => {
    const { call } = setup()
    call.start()
    const ws = FakeWebSocket.last()
    call.randomRoom() // socket not open yet: sent on open
    expect(call.session.random).toBe('checking')
    ws.open()
    const first = ws.sentOf('randomCheck')[0].data
    expect(first).toMatch(/^[0-9a-f-]{36}$/)
    expect(call.session.room).toBe(first)
    ws.receive({ type: 'randomCheckResult', data: { result: 'fail', roomrequest: first } })
    const second = ws.sentOf('randomCheck')[1].data
    expect(second).not.toBe(first)
    expect(call.session.room).toBe(second)
    // a stale answer is ignored
    ws.receive({ type: 'randomCheckResult', data: { result: 'ok', roomrequest: first } })
    expect(call.session.random).toBe('checking')
    ws.receive({ type: 'randomCheckResult', data: { result: 'ok', roomrequest: second } })
    expect(call.session.random).toBe('free')
    expect(call.session.room).toBe(second)
  })

  it('chat: own messages are listed and sent over the data channels', async () => {
    const { call } = setup()
    const ws = await joinRoom(call)
    ws.receive({ type: 'login', from: 'p', data: { username: 'P' } })
    await flush()
    FakePC.instances[0].channels[0].open()
    const theirs = FakePC.instances[0].remoteChannel(CHAT_PROTOCOL)
    expect(call.sendChat('  hi  ')).toBe(true)
    expect(call.sendChat('   ')).toBe(false)
    const sent = theirs.sent.map((x) => JSON.parse(x))
    // on open the channel first carries our camera/mic state, then the chat
    expect(sent[0]).toEqual({ type: 'media', video: true, audio: true, screen: false })
    expect(sent[1]).toMatchObject({ type: 'chat', text: 'hi', username: 'Me' })
    expect(call.chat.entries.at(-1)).toMatchObject({ kind: 'message', own: true, text: 'hi' })
  })

  it('reconnects after a dropped socket and rejoins as a new session', async () => {
    const { call, timers } = setup()
    const ws = await joinRoom(call)
    ws.receive({ type: 'login', from: 'p', data: { username: 'P' } })
    await flush()
    ws.drop()
    expect(call.session.reconnecting).toBe(true)
    expect(call.peersStore.count).toBe(0)
    expect(FakePC.instances[0].closed).toBe(true)
    expect(call.chat.entries.at(-1)).toMatchObject({ notice: 'reconnecting' })
    timers.shift()!()
    const ws2 = FakeWebSocket.last()
    expect(ws2).not.toBe(ws)
    ws2.open()
    expect(ws2.sentOf('login')).toEqual([{ type: 'login', data: { roomrequest: 'room1', username: 'Me' } }])
    ws2.receive({ type: 'joined', data: 'me2', members: [{ sessionId: 'p', username: 'P' }], iceServers: [] })
    expect(call.session.reconnecting).toBe(false)
    expect(call.session.selfId).toBe('me2')
    expect(call.peersStore.list.map((p) => p.id)).toEqual(['p'])
    expect(call.chat.entries.at(-1)).toMatchObject({ notice: 'reconnected' })
  })

  it('a shared screen goes on every video sender, on connections made while sharing, and is announced as a screen', async () => {
    const screenTrack = new FakeTrack('video')
    const { call, stream } = setup()
    ;(call as unknown as { deps: { getDisplayMedia: () => Promise<MediaStream> } }).deps.getDisplayMedia = async () =>
      new FakeStream([screenTrack]) as unknown as MediaStream
    const ws = await joinRoom(call)
    ws.receive({ type: 'login', from: 'p', data: { username: 'P' } })
    await flush()
    const ch = FakePC.instances[0].remoteChannel(CHAT_PROTOCOL)
    await call.toggleScreenShare()
    const videoSender = (pc: FakePC) => pc.transceivers.find((t) => t.receiver.track.kind === 'video')!.sender
    expect(videoSender(FakePC.instances[0]).track).toBe(screenTrack)
    expect(JSON.parse(ch.sent.at(-1)!)).toEqual({ type: 'media', video: true, audio: true, screen: true })
    // someone joining while we share gets the screen too
    ws.receive({ type: 'login', from: 'q', data: { username: 'Q' } })
    await flush()
    expect(videoSender(FakePC.instances[1]).track).toBe(screenTrack)
    await call.stopScreenShare()
    const camera = stream.getVideoTracks()[0]
    expect(FakePC.instances.map((pc) => videoSender(pc).track)).toEqual([camera, camera])
    expect(screenTrack.readyState).toBe('ended')
    expect(JSON.parse(ch.sent.at(-1)!)).toEqual({ type: 'media', video: true, audio: true, screen: false })
  })

  it('camera switch on a phone that opens one camera at a time: the front one is released, the back one opened and sent', async () => {
    const { call, stream } = setup()
    const front = stream.getVideoTracks()[0]
    front.settings = { deviceId: 'front', facingMode: 'user' }
    const back = new FakeTrack('video')
    back.settings = { deviceId: 'back', facingMode: 'environment' }
    const asked: string[] = []
    ;(call as unknown as { deps: { openOtherCamera: (s: MediaTrackSettings) => Promise<MediaStreamTrack> } }).deps.openOtherCamera = async (cur) => {
      asked.push(`${cur.facingMode}:${front.readyState}`)
      if (front.readyState === 'live') throw Object.assign(new Error('busy'), { name: 'NotReadableError' })
      return back as unknown as MediaStreamTrack
    }
    const ws = await joinRoom(call)
    ws.receive({ type: 'login', from: 'p', data: { username: 'P' } })
    await flush()
    await call.switchCamera()
    expect(asked).toEqual(['user:live', 'user:ended'])
    const sender = FakePC.instances[0].transceivers.find((t) => t.receiver.track.kind === 'video')!.sender
    expect(sender.track).toBe(back)
    expect(stream.getVideoTracks()).toEqual([back])
    expect(call.session.media.backCamera).toBe(true)
    expect(call.session.devices.videoinput).toBe('back')
  })

  it('receive-only media still joins, with the issue recorded', async () => {
    const { call } = setup({ stream: new FakeStream([]) as unknown as MediaStream, hasVideo: false, hasAudio: false, issue: 'denied' })
    await joinRoom(call)
    expect(call.session.phase).toBe('room')
    expect(call.session.media.issue).toBe('denied')
    expect(call.session.receiveOnly).toBe(true)
  })

  it('tells peers when the camera goes off, and shows what peers say', async () => {
    const { call } = setup()
    const ws = await joinRoom(call)
    ws.receive({ type: 'login', from: 'p', data: { username: 'P' } })
    await flush()
    const ch = FakePC.instances[0].remoteChannel(CHAT_PROTOCOL)
    call.toggleCamera()
    expect(JSON.parse(ch.sent.at(-1)!)).toEqual({ type: 'media', video: false, audio: true, screen: false })
    ch.onmessage!({ data: JSON.stringify({ type: 'media', video: false, audio: false }) })
    expect(call.peersStore.byId.p).toMatchObject({ camOff: true, micOff: true, screen: false })
    ch.onmessage!({ data: JSON.stringify({ type: 'media', video: true, audio: false, screen: true }) })
    expect(call.peersStore.byId.p).toMatchObject({ camOff: false, screen: true })
    expect(call.chat.entries.filter((e) => e.kind === 'message')).toHaveLength(0)
  })

  it('marks the peer that is speaking', async () => {
    vi.useFakeTimers()
    try {
      const { call } = setup()
      const ws = await joinRoom(call)
      ws.receive({ type: 'login', from: 'p', data: { username: 'P' } })
      await vi.advanceTimersByTimeAsync(10)
      FakePC.instances[0].audioLevel = 0.3
      await vi.advanceTimersByTimeAsync(450)
      expect(call.peersStore.byId.p.speaking).toBe(true)
      FakePC.instances[0].audioLevel = 0
      await vi.advanceTimersByTimeAsync(450)
      expect(call.peersStore.byId.p.speaking).toBe(false)
      call.leave()
    } finally {
      vi.useRealTimers()
    }
  })

  it('a join with no answer times out with a message', async () => {
    vi.useFakeTimers()
    try {
      const { call, stream } = setup()
      call.start() // the socket never opens
      await call.join('r', 'n')
      expect(call.session.phase).toBe('joining')
      vi.advanceTimersByTime(20_001)
      expect(call.session.phase).toBe('login')
      expect(call.session.error?.type).toBe('timeout')
      expect(stream.getTracks().every((t) => t.readyState === 'ended')).toBe(true)
    } finally {
      vi.useRealTimers()
    }
  })

  it('camera/mic toggles flip the tracks; leave closes the session and releases everything', async () => {
    const { call, stream } = setup()
    const ws = await joinRoom(call)
    call.toggleCamera()
    expect(stream.getVideoTracks()[0].enabled).toBe(false)
    expect(call.session.media.camOn).toBe(false)
    call.toggleMic()
    expect(stream.getAudioTracks()[0].enabled).toBe(false)
    call.leave()
    expect(ws.closedWith).toBe(1000)
    expect(call.session.phase).toBe('login')
    expect(stream.getTracks().every((t) => t.readyState === 'ended')).toBe(true)
    expect(FakeWebSocket.last()).not.toBe(ws) // a fresh socket for the login screen
  })

  it('screen sharing swaps the video track on every peer and back', async () => {
    const { call, stream } = setup()
    const screenTrack = new FakeTrack('video')
    ;(call as any).deps.getDisplayMedia = async () => new FakeStream([screenTrack])
    const ws = await joinRoom(call)
    ws.receive({ type: 'login', from: 'p', data: { username: 'P' } })
    await flush()
    await call.toggleScreenShare()
    expect(call.session.media.sharing).toBe(true)
    expect(FakePC.instances[0].transceivers[1].sender.track).toBe(screenTrack)
    screenTrack.onended!()
    await flush()
    expect(call.session.media.sharing).toBe(false)
    expect(FakePC.instances[0].transceivers[1].sender.track).toBe(stream.getVideoTracks()[0])
  })

  it('asks the server what it offers on every socket; an older host that does not know hello is no error', async () => {
    const { call } = setup()
    call.start()
    const ws = FakeWebSocket.last()
    ws.open()
    expect(ws.sent[0]).toEqual({ type: 'hello' })
    ws.receive({ type: 'hello', from: '', data: { capabilities: ['kick', 'password'] } })
    expect(call.session.capabilities).toEqual(['kick', 'password'])
    expect(call.session.passwordRooms).toBe(true)
    expect(call.session.error).toBeNull()

    const { call: old } = setup()
    old.start()
    const ws2 = FakeWebSocket.last()
    ws2.open()
    ws2.receive({ type: 'error', message: { errorType: 'badRequest', errorText: 'Unknown message type "hello".' } })
    expect(old.session.capabilities).toEqual([])
    expect(old.session.error).toBeNull()
  })

  it('a room password goes out only when filled, only where a policy takes it, and again on rejoin', async () => {
    const { call, timers } = setup()
    call.start()
    const ws = FakeWebSocket.last()
    ws.open()
    // no "password" capability: never sent (it would reach the others in the login notice)
    await call.join('vault', 'Me', 's3cret')
    expect(ws.sentOf('login').at(-1)).toEqual({ type: 'login', data: { roomrequest: 'vault', username: 'Me' } })
    ws.receive({ type: 'error', message: { errorType: 'full', errorText: '' } })

    ws.receive({ type: 'hello', from: '', data: { capabilities: ['password'] } })
    await call.join('vault', 'Me', '')
    expect(ws.sentOf('login').at(-1)).toEqual({ type: 'login', data: { roomrequest: 'vault', username: 'Me' } })
    ws.receive({ type: 'error', message: { errorType: 'passwordRequired', errorText: 'This room needs a password.' } })
    expect(call.session.phase).toBe('login')
    expect(call.session.error?.type).toBe('passwordRequired')

    await call.join('vault', 'Me', 's3cret')
    expect(ws.sentOf('login').at(-1)).toEqual({ type: 'login', data: { roomrequest: 'vault', username: 'Me', password: 's3cret' } })
    ws.receive({ type: 'joined', data: 'me', members: [], iceServers: [] })
    expect(call.session.phase).toBe('room')
    // never kept where it could leak
    expect(JSON.stringify(call.session.$state)).not.toContain('s3cret')

    // a network loss: the rejoin sends it again
    ws.drop()
    timers.shift()!()
    const ws2 = FakeWebSocket.last()
    ws2.open()
    expect(ws2.sent[0]).toEqual({ type: 'hello' })
    expect(ws2.sentOf('login')).toEqual([{ type: 'login', data: { roomrequest: 'vault', username: 'Me', password: 's3cret' } }])
    // leaving forgets it
    ws2.receive({ type: 'joined', data: 'me2', members: [], iceServers: [] })
    call.leave()
    const ws3 = FakeWebSocket.last()
    ws3.open()
    ws3.receive({ type: 'hello', from: '', data: { capabilities: ['password'] } })
    await call.join('vault', 'Me')
    expect(ws3.sentOf('login')).toEqual([{ type: 'login', data: { roomrequest: 'vault', username: 'Me' } }])
  })

  it('kicked: the session ends with who removed us, and does not reconnect', async () => {
    const { call, timers, stream } = setup()
    const ws = await joinRoom(call)
    ws.receive({ type: 'login', from: 'p', data: { username: 'P' } })
    await flush()
    const sockets = FakeWebSocket.instances.length
    ws.receive({ type: 'kicked', from: '', data: { room: 'room1', by: 'Boss' } })
    ws.drop(4001)
    expect(call.session.phase).toBe('login')
    expect(call.session.error).toMatchObject({ type: 'kicked', by: 'Boss' })
    expect(call.session.reconnecting).toBe(false)
    expect(FakePC.instances[0].closed).toBe(true)
    expect(call.peersStore.count).toBe(0)
    expect(stream.getTracks().every((t) => t.readyState === 'ended')).toBe(true)
    expect(timers).toHaveLength(0)
    expect(FakeWebSocket.instances).toHaveLength(sockets)
  })

  it('a policy close (1008) ends the session with its reason; a network loss still reconnects', async () => {
    const { call, timers } = setup()
    const ws = await joinRoom(call)
    ws.onclose?.({ code: 1008, reason: 'banned here' })
    expect(call.session.phase).toBe('login')
    expect(call.session.error).toEqual({ type: 'closed', text: 'banned here' })
    expect(timers).toHaveLength(0)

    const { call: c2, timers: t2 } = setup()
    const ws2 = await joinRoom(c2)
    ws2.drop(1006)
    expect(c2.session.phase).toBe('room')
    expect(c2.session.reconnecting).toBe(true)
    expect(t2).toHaveLength(1)
  })

  it('moderation: the owner (first in the room) may remove others; ownership passes as earlier members leave', async () => {
    const { call } = setup()
    call.start()
    const ws = FakeWebSocket.last()
    ws.open()
    ws.receive({ type: 'hello', from: '', data: { capabilities: ['kick'] } })
    await call.join('room1', 'Me')
    ws.receive({ type: 'joined', data: 'me', members: [{ sessionId: 'a', username: 'A' }], iceServers: [] })
    expect(call.session.isOwner).toBe(false)
    expect(call.session.canRemove).toBe(false)
    ws.receive({ type: 'login', from: 'b', data: { username: 'B' } })
    expect(call.kick('b')).toBe(false)
    expect(ws.sentOf('kick')).toEqual([])
    ws.receive({ type: 'logout', from: 'a', data: { username: 'A', sessionId: 'a' } })
    expect(call.session.canRemove).toBe(true)
    expect(call.kick('b')).toBe(true)
    expect(ws.sentOf('kick')).toEqual([{ type: 'kick', to: 'b' }])
    ws.receive({ type: 'logout', from: 'b', data: { username: 'B', sessionId: 'b' } })
    expect(call.chat.entries.at(-1)).toMatchObject({ notice: 'youRemoved', params: { name: 'B' } })
    // without the capability there is nothing to offer
    ws.receive({ type: 'hello', from: '', data: { capabilities: [] } })
    expect(call.session.canRemove).toBe(false)
  })
})
