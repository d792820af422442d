// Test doubles for WebSocket, RTCPeerConnection and MediaStream: just enough
// state machine to exercise the signaling and negotiation logic.
import { vi } from 'vitest'

export const flush = async (n = 5) => {
  for (let i = 0; i < n; i++) await new Promise((r) => setTimeout(r, 0))
}

export class FakeWebSocket {
  static instances: FakeWebSocket[] = []
  static last() {
    return FakeWebSocket.instances[FakeWebSocket.instances.length - 1]
  }
  readyState = 0
  sent: any[] = []
  onopen: ((e: any) => void) | null = null
  onmessage: ((e: any) => void) | null = null
  onclose: ((e: any) => void) | null = null
  onerror: ((e: any) => void) | null = null
  closedWith: number | null = null
  constructor(readonly url: string) {
    FakeWebSocket.instances.push(this)
  }
  send(text: string) {
    if (this.readyState !== 1) throw new Error('not open')
    this.sent.push(JSON.parse(text))
  }
  close(code = 1000) {
    this.closedWith = code
    this.readyState = 3
  }
  // test controls
  open() {
    this.readyState = 1
    this.onopen?.({})
  }
  receive(obj: unknown) {
    this.onmessage?.({ data: typeof obj === 'string' ? obj : JSON.stringify(obj) })
  }
  drop(code = 1006) {
    this.readyState = 3
    this.onclose?.({ code, reason: '' })
  }
  sentOf(type: string) {
    return this.sent.filter((f) => f.type === type)
  }
}

export class FakeTrack {
  enabled = true
  readyState = 'live'
  muted = false
  onended: (() => void) | null = null
  settings: MediaTrackSettings = {}
  constructor(readonly kind: 'audio' | 'video') {}
  getSettings() {
    return this.settings
  }
  stop() {
    this.readyState = 'ended'
  }
  addEventListener() {}
  removeEventListener() {}
}

export class FakeStream {
  tracks: FakeTrack[]
  constructor(tracks: FakeTrack[] = []) {
    this.tracks = tracks
  }
  getTracks() {
    return this.tracks
  }
  getVideoTracks() {
    return this.tracks.filter((t) => t.kind === 'video')
  }
  getAudioTracks() {
    return this.tracks.filter((t) => t.kind === 'audio')
  }
  addTrack(t: FakeTrack) {
    this.tracks.push(t)
  }
  removeTrack(t: FakeTrack) {
    this.tracks = this.tracks.filter((x) => x !== t)
  }
  addEventListener() {}
  removeEventListener() {}
}

export class FakeChannel {
  readyState = 'connecting'
  sent: string[] = []
  onopen: (() => void) | null = null
  onclose: (() => void) | null = null
  onmessage: ((e: { data: unknown }) => void) | null = null
  constructor(
    readonly label: string,
    readonly protocol = '',
  ) {}
  send(s: string) {
    this.sent.push(s)
  }
  close() {
    this.readyState = 'closed'
  }
  open() {
    this.readyState = 'open'
    this.onopen?.()
  }
}

let sdpSeq = 0

export class FakePC {
  static instances: FakePC[] = []
  signalingState = 'stable'
  connectionState = 'new'
  iceConnectionState = 'new'
  localDescription: RTCSessionDescriptionInit | null = null
  remoteDescription: RTCSessionDescriptionInit | null = null
  transceivers: any[] = []
  channels: FakeChannel[] = []
  candidates: RTCIceCandidateInit[] = []
  restartCalls = 0
  closed = false
  onnegotiationneeded: (() => void) | null = null
  onicecandidate: ((e: any) => void) | null = null
  ontrack: ((e: any) => void) | null = null
  ondatachannel: ((e: any) => void) | null = null
  onconnectionstatechange: (() => void) | null = null
  oniceconnectionstatechange: (() => void) | null = null
  private negotiationQueued = false

  constructor(readonly config: RTCConfiguration) {
    FakePC.instances.push(this)
  }

  private queueNegotiation() {
    if (this.negotiationQueued) return
    this.negotiationQueued = true
    queueMicrotask(() => {
      this.negotiationQueued = false
      if (!this.closed && this.signalingState === 'stable') this.onnegotiationneeded?.()
    })
  }

  private makeTransceiver(kind: string, track: FakeTrack | null, direction: string) {
    const sender: any = { track }
    sender.replaceTrack = vi.fn(async (t: FakeTrack | null) => {
      sender.track = t
    })
    sender.setStreams = vi.fn()
    const t = { mid: null as string | null, direction, currentDirection: null, sender, receiver: { track: { kind } } }
    this.transceivers.push(t)
    return t
  }

  addTransceiver(trackOrKind: FakeTrack | string, init: RTCRtpTransceiverInit = {}) {
    const kind = typeof trackOrKind === 'string' ? trackOrKind : trackOrKind.kind
    const track = typeof trackOrKind === 'string' ? null : trackOrKind
    const t = this.makeTransceiver(kind, track, init.direction ?? 'sendrecv')
    this.queueNegotiation()
    return t
  }

  createDataChannel(label: string, init: RTCDataChannelInit = {}) {
    const ch = new FakeChannel(label, init.protocol ?? '')
    this.channels.push(ch)
    this.queueNegotiation()
    return ch
  }

  getTransceivers() {
    return this.transceivers
  }

  audioLevel = 0
  getReceivers() {
    return this.transceivers.map((t) => ({
      track: t.receiver.track,
      getSynchronizationSources: () => (t.receiver.track.kind === 'audio' ? [{ audioLevel: this.audioLevel }] : []),
    }))
  }

  async setLocalDescription(desc?: RTCSessionDescriptionInit) {
    await Promise.resolve()
    if (desc?.type === 'rollback') {
      this.signalingState = 'stable'
      this.localDescription = null
      return
    }
    if (this.signalingState === 'have-remote-offer') {
      this.localDescription = { type: 'answer', sdp: `answer-${++sdpSeq}` }
      this.signalingState = 'stable'
    } else {
      this.localDescription = { type: 'offer', sdp: `offer-${++sdpSeq}` }
      this.signalingState = 'have-local-offer'
    }
  }

  async setRemoteDescription(desc: RTCSessionDescriptionInit) {
    await Promise.resolve()
    if (desc.type === 'offer') {
      if (this.signalingState === 'have-local-offer') {
        // implicit rollback
        this.localDescription = null
      }
      this.remoteDescription = desc
      this.signalingState = 'have-remote-offer'
      if (this.transceivers.length === 0) {
        this.makeTransceiver('audio', null, 'recvonly').mid = '0'
        this.makeTransceiver('video', null, 'recvonly').mid = '1'
      }
    } else {
      if (this.signalingState !== 'have-local-offer') throw Object.assign(new Error('wrong state'), { name: 'InvalidStateError' })
      this.remoteDescription = desc
      this.signalingState = 'stable'
    }
  }

  async addIceCandidate(c: RTCIceCandidateInit) {
    if (!this.remoteDescription) throw new Error('no remote description')
    this.candidates.push(c)
  }

  restartIce() {
    this.restartCalls++
    this.queueNegotiation()
  }

  getConfiguration() {
    return this.config
  }

  close() {
    this.closed = true
    this.signalingState = 'closed'
  }

  // test controls
  setConnection(state: string) {
    this.connectionState = state
    this.onconnectionstatechange?.()
  }
  setIce(state: string) {
    this.iceConnectionState = state
    this.oniceconnectionstatechange?.()
  }
  emitCandidate(c: RTCIceCandidateInit) {
    this.onicecandidate?.({ candidate: { toJSON: () => c } })
  }
  /** the other side's "chat" channel arrives (and opens); protocol '' is what the original client makes */
  remoteChannel(protocol: string, open = true) {
    const ch = new FakeChannel('chat', protocol)
    this.ondatachannel?.({ channel: ch })
    if (open) ch.open()
    return ch
  }
}

export function resetFakes() {
  FakeWebSocket.instances = []
  FakePC.instances = []
}

export const fakePCFactory = (c: RTCConfiguration) => new FakePC(c) as unknown as RTCPeerConnection
export const fakeStreamFactory = () => new FakeStream() as unknown as MediaStream
