import { describe, it, expect, beforeEach, vi } from 'vitest'
import { PeerManager, isPolite, isNewSession, parseChat, videoBitrateFor, CHAT_PROTOCOL, type PeerCallbacks } from '../src/lib/peers'
import { FakePC, FakeStream, FakeTrack, FakeChannel, fakePCFactory, fakeStreamFactory, flush, resetFakes } from './fakes'

function setup(selfId = 'm', opts: { stream?: FakeStream | null; relay?: boolean } = {}) {
  const sent: any[] = []
  const cb = {
    onStream: vi.fn(),
    onState: vi.fn(),
    onChat: vi.fn(),
    onPeer: vi.fn(),
    onChannel: vi.fn(),
  } satisfies PeerCallbacks
  const stream = opts.stream === undefined ? new FakeStream([new FakeTrack('audio'), new FakeTrack('video')]) : opts.stream
  const pm = new PeerManager({
    selfId,
    username: 'Me',
    iceServers: [{ urls: 'stun:h:3478' }],
    relayOnly: opts.relay,
    localStream: stream as unknown as MediaStream,
    send: (f) => sent.push(f),
    callbacks: cb,
    createPeerConnection: fakePCFactory,
    createStream: fakeStreamFactory,
    maxIceRestarts: 2,
    disconnectGraceMs: 10,
  })
  return { pm, sent, cb, stream }
}

describe('PeerManager', () => {
  beforeEach(resetFakes)

  it('polite side is the smaller session id', () => {
    expect(isPolite('a', 'b')).toBe(true)
    expect(isPolite('b', 'a')).toBe(false)
  })

  it('an existing member offers to a newcomer (original convention), with username and to', async () => {
    const { pm, sent, cb } = setup('m')
    pm.handleLogin('n', 'Newbie')
    await flush()
    const pc = FakePC.instances[0]
    expect(pc.config.iceServers).toEqual([{ urls: 'stun:h:3478' }])
    expect(pc.config.iceTransportPolicy).toBeUndefined()
    expect(pc.transceivers.map((t) => [t.receiver.track.kind, t.direction, t.sender.track?.kind])).toEqual([
      ['audio', 'sendrecv', 'audio'],
      ['video', 'sendrecv', 'video'],
    ])
    expect(pc.channels.map((c) => [c.label, c.protocol])).toEqual([['chat', CHAT_PROTOCOL]])
    expect(sent).toEqual([{ type: 'offer', to: 'n', username: 'Me', data: { type: 'offer', sdp: expect.any(String) } }])
    expect(cb.onPeer).toHaveBeenCalledWith('n', 'Newbie')

    // answer comes back; candidates go out unicast
    await pm.handleDescription('n', { type: 'answer', sdp: 'a' })
    expect(pc.signalingState).toBe('stable')
    pc.emitCandidate({ candidate: 'candidate:1', sdpMid: '0', sdpMLineIndex: 0 })
    expect(sent[1]).toEqual({ type: 'candidate', to: 'n', data: { candidate: 'candidate:1', sdpMid: '0', sdpMLineIndex: 0 } })
  })

  it('a newcomer answers an offer and sends its media on the offered transceivers', async () => {
    const { pm, sent, stream } = setup('n')
    await pm.handleDescription('m', { type: 'offer', sdp: 'o' }, 'Member')
    await flush()
    const pc = FakePC.instances[0]
    expect(sent).toEqual([{ type: 'answer', to: 'm', data: { type: 'answer', sdp: expect.any(String) } }])
    expect(pc.transceivers.map((t) => t.direction)).toEqual(['sendrecv', 'sendrecv'])
    expect(pc.transceivers[0].sender.replaceTrack).toHaveBeenCalledWith(stream!.getAudioTracks()[0])
    expect(pc.transceivers[1].sender.replaceTrack).toHaveBeenCalledWith(stream!.getVideoTracks()[0])
    // the answerer opens its own chat channel too (the original client listens only on the one it made)
    expect(pc.channels.map((c) => [c.label, c.protocol])).toEqual([['chat', CHAT_PROTOCOL]])
    // no extra offer from the newcomer
    expect(sent.filter((f) => f.type === 'offer')).toHaveLength(0)
  })

  it('receive-only: offers still ask to receive audio and video', async () => {
    const { pm, sent } = setup('m', { stream: new FakeStream([]) })
    pm.handleLogin('n', 'N')
    await flush()
    const pc = FakePC.instances[0]
    expect(pc.transceivers.map((t) => [t.receiver.track.kind, t.sender.track])).toEqual([
      ['audio', null],
      ['video', null],
    ])
    expect(sent[0].type).toBe('offer')
  })

  it('relay-only is passed as iceTransportPolicy', () => {
    const { pm } = setup('m', { relay: true })
    pm.handleLogin('n', 'N')
    expect(FakePC.instances[0].config.iceTransportPolicy).toBe('relay')
  })

  it('queues candidates that arrive before the remote description', async () => {
    const { pm } = setup('m')
    pm.handleLogin('n', 'N')
    await flush()
    const pc = FakePC.instances[0]
    await pm.handleCandidate('n', { candidate: 'c1' })
    expect(pc.candidates).toEqual([])
    await pm.handleDescription('n', { type: 'answer', sdp: 'a' })
    expect(pc.candidates).toEqual([{ candidate: 'c1' }])
    await pm.handleCandidate('n', { candidate: 'c2' })
    expect(pc.candidates).toHaveLength(2)
    await pm.handleCandidate('unknown', { candidate: 'c3' }) // ignored
  })

  it('glare: the impolite side ignores the colliding offer', async () => {
    const { pm, sent } = setup('z') // z > a: impolite towards a
    pm.handleLogin('a', 'A')
    await flush()
    const pc = FakePC.instances[0]
    expect(pc.signalingState).toBe('have-local-offer')
    await pm.handleDescription('a', { type: 'offer', sdp: 'theirs' })
    expect(pc.signalingState).toBe('have-local-offer')
    expect(pc.remoteDescription).toBeNull()
    expect(sent.filter((f) => f.type === 'answer')).toHaveLength(0)
  })

  it('glare: the polite side rolls back and answers', async () => {
    const { pm, sent } = setup('a') // a < z: polite towards z
    pm.handleLogin('z', 'Z')
    await flush()
    const pc = FakePC.instances[0]
    expect(pc.signalingState).toBe('have-local-offer')
    await pm.handleDescription('z', { type: 'offer', sdp: 'theirs' })
    expect(pc.remoteDescription).toEqual({ type: 'offer', sdp: 'theirs' })
    expect(sent.filter((f) => f.type === 'answer')).toHaveLength(1)
    expect(pc.signalingState).toBe('stable')
  })

  it('restarts ICE on failure, a bounded number of times', async () => {
    const { pm, sent, cb } = setup('m')
    pm.handleLogin('n', 'N')
    await flush()
    const pc = FakePC.instances[0]
    await pm.handleDescription('n', { type: 'answer', sdp: 'a' })
    pc.remoteChannel(CHAT_PROTOCOL) // one of ours: it can take restart offers
    pc.setConnection('connected')
    expect(cb.onState).toHaveBeenLastCalledWith('n', 'connected')
    pc.setIce('failed')
    expect(pc.restartCalls).toBe(1)
    expect(cb.onState).toHaveBeenLastCalledWith('n', 'reconnecting')
    await flush()
    const offers = sent.filter((f) => f.type === 'offer')
    expect(offers).toHaveLength(2) // the restart renegotiates
    await pm.handleDescription('n', { type: 'answer', sdp: 'a2' })
    pc.setIce('failed')
    expect(pc.restartCalls).toBe(2)
    await flush()
    await pm.handleDescription('n', { type: 'answer', sdp: 'a3' })
    pc.setIce('failed')
    expect(pc.restartCalls).toBe(2)
    expect(cb.onState).toHaveBeenLastCalledWith('n', 'failed')
    // once connected again the budget is back
    pc.setConnection('connected')
    pc.setIce('failed')
    expect(pc.restartCalls).toBe(3)
  })

  it('a restart the other side never answers ends in "failed" (restart timer), not "reconnecting" for ever', async () => {
    const { pm, sent, cb } = setup('m')
    pm.handleLogin('n', 'N')
    await flush()
    const pc = FakePC.instances[0]
    await pm.handleDescription('n', { type: 'answer', sdp: 'a' })
    pc.remoteChannel(CHAT_PROTOCOL)
    pc.setConnection('connected')
    vi.useFakeTimers()
    try {
      pc.setIce('failed')
      await vi.advanceTimersByTimeAsync(0)
      expect(sent.filter((f) => f.type === 'offer')).toHaveLength(2)
      // no answer comes; failures meanwhile wait for the timer
      pc.setConnection('failed')
      expect(pc.restartCalls).toBe(1)
      await vi.advanceTimersByTimeAsync(5000)
      expect(pc.restartCalls).toBe(2)
      expect(cb.onState).toHaveBeenLastCalledWith('n', 'reconnecting')
      await vi.advanceTimersByTimeAsync(5000)
      expect(cb.onState).toHaveBeenLastCalledWith('n', 'failed')
    } finally {
      vi.useRealTimers()
    }
  })

  it('Retry makes a new connection to that peer only and offers again; the other side answers on a new connection', async () => {
    const { pm, sent } = setup('m')
    pm.handleLogin('n', 'N')
    pm.handleLogin('o', 'O')
    await flush()
    const [first, other] = FakePC.instances
    await pm.handleDescription('n', { type: 'answer', sdp: 'o=- 111 2 IN IP4 0.0.0.0' })
    pm.retry('n')
    await flush()
    expect(first.closed).toBe(true)
    expect(other.closed).toBe(false)
    expect(pm.peers.get('n')!.pc).toBe(FakePC.instances[2])
    expect(pm.peers.get('o')!.pc).toBe(other)
    expect(sent.filter((f) => f.type === 'offer' && f.to === 'n')).toHaveLength(2)

    // answering side: an offer of another session replaces the connection
    const b = setup('z')
    await b.pm.handleDescription('m', { type: 'offer', sdp: 'o=- 111 2 IN IP4 0.0.0.0' }, 'M')
    const before = b.pm.peers.get('m')!.pc
    // a renegotiation of the same session stays on it
    await b.pm.handleDescription('m', { type: 'offer', sdp: 'o=- 111 3 IN IP4 0.0.0.0' })
    expect(b.pm.peers.get('m')!.pc).toBe(before)
    await b.pm.handleDescription('m', { type: 'offer', sdp: 'o=- 222 2 IN IP4 0.0.0.0' })
    const after = b.pm.peers.get('m')!.pc as unknown as FakePC
    expect(after).not.toBe(before)
    expect((before as unknown as FakePC).closed).toBe(true)
    expect(after.remoteDescription).toEqual({ type: 'offer', sdp: 'o=- 222 2 IN IP4 0.0.0.0' })
    expect(b.sent.filter((f) => f.type === 'answer')).toHaveLength(3)
    expect(isNewSession(undefined, 'o=- 1 1 IN IP4 0.0.0.0')).toBe(false)
  })

  it('restarts ICE after a disconnect that does not recover', async () => {
    const { pm } = setup('m')
    pm.handleLogin('n', 'N')
    await flush()
    const pc = FakePC.instances[0]
    await pm.handleDescription('n', { type: 'answer', sdp: 'a' })
    pc.remoteChannel(CHAT_PROTOCOL) // one of ours: it can take restart offers
    // a fake clock: the grace (10 ms here) passes exactly, not by sleeping
    vi.useFakeTimers()
    try {
      pc.setIce('disconnected')
      vi.advanceTimersByTime(9)
      expect(pc.restartCalls).toBe(0)
      vi.advanceTimersByTime(1)
      expect(pc.restartCalls).toBe(1)
    } finally {
      vi.useRealTimers()
    }
  })

  it('chat goes on the channel the peer made; incoming chat is named by the host-stamped username', async () => {
    const { pm, cb } = setup('m')
    pm.handleLogin('n1', 'One')
    pm.handleLogin('n2', 'Two')
    await flush()
    const [own1, own2] = FakePC.instances.map((p) => p.channels[0])
    own1.open()
    const theirs1 = FakePC.instances[0].remoteChannel(CHAT_PROTOCOL)
    expect(cb.onChannel).toHaveBeenCalledWith('n1', true)
    // n2's channel has not arrived: its copy waits
    expect(pm.sendChat({ id: 'x', username: 'Me', text: 'hi', ts: 1 })).toBe(1)
    expect(JSON.parse(theirs1.sent[0])).toEqual({ type: 'chat', id: 'x', username: 'Me', text: 'hi', ts: 1 })
    expect(own1.sent).toEqual([])
    expect(own2.sent).toEqual([])
    // both of ours listen on both channels
    own1.onmessage!({ data: JSON.stringify({ type: 'chat', username: 'Impostor', text: 'yo', ts: 5 }) })
    expect(cb.onChat).toHaveBeenCalledWith('n1', { id: '', username: 'One', text: 'yo', ts: 5 })
    theirs1.onmessage!({ data: JSON.stringify({ type: 'chat', text: 'yo2', ts: 6 }) })
    expect(cb.onChat).toHaveBeenCalledWith('n1', { id: '', username: 'One', text: 'yo2', ts: 6 })
    // n2's channel arrives: the waiting line goes out once, and only there
    const theirs2 = FakePC.instances[1].remoteChannel(CHAT_PROTOCOL)
    expect(theirs2.sent.map((x) => JSON.parse(x).text)).toEqual(['hi'])
    expect(own2.sent).toEqual([])
  })

  it('the original client as newcomer: one offer only, chat in its format on its channel, no media frames', async () => {
    const { pm, sent, cb } = setup('m')
    pm.setMediaState({ video: true, audio: true })
    pm.handleLogin('old', 'Legacy')
    await flush()
    const pc = FakePC.instances[0]
    expect(sent.filter((f) => f.type === 'offer')).toHaveLength(1)
    await pm.handleDescription('old', { type: 'answer', sdp: 'a' })
    const own = pc.channels[0]
    own.open()
    const theirs = pc.remoteChannel('') // the original sets no channel protocol
    expect(pm.peers.get('old')!.kind).toBe('legacy')
    // nothing it would print as "undefined : undefined"
    pm.setMediaState({ video: false, audio: true })
    expect(pm.sendChat({ id: 'x', username: 'Me', text: 'hello old friend', ts: 1 })).toBe(1)
    expect(theirs.sent.map((x) => JSON.parse(x))).toEqual([{ sender: 'Me', chatInput: 'hello old friend' }])
    expect(own.sent).toEqual([])
    // it sends on the channel we made, in its own format
    own.onmessage!({ data: JSON.stringify({ sender: 'Whoever', chatInput: 'hi new' }) })
    expect(cb.onChat).toHaveBeenCalledWith('old', expect.objectContaining({ username: 'Legacy', text: 'hi new' }))
    // ICE trouble: no restart offer (it would build a second connection)
    pc.setConnection('connected')
    pc.setIce('failed')
    pc.onnegotiationneeded!()
    await flush()
    expect(pc.restartCalls).toBe(0)
    expect(sent.filter((f) => f.type === 'offer')).toHaveLength(1)
    expect(cb.onState).toHaveBeenLastCalledWith('old', 'failed')
  })

  it('the original client as existing member: we answer, open our channel, and never offer', async () => {
    const { pm, sent, cb } = setup('n')
    await pm.handleDescription('old', { type: 'offer', sdp: 'o' }, 'Legacy')
    await flush()
    const pc = FakePC.instances[0]
    expect(sent.map((f) => f.type)).toEqual(['answer'])
    // chat typed before we know what it is waits
    expect(pm.sendChat({ id: 'x', username: 'Me', text: 'early', ts: 1 })).toBe(0)
    pc.channels[0].open()
    expect(pc.channels[0].sent).toEqual([])
    const theirs = pc.remoteChannel('')
    expect(theirs.sent.map((x) => JSON.parse(x))).toEqual([{ sender: 'Me', chatInput: 'early' }])
    pc.setIce('disconnected')
    pm.restartIce(pm.peers.get('old')!)
    pc.onnegotiationneeded!()
    await flush()
    expect(sent.map((f) => f.type)).toEqual(['answer'])
    expect(cb.onState).not.toHaveBeenCalledWith('old', 'failed') // ICE may still recover by itself
  })

  it('with one of ours the channel carries typed frames and restarts are allowed', async () => {
    const { pm, sent } = setup('n')
    pm.setMediaState({ video: true, audio: false })
    await pm.handleDescription('m', { type: 'offer', sdp: 'o' }, 'M')
    await flush()
    const pc = FakePC.instances[0]
    const theirs = pc.remoteChannel(CHAT_PROTOCOL)
    expect(JSON.parse(theirs.sent[0])).toEqual({ type: 'media', video: true, audio: false })
    pc.connectionState = 'connected'
    pc.iceConnectionState = 'connected'
    pm.restartIce(pm.peers.get('m')!)
    await flush()
    expect(pc.restartCalls).toBe(1)
    expect(sent.filter((f) => f.type === 'offer')).toHaveLength(1)
    expect(pm.peers.get('m')!.state).toBe('reconnecting')
    // the connection never dropped: no state event comes, the answer settles it
    await pm.handleDescription('m', { type: 'answer', sdp: 'a2' })
    expect(pm.peers.get('m')!.state).toBe('connected')
  })

  it('accepts a chat channel opened by the other side', async () => {
    const { pm, cb } = setup('n')
    await pm.handleDescription('m', { type: 'offer', sdp: 'o' }, 'M')
    const pc = FakePC.instances[0]
    const ch = new FakeChannel('chat')
    pc.ondatachannel!({ channel: ch })
    ch.open()
    expect(pm.openChannels()).toBe(1)
    ch.onmessage!({ data: 'plain text from an old client' })
    expect(cb.onChat).toHaveBeenCalledWith('m', expect.objectContaining({ username: 'M', text: 'plain text from an old client' }))
  })

  it('remote tracks become a stream for the tile', async () => {
    const { pm, cb } = setup('n')
    await pm.handleDescription('m', { type: 'offer', sdp: 'o' }, 'M')
    const pc = FakePC.instances[0]
    const s = new FakeStream([])
    pc.ontrack!({ track: new FakeTrack('video'), streams: [s] })
    expect(cb.onStream).toHaveBeenCalledWith('m', s)
    // a track without a stream gets one made for it
    const { pm: pm2, cb: cb2 } = setup('q')
    await pm2.handleDescription('m', { type: 'offer', sdp: 'o' }, 'M')
    const t = new FakeTrack('audio')
    FakePC.instances[1].ontrack!({ track: t, streams: [] })
    const made = cb2.onStream.mock.calls[0][1] as FakeStream
    expect(made.getTracks()).toEqual([t])
  })

  it('logout closes and forgets the peer; replaceTrack swaps on every sender', async () => {
    const { pm, cb } = setup('m')
    pm.handleLogin('n1', 'One')
    pm.handleLogin('n2', 'Two')
    await flush()
    const screen = new FakeTrack('video')
    await pm.replaceTrack('video', screen as unknown as MediaStreamTrack)
    for (const pc of FakePC.instances) expect(pc.transceivers[1].sender.track).toBe(screen)
    pm.handleLogout('n1')
    expect(FakePC.instances[0].closed).toBe(true)
    expect(pm.peers.has('n1')).toBe(false)
    expect(cb.onState).toHaveBeenCalledWith('n1', 'closed')
    pm.closeAll()
    expect(FakePC.instances[1].closed).toBe(true)
    expect(pm.peers.size).toBe(0)
  })
})

describe('parseChat', () => {
  it('handles JSON, plain text, empties and long text', () => {
    expect(parseChat('{"text":"a","username":"x","ts":3}', 'Host')).toEqual({ id: '', username: 'Host', text: 'a', ts: 3 })
    expect(parseChat('{"text":"a","username":"x"}', '')?.username).toBe('x')
    expect(parseChat('hello', 'H')?.text).toBe('hello')
    expect(parseChat('"quoted"', 'H')?.text).toBe('quoted')
    expect(parseChat('   ', 'H')).toBeNull()
    expect(parseChat('x'.repeat(5000), 'H')?.text.length).toBe(2000)
    expect(parseChat('{"type":"media","video":false,"audio":true}', 'H')).toBeNull()
    expect(parseChat('{"type":"somethingNew"}', 'H')).toBeNull()
    // the original client's chat
    expect(parseChat('{"sender":"kim","chatInput":"안녕"}', 'Host')).toMatchObject({ username: 'Host', text: '안녕' })
    expect(parseChat('{"sender":"kim","chatInput":"hi"}', '')).toMatchObject({ username: 'kim', text: 'hi' })
  })
})

describe('videoBitrateFor', () => {
  it('shares about 1.2 Mbit/s of upload between the peers, within 150 kbit/s – 1 Mbit/s', () => {
    expect([0, 1, 2, 3, 4, 5, 8, 9].map(videoBitrateFor)).toEqual([
      1_000_000, 1_000_000, 600_000, 400_000, 300_000, 250_000, 150_000, 150_000,
    ])
    for (let n = 2; n < 10; n++) expect(videoBitrateFor(n)).toBeLessThanOrEqual(videoBitrateFor(n - 1))
  })
})
