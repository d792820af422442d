// Owns the RTCPeerConnections of a mesh call (one per remote member, up to 9).
//
// Original convention: members already in the room offer to a newcomer when its
// `login` arrives; the newcomer answers. Every later negotiation (ICE restarts,
// track changes) uses "perfect negotiation": the side whose session id sorts
// lower is polite (it rolls back its own offer on glare), the other ignores
// the colliding offer.
//
// Chat channels, as the original client (kyj9447/WebRTC-Vue) does them: each
// side creates a data channel labelled "chat" on every connection, listens on
// the one it created and sends on the one the other side created. Ours carry
// the channel protocol CHAT_PROTOCOL; a peer whose channel does not is an
// original ("legacy") client: it gets chat as {"sender","chatInput"} and
// nothing else (no `media` frames, which it would print), and never a second
// offer — it builds a new RTCPeerConnection for every offer, so an ICE restart
// would break it. Until the peer's channel arrives we do not know which it
// is: chat waits, and we send no offer but our first.
import { frames, type ClientFrame } from './protocol'
import { readLinkStats, type LinkStats, type LossCounters } from './quality'

export type PeerState = 'new' | 'connecting' | 'connected' | 'reconnecting' | 'failed' | 'closed'
export type MediaKind = 'audio' | 'video'

export interface ChatPayload {
  id: string
  username: string
  text: string
  ts: number
}

export interface PeerCallbacks {
  onStream(id: string, stream: MediaStream): void
  onState(id: string, state: PeerState): void
  onChat(id: string, msg: ChatPayload): void
  onPeer?(id: string, username: string): void
  onChannel?(id: string, open: boolean): void
  /** the peer told us whether it sends camera / microphone (data channel) */
  onMediaState?(id: string, state: MediaState): void
}

export interface MediaState {
  video: boolean
  audio: boolean
  /** the video is a shared screen (shown whole and pinned by the others); absent = false */
  screen?: boolean
}

export interface PeerManagerOptions {
  selfId: string
  username: string
  iceServers: RTCIceServer[]
  relayOnly?: boolean
  localStream: MediaStream | null
  send: (frame: ClientFrame) => void
  callbacks: PeerCallbacks
  createPeerConnection?: (config: RTCConfiguration) => RTCPeerConnection
  createStream?: () => MediaStream
  maxIceRestarts?: number
  disconnectGraceMs?: number
  /** a restart not connected after this long counts as failed (the next one, or "failed") */
  restartTimeoutMs?: number
  log?: (...args: unknown[]) => void
}

export const CHAT_LABEL = 'chat'
/** The data channel protocol that marks this client (the original sets none). */
export const CHAT_PROTOCOL = 'webrtc-chat/2'
export const MAX_CHAT_LEN = 2000
/** chat typed before a peer's channel told us what it is; older lines are dropped */
const MAX_PENDING_CHAT = 50

/** What the other side is, learnt from the chat channel it created. */
export type PeerKind = 'unknown' | 'modern' | 'legacy'

/** Perfect negotiation role: the lexicographically smaller session id is polite. */
export function isPolite(selfId: string, remoteId: string): boolean {
  return selfId < remoteId
}

export class Peer {
  makingOffer = false
  ignoreOffer = false
  settingRemoteAnswer = false
  /** the chat channel we created */
  own: RTCDataChannel | null = null
  /** the chat channel the other side created */
  remote: RTCDataChannel | null = null
  kind: PeerKind = 'unknown'
  /** we made the first offer (an existing member offering to a newcomer) */
  initiator = false
  offersSent = 0
  pendingChat: ChatPayload[] = []
  stream: MediaStream | null = null
  senders: Partial<Record<MediaKind, RTCRtpSender>> = {}
  pendingCandidates: RTCIceCandidateInit[] = []
  restarts = 0
  state: PeerState = 'new'
  disconnectTimer: ReturnType<typeof setTimeout> | null = null
  /** a restart is under way: when it fires unconnected, the next restart (or "failed") */
  restartTimer: ReturnType<typeof setTimeout> | null = null
  /** inbound packet counters at the last stats sample (loss is measured between samples) */
  lossCounters: LossCounters | null = null
  closed = false
  constructor(
    readonly id: string,
    public username: string,
    readonly pc: RTCPeerConnection,
    readonly polite: boolean,
  ) {}
}

export class PeerManager {
  readonly peers = new Map<string, Peer>()
  private localStream: MediaStream | null
  private readonly o: PeerManagerOptions

  constructor(opts: PeerManagerOptions) {
    this.o = opts
    this.localStream = opts.localStream
  }

  get selfId() {
    return this.o.selfId
  }

  private log(...a: unknown[]) {
    this.o.log?.('[peers]', ...a)
  }

  private config(): RTCConfiguration {
    const c: RTCConfiguration = { iceServers: this.o.iceServers }
    if (this.o.relayOnly) c.iceTransportPolicy = 'relay'
    return c
  }

  /** while sharing a screen, the video every connection sends (new ones too) */
  private screenTrack: MediaStreamTrack | null = null

  private localTrack(kind: MediaKind): MediaStreamTrack | null {
    if (kind === 'video' && this.screenTrack) return this.screenTrack
    return this.localStream?.getTracks().find((t) => t.kind === kind) ?? null
  }

  /** Share a screen (or stop: null): every video sender, and every connection made later, sends it. */
  async setScreenTrack(track: MediaStreamTrack | null) {
    this.screenTrack = track
    await this.replaceTrack('video', this.localTrack('video'))
  }

  private setState(peer: Peer, s: PeerState) {
    if (peer.state === s) return
    peer.state = s
    this.o.callbacks.onState(peer.id, s)
  }

  private create(id: string, username: string, initiator: boolean): Peer {
    const make = this.o.createPeerConnection ?? ((c: RTCConfiguration) => new RTCPeerConnection(c))
    const pc = make(this.config())
    const peer = new Peer(id, username, pc, isPolite(this.o.selfId, id))
    peer.initiator = initiator
    this.peers.set(id, peer)
    this.o.callbacks.onPeer?.(id, username)
    this.o.callbacks.onState(id, 'new')

    pc.onicecandidate = (e) => {
      if (e.candidate && !peer.closed) this.o.send(frames.candidate(id, e.candidate.toJSON()))
    }
    pc.onnegotiationneeded = () => void this.makeOffer(peer)
    pc.ontrack = (e) => {
      let stream = e.streams?.[0]
      if (!stream) {
        stream = peer.stream ?? (this.o.createStream ? this.o.createStream() : new MediaStream())
        if (!stream.getTracks().includes(e.track)) stream.addTrack(e.track)
      }
      peer.stream = stream
      this.o.callbacks.onStream(id, stream)
    }
    pc.ondatachannel = (e) => {
      if (e.channel.label === CHAT_LABEL) this.bindRemote(peer, e.channel)
    }
    pc.onconnectionstatechange = () => this.onConnectionState(peer)
    pc.oniceconnectionstatechange = () => this.onIceState(peer)

    if (initiator) {
      for (const kind of ['audio', 'video'] as MediaKind[]) {
        const track = this.localTrack(kind)
        const init: RTCRtpTransceiverInit = { direction: 'sendrecv' }
        if (this.localStream) init.streams = [this.localStream]
        const t = pc.addTransceiver(track ?? kind, init)
        peer.senders[kind] = t.sender
      }
      this.createOwnChannel(peer)
    }
    return peer
  }

  /** Our own "chat" channel: the initiator's goes into the first offer, the answerer's once it has answered. */
  private createOwnChannel(peer: Peer) {
    if (peer.own || peer.closed) return
    const ch = peer.pc.createDataChannel(CHAT_LABEL, { protocol: CHAT_PROTOCOL })
    peer.own = ch
    ch.onopen = () => {
      this.o.callbacks.onChannel?.(peer.id, true)
      this.flush(peer)
    }
    ch.onclose = () => {
      if (!peer.closed) this.o.callbacks.onChannel?.(peer.id, false)
    }
    this.listen(peer, ch)
  }

  /** The other side's "chat" channel: it tells us what the peer is, and we send on it. */
  private bindRemote(peer: Peer, ch: RTCDataChannel) {
    if (peer.remote && peer.remote.readyState !== 'closed') {
      this.listen(peer, ch) // a surplus channel: still heard, never used to send
      return
    }
    peer.remote = ch
    const kind: PeerKind = ch.protocol === CHAT_PROTOCOL ? 'modern' : 'legacy'
    if (peer.kind !== kind) {
      peer.kind = kind
      this.log('peer', peer.id, 'is', kind)
    }
    const opened = () => {
      this.o.callbacks.onChannel?.(peer.id, true)
      if (peer.kind === 'modern' && this.mediaState) this.sendOn(ch, { type: 'media', ...this.mediaState })
      this.flush(peer)
    }
    ch.onopen = opened
    ch.onclose = () => {
      if (!peer.closed) this.o.callbacks.onChannel?.(peer.id, false)
    }
    this.listen(peer, ch)
    if (ch.readyState === 'open') opened()
  }

  /** The channel we send on: the one the peer created (the only one the original listens on). */
  private sendChannel(peer: Peer): RTCDataChannel | null {
    if (peer.remote?.readyState === 'open') return peer.remote
    // one of ours listens on both; its own channel will do while the other is not open
    if (peer.kind === 'modern' && peer.own?.readyState === 'open') return peer.own
    return null
  }

  /** Chat typed before the peer's kind was known goes out once it is. */
  private flush(peer: Peer) {
    if (peer.kind === 'unknown' || !this.sendChannel(peer)) return
    const list = peer.pendingChat
    peer.pendingChat = []
    for (const m of list) this.chatTo(peer, m)
  }

  /** Sends one chat line in the form this peer reads; false when it cannot go now. */
  private chatTo(peer: Peer, msg: ChatPayload): boolean {
    const ch = this.sendChannel(peer)
    if (!ch || peer.kind === 'unknown') return false
    const frame = peer.kind === 'legacy' ? { sender: this.o.username, chatInput: msg.text } : { type: 'chat', ...msg }
    return this.sendOn(ch, frame)
  }

  private listen(peer: Peer, ch: RTCDataChannel) {
    ch.onmessage = (e) => {
      if (typeof e.data !== 'string') return
      const media = parseMediaState(e.data)
      if (media) {
        this.o.callbacks.onMediaState?.(peer.id, media)
        return
      }
      const msg = parseChat(e.data, peer.username)
      if (msg) this.o.callbacks.onChat(peer.id, msg)
    }
  }

  private async makeOffer(peer: Peer) {
    if (peer.closed) return
    // Only our first offer may go to a peer that is not (yet) known to be one of
    // ours: the original client makes a new connection for every offer.
    if (peer.kind !== 'modern' && !(peer.initiator && peer.offersSent === 0)) {
      this.log('no renegotiation with', peer.id, `(${peer.kind})`)
      return
    }
    const pc = peer.pc
    try {
      peer.makingOffer = true
      await pc.setLocalDescription()
      if (peer.closed || !pc.localDescription) return
      peer.offersSent++
      this.o.send(frames.offer(peer.id, this.o.username, pc.localDescription))
    } catch (err) {
      this.log('offer failed', peer.id, err)
    } finally {
      peer.makingOffer = false
    }
  }

  /** A newcomer logged in: we are an existing member, so we offer. */
  handleLogin(id: string, username: string) {
    if (id === this.o.selfId) return
    const old = this.peers.get(id)
    if (old) this.remove(id)
    this.create(id, username, true)
    // negotiationneeded fires on its own (transceivers + data channel added)
  }

  async handleDescription(from: string, description: RTCSessionDescriptionInit, username?: string | null) {
    let peer = this.peers.get(from)
    if (peer && description.type === 'offer' && isNewSession(peer.pc.remoteDescription?.sdp, description.sdp)) {
      // the other side made a new connection (its Retry): so do we
      this.log('new session from', from)
      const pending = peer.pendingChat
      this.remove(from)
      peer = this.create(from, username || peer.username, false)
      peer.pendingChat = pending
    }
    if (!peer) {
      if (description.type !== 'offer') return
      peer = this.create(from, username || '', false)
    } else if (username && !peer.username) {
      peer.username = username
      this.o.callbacks.onPeer?.(from, username)
    }
    const pc = peer.pc
    const readyForOffer =
      !peer.makingOffer && (pc.signalingState === 'stable' || peer.settingRemoteAnswer)
    const offerCollision = description.type === 'offer' && !readyForOffer
    peer.ignoreOffer = !peer.polite && offerCollision
    if (peer.ignoreOffer) {
      this.log('ignoring colliding offer from', from)
      return
    }
    try {
      peer.settingRemoteAnswer = description.type === 'answer'
      if (offerCollision && pc.signalingState === 'have-local-offer') {
        // explicit rollback for browsers without implicit rollback
        await pc.setLocalDescription({ type: 'rollback' })
      }
      await pc.setRemoteDescription(description)
      peer.settingRemoteAnswer = false
      await this.flushCandidates(peer)
      // a restart of a connection that never dropped fires no state change: settle it here
      const ice = pc.iceConnectionState
      if (peer.state === 'reconnecting' && pc.connectionState === 'connected' && (ice === 'connected' || ice === 'completed')) {
        this.setState(peer, 'connected')
      }
      if (description.type === 'offer') {
        await this.attachLocal(peer)
        await pc.setLocalDescription()
        if (!peer.closed && pc.localDescription) this.o.send(frames.answer(from, pc.localDescription))
        // after answering, the offer's data section is negotiated: no new negotiation needed
        this.createOwnChannel(peer)
      }
    } catch (err) {
      peer.settingRemoteAnswer = false
      this.log('description failed', from, err)
    }
  }

  /** After an offer is applied: send our media on the transceivers it created. */
  private async attachLocal(peer: Peer) {
    const pc = peer.pc
    for (const kind of ['audio', 'video'] as MediaKind[]) {
      if (peer.senders[kind]) continue
      const t = pc
        .getTransceivers()
        .find((x) => x.currentDirection !== 'stopped' && x.receiver.track?.kind === kind && !Object.values(peer.senders).includes(x.sender))
      const track = this.localTrack(kind)
      if (!t) {
        if (track) {
          const init: RTCRtpTransceiverInit = { direction: 'sendrecv' }
          if (this.localStream) init.streams = [this.localStream]
          peer.senders[kind] = pc.addTransceiver(track, init).sender
        }
        continue
      }
      peer.senders[kind] = t.sender
      t.direction = 'sendrecv'
      if (this.localStream && typeof t.sender.setStreams === 'function') t.sender.setStreams(this.localStream)
      if (track) await t.sender.replaceTrack(track)
    }
  }

  async handleCandidate(from: string, candidate: RTCIceCandidateInit) {
    const peer = this.peers.get(from)
    if (!peer) return
    if (!peer.pc.remoteDescription) {
      peer.pendingCandidates.push(candidate)
      return
    }
    try {
      await peer.pc.addIceCandidate(candidate)
    } catch (err) {
      if (!peer.ignoreOffer) this.log('candidate failed', from, err)
    }
  }

  private async flushCandidates(peer: Peer) {
    const list = peer.pendingCandidates
    peer.pendingCandidates = []
    for (const c of list) {
      try {
        await peer.pc.addIceCandidate(c)
      } catch (err) {
        this.log('queued candidate failed', peer.id, err)
      }
    }
  }

  private onConnectionState(peer: Peer) {
    const s = peer.pc.connectionState
    if (s === 'connected') {
      peer.restarts = 0
      this.clearRestartTimer(peer)
      this.setState(peer, 'connected')
    } else if (s === 'connecting') {
      if (peer.state !== 'reconnecting') this.setState(peer, 'connecting')
    } else if (s === 'failed') {
      this.onFailure(peer)
    }
  }

  /**
   * ICE or the connection failed. A restart whose offer is still unanswered
   * is left to its timer (the other side may be gone); otherwise restart now.
   */
  private onFailure(peer: Peer) {
    if (peer.restartTimer && peer.pc.signalingState !== 'stable') return
    this.restartIce(peer)
  }

  private clearRestartTimer(peer: Peer) {
    if (peer.restartTimer) clearTimeout(peer.restartTimer)
    peer.restartTimer = null
  }

  private onIceState(peer: Peer) {
    const s = peer.pc.iceConnectionState
    if (peer.disconnectTimer) {
      clearTimeout(peer.disconnectTimer)
      peer.disconnectTimer = null
    }
    if (s === 'failed') {
      this.onFailure(peer)
    } else if (s === 'disconnected') {
      this.setState(peer, 'reconnecting')
      peer.disconnectTimer = setTimeout(() => {
        peer.disconnectTimer = null
        if (peer.pc.iceConnectionState === 'disconnected') this.restartIce(peer)
      }, this.o.disconnectGraceMs ?? 4000)
    } else if ((s === 'connected' || s === 'completed') && peer.state === 'reconnecting') {
      this.clearRestartTimer(peer)
      this.setState(peer, 'connected')
    }
  }

  /** ICE restart on failure, a bounded number of times; then the tile shows "failed". */
  restartIce(peer: Peer) {
    if (peer.closed) return
    if (peer.kind !== 'modern') {
      // an original client cannot take a restart offer (it would build a new
      // connection); ICE may still recover by itself, else the tile says so
      this.log('no ICE restart for', peer.id, `(${peer.kind})`)
      const pc = peer.pc
      if (pc.iceConnectionState === 'failed' || pc.connectionState === 'failed') this.setState(peer, 'failed')
      return
    }
    const max = this.o.maxIceRestarts ?? 3
    this.clearRestartTimer(peer)
    if (peer.restarts >= max) {
      this.setState(peer, 'failed')
      return
    }
    peer.restarts++
    this.setState(peer, 'reconnecting')
    peer.restartTimer = setTimeout(() => {
      peer.restartTimer = null
      if (!peer.closed && peer.pc.connectionState !== 'connected') this.restartIce(peer)
    }, this.o.restartTimeoutMs ?? 5000)
    this.log('ICE restart', peer.id, peer.restarts)
    if (typeof peer.pc.restartIce === 'function') {
      peer.pc.restartIce() // fires negotiationneeded → makeOffer
    } else {
      void (async () => {
        try {
          peer.makingOffer = true
          const offer = await peer.pc.createOffer({ iceRestart: true })
          await peer.pc.setLocalDescription(offer)
          if (peer.pc.localDescription) this.o.send(frames.offer(peer.id, this.o.username, peer.pc.localDescription))
        } catch (err) {
          this.log('ICE restart failed', err)
        } finally {
          peer.makingOffer = false
        }
      })()
    }
  }

  /**
   * Retry a peer whose connection failed: a new RTCPeerConnection and a fresh
   * offer, to this peer only. The other side sees an offer of a new session
   * and makes a new connection too (the original client does that for every
   * offer), so this also works where an ICE restart cannot.
   */
  retry(id: string) {
    const old = this.peers.get(id)
    if (!old) return
    const pending = old.pendingChat
    this.remove(id)
    const peer = this.create(id, old.username, true)
    peer.pendingChat = pending
    this.log('retry', id)
  }

  handleLogout(id: string) {
    this.remove(id)
  }

  remove(id: string) {
    const peer = this.peers.get(id)
    if (!peer) return
    peer.closed = true
    this.peers.delete(id)
    if (peer.disconnectTimer) clearTimeout(peer.disconnectTimer)
    this.clearRestartTimer(peer)
    for (const ch of [peer.own, peer.remote]) {
      try {
        ch?.close()
      } catch {
        /* ignore */
      }
    }
    const pc = peer.pc
    pc.onicecandidate = pc.ontrack = pc.onnegotiationneeded = pc.ondatachannel = null
    pc.onconnectionstatechange = pc.oniceconnectionstatechange = null
    pc.close()
    this.o.callbacks.onState(id, 'closed')
  }

  closeAll() {
    for (const id of [...this.peers.keys()]) this.remove(id)
  }

  /**
   * Send a chat message to every peer, each in the form it reads. Returns how
   * many got it now; peers whose kind is not known yet get it when it is.
   */
  sendChat(msg: ChatPayload): number {
    let n = 0
    for (const peer of this.peers.values()) {
      if (this.chatTo(peer, msg)) n++
      else if (peer.kind === 'unknown' || !this.sendChannel(peer)) {
        peer.pendingChat.push(msg)
        if (peer.pendingChat.length > MAX_PENDING_CHAT) peer.pendingChat.shift()
      }
    }
    return n
  }

  private mediaState: MediaState | null = null

  private sendOn(ch: RTCDataChannel, obj: unknown): boolean {
    try {
      ch.send(JSON.stringify(obj))
      return true
    } catch (err) {
      this.log('channel send failed', err)
      return false
    }
  }

  /** Tell every peer of ours (now, and each new one as its channel opens) whether we send camera / mic. */
  setMediaState(state: MediaState) {
    this.mediaState = { ...state }
    for (const p of this.peers.values()) {
      const ch = p.kind === 'modern' ? this.sendChannel(p) : null
      if (ch) this.sendOn(ch, { type: 'media', ...state })
    }
  }

  /** Current audio level (0..1) heard from each peer, from the receivers' synchronization sources. */
  audioLevels(): Map<string, number> {
    const out = new Map<string, number>()
    for (const p of this.peers.values()) {
      let level = 0
      for (const r of p.pc.getReceivers?.() ?? []) {
        if (r.track?.kind !== 'audio' || typeof r.getSynchronizationSources !== 'function') continue
        for (const src of r.getSynchronizationSources()) level = Math.max(level, src.audioLevel ?? 0)
      }
      out.set(p.id, level)
    }
    return out
  }

  /** Round-trip time, loss since the last call, and jitter of every connection that is up (getStats). */
  async linkStats(): Promise<Map<string, LinkStats>> {
    const out = new Map<string, LinkStats>()
    await Promise.all(
      [...this.peers.values()].map(async (p) => {
        if (p.closed || typeof p.pc.getStats !== 'function') return
        try {
          const report = await p.pc.getStats()
          if (p.closed) return
          const { stats, counters } = readLinkStats(report, p.lossCounters)
          p.lossCounters = counters
          out.set(p.id, stats)
        } catch (err) {
          this.log('getStats failed', p.id, err)
        }
      }),
    )
    return out
  }

  /** Peers we can chat with now. */
  openChannels(): number {
    let n = 0
    for (const p of this.peers.values()) if (p.kind !== 'unknown' && this.sendChannel(p)) n++
    return n
  }

  /** Swap what we send (camera ↔ screen, or a new camera) without renegotiating. */
  async replaceTrack(kind: MediaKind, track: MediaStreamTrack | null) {
    await Promise.all(
      [...this.peers.values()].map(async (p) => {
        const s = p.senders[kind]
        if (s) {
          try {
            await s.replaceTrack(track)
          } catch (err) {
            this.log('replaceTrack failed', p.id, err)
          }
        }
      }),
    )
  }

  /**
   * Cap what each video sender sends at `maxBitrate` (bits/s) with
   * setParameters: no renegotiation, so it holds for the original client too.
   * A sender not negotiated yet (no encodings) is skipped; the caller applies
   * the cap again when that connection comes up.
   */
  async setVideoBitrate(maxBitrate: number) {
    await Promise.all(
      [...this.peers.values()].map(async (p) => {
        const s = p.senders.video
        if (!s) return
        try {
          const params = s.getParameters()
          if (!params.encodings?.length || params.encodings.every((e) => e.maxBitrate === maxBitrate)) return
          for (const e of params.encodings) e.maxBitrate = maxBitrate
          await s.setParameters(params)
        } catch (err) {
          this.log('setParameters failed', p.id, err)
        }
      }),
    )
  }

  setLocalStream(stream: MediaStream | null) {
    this.localStream = stream
  }
}

/**
 * The video bitrate cap for each connection when sending to `peers` others
 * over a mesh: about 1.2 Mbit/s of upload shared between them, at most
 * 1 Mbit/s and at least 150 kbit/s per peer, in 50 kbit/s steps.
 */
export function videoBitrateFor(peers: number): number {
  const per = 1_200_000 / Math.max(1, peers)
  return Math.min(1_000_000, Math.max(150_000, Math.round(per / 50_000) * 50_000))
}

/**
 * An offer of another session than the one this connection has (its SDP
 * origin line's session id differs): the other side made a new connection.
 */
export function isNewSession(current: string | undefined, offered: string | undefined): boolean {
  const id = (sdp: string | undefined) => (sdp ? /^o=\S+ (\S+) /m.exec(sdp)?.[1] ?? null : null)
  const a = id(current)
  const b = id(offered)
  return a !== null && b !== null && a !== b
}

/** A {"type":"media","video":bool,"audio":bool(,"screen":bool)} control frame, or null. */
export function parseMediaState(data: string): MediaState | null {
  if (!data.startsWith('{')) return null
  try {
    const m = JSON.parse(data)
    if (m && m.type === 'media' && typeof m.video === 'boolean' && typeof m.audio === 'boolean') {
      return { video: m.video, audio: m.audio, screen: m.screen === true }
    }
  } catch {
    /* not JSON */
  }
  return null
}

/** A chat frame from the data channel: our JSON, or plain text from an older client. */
export function parseChat(data: string, fallbackName: string): ChatPayload | null {
  let text: string | null = null
  let username = fallbackName
  let id = ''
  let ts = Date.now()
  try {
    const m = JSON.parse(data)
    if (m && typeof m === 'object' && !Array.isArray(m)) {
      if (typeof m.type === 'string' && m.type !== 'chat' && m.type !== 'message') return null // a control frame
      if (typeof m.text === 'string') text = m.text
      else if (typeof m.chatInput === 'string') text = m.chatInput // the original client
      else if (typeof m.message === 'string') text = m.message
      else if (typeof m.data === 'string') text = m.data
      // the name the host stamped on this peer wins over what the peer claims
      if (!username && typeof m.username === 'string') username = m.username
      if (!username && typeof m.sender === 'string') username = m.sender
      if (typeof m.id === 'string') id = m.id
      if (typeof m.ts === 'number' && Number.isFinite(m.ts)) ts = m.ts
    } else if (typeof m === 'string') {
      text = m
    }
  } catch {
    text = data
  }
  if (text === null) text = data
  text = text.slice(0, MAX_CHAT_LEN)
  if (!text.trim()) return null
  return { id, username: username.slice(0, 64), text, ts }
}
