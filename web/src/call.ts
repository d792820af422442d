// Ties signaling, peer connections, local media and the stores together.
// Components call these methods; they never touch sockets or RTCPeerConnections.
import { shallowRef } from 'vue'
import { Signaling, defaultSignalingUrl, type SignalingOptions } from './lib/signaling'
import { PeerManager, MAX_CHAT_LEN, videoBitrateFor } from './lib/peers'
import { frames, uuidv4, validateField, ROOM_MAX_LEN, NAME_MAX_LEN, type ServerFrame } from './lib/protocol'
import { acquireLocalMedia, openDevice, openOtherCamera, stopStream, type LocalMedia } from './lib/media'
import { useSession, saveDevices } from './stores/session'
import { usePeers } from './stores/peers'
import { useChat } from './stores/chat'
import { rateQuality } from './lib/quality'

export interface CallDeps {
  url?: string
  signaling?: SignalingOptions
  createPeerConnection?: (config: RTCConfiguration) => RTCPeerConnection
  createStream?: () => MediaStream
  getLocalMedia?: () => Promise<LocalMedia>
  getDisplayMedia?: () => Promise<MediaStream>
  /** one track from exactly this device (pre-join / in-call device pickers) */
  openDevice?: (kind: 'videoinput' | 'audioinput', deviceId: string) => Promise<MediaStreamTrack>
  /** the phone's other camera (front ↔ back), from the current one's settings */
  openOtherCamera?: (current: MediaTrackSettings) => Promise<MediaStreamTrack>
  log?: (...a: unknown[]) => void
  maxRandomTries?: number
  /** give up on a join with no answer after this long (0: never) */
  joinTimeoutMs?: number
}

export class CallController {
  readonly session = useSession()
  readonly peersStore = usePeers()
  readonly chat = useChat()
  readonly signaling: Signaling
  pm: PeerManager | null = null
  /** camera+mic stream sent to peers (may have no tracks: receive-only) */
  readonly localStream = shallowRef<MediaStream | null>(null)
  /** what the self tile shows (camera, or the screen while sharing) */
  readonly preview = shallowRef<MediaStream | null>(null)
  private screenTrack: MediaStreamTrack | null = null
  private switching = false
  private pendingRandom: string | null = null
  private joinToken = 0
  private joinTimer: ReturnType<typeof setTimeout> | null = null
  private levelTimer: ReturnType<typeof setInterval> | null = null
  private statsTimer: ReturnType<typeof setInterval> | null = null
  /**
   * The room password typed at login: kept here, in memory only, so an
   * automatic rejoin can send it again. Never in a store, the URL or storage.
   */
  private password = ''
  /** a `hello` is waiting for its answer (an older host answers it with badRequest) */
  private helloPending = false
  /** moderation: the `kicked` notice that comes before close 4001 */
  private kickedBy: string | null = null
  /** members who joined before us: when none is left, we own the room */
  private earlier = new Set<string>()
  /** people we asked the server to remove, for the notice when they leave */
  private removing = new Set<string>()

  constructor(private readonly deps: CallDeps = {}) {
    this.signaling = new Signaling(deps.url ?? defaultSignalingUrl(), deps.signaling)
    this.signaling.on('status', (s) => (this.session.server = s))
    this.signaling.on('open', () => this.onOpen())
    this.signaling.on('close', (info) => this.onClose(info))
    this.signaling.on('frame', (f) => this.onFrame(f))
  }

  private log(...a: unknown[]) {
    this.deps.log?.(...a)
  }

  /** Open the socket for the login screen (randomCheck works without login). */
  start() {
    this.signaling.connect()
  }

  // ---- login screen --------------------------------------------------------

  randomRoom() {
    const s = this.session
    s.error = null
    s.randomTries = 0
    this.drawRandom()
  }

  private drawRandom() {
    const s = this.session
    const id = uuidv4()
    s.room = id
    s.roomIssue = null
    s.randomTries++
    if (s.randomTries > (this.deps.maxRandomTries ?? 20)) {
      s.random = 'idle'
      this.pendingRandom = null
      return
    }
    s.random = 'checking'
    this.pendingRandom = id
    if (this.signaling.status === 'open') this.signaling.send(frames.randomCheck(id))
    else this.signaling.connect() // sent from onOpen
  }

  /** `password` is sent only when filled and only to a server whose policies take one. */
  async join(roomInput: string, nameInput: string, password = '') {
    const s = this.session
    if (s.phase !== 'login') return
    const room = validateField(roomInput, ROOM_MAX_LEN)
    const name = validateField(nameInput, NAME_MAX_LEN)
    s.roomIssue = room.ok ? null : room.reason!
    s.nameIssue = name.ok ? null : name.reason!
    if (!room.ok || !name.ok) return
    s.room = room.value
    s.username = name.value
    this.password = password
    s.error = null
    s.phase = 'joining'
    const token = ++this.joinToken
    if (!this.localStream.value) {
      s.step = 'media'
      const media = await this.getMedia()
      if (token !== this.joinToken || s.phase !== 'joining') {
        stopStream(media.stream)
        return
      }
      this.setLocal(media)
    }
    s.step = 'login'
    this.armJoinTimeout()
    if (this.signaling.status === 'open') this.sendLogin()
    else this.signaling.connect() // login is sent from onOpen
  }

  private getMedia(): Promise<LocalMedia> {
    return (this.deps.getLocalMedia ?? (() => acquireLocalMedia(undefined, undefined, this.session.devices)))()
  }

  private setLocal(media: LocalMedia) {
    this.localStream.value = media.stream
    this.preview.value = media.stream
    const s = this.session
    s.media = { ...s.media, hasVideo: media.hasVideo, hasAudio: media.hasAudio, issue: media.issue, camOn: true, micOn: true }
  }

  // ---- pre-join ------------------------------------------------------------

  /**
   * Pre-join: open the camera and microphone on the login screen so they can
   * be previewed and picked; a join then sends this same stream.
   */
  async startPreview() {
    const s = this.session
    if (this.localStream.value || s.phase !== 'login') return
    const token = this.joinToken
    const media = await this.getMedia()
    if (this.localStream.value || s.phase !== 'login' || token !== this.joinToken) {
      stopStream(media.stream)
      return
    }
    this.setLocal(media)
  }

  /** Close the pre-join preview (camera light off) while still on the login screen. */
  stopPreview() {
    if (this.session.phase === 'login') this.releaseMedia()
  }

  /**
   * Use another camera, microphone or speaker. A camera or microphone is
   * opened by its exact id and takes the place of the current track (on every
   * peer connection too, with replaceTrack); the pick is remembered.
   */
  async useDevice(kind: 'videoinput' | 'audioinput' | 'audiooutput', deviceId: string) {
    const s = this.session
    s.devices = { ...s.devices, [kind]: deviceId }
    saveDevices(s.devices)
    if (kind === 'audiooutput') return
    const stream = this.localStream.value
    const mediaKind = kind === 'videoinput' ? 'video' : 'audio'
    const old = stream?.getTracks().find((t) => t.kind === mediaKind)
    if (!stream || !old) return
    if (old.getSettings().deviceId === deviceId) return
    let track: MediaStreamTrack
    try {
      track = await (this.deps.openDevice ?? openDevice)(kind, deviceId)
    } catch (err) {
      this.log('device switch failed', kind, err)
      s.showToast('deviceFailed')
      return
    }
    if (this.localStream.value !== stream) {
      track.stop()
      return
    }
    await this.swapTrack(stream, old, track)
  }

  /** Put `track` in the place of `old` in the local stream, the preview and every peer connection. */
  private async swapTrack(stream: MediaStream, old: MediaStreamTrack, track: MediaStreamTrack) {
    const s = this.session
    track.enabled = old.enabled
    stream.removeTrack(old)
    old.stop()
    stream.addTrack(track)
    if (track.kind === 'video') s.media.backCamera = track.getSettings().facingMode === 'environment'
    // a new stream object, so every video element showing it rebinds
    if (!(track.kind === 'video' && s.media.sharing)) {
      this.preview.value = new MediaStream(stream.getTracks())
      await this.pm?.replaceTrack(track.kind as 'audio' | 'video', track)
    }
  }

  /**
   * Phones: switch between the front and back camera (by facingMode, else the
   * next camera) and send the new one on every peer connection with
   * replaceTrack — no renegotiation. A phone that cannot open a second camera
   * while one runs gets the first one released before it tries again.
   */
  async switchCamera() {
    const s = this.session
    const stream = this.localStream.value
    const old = stream?.getVideoTracks()[0]
    if (!stream || !old || s.media.audioOnly || this.switching) return
    this.switching = true
    const open = this.deps.openOtherCamera ?? ((cur: MediaTrackSettings) => openOtherCamera(cur))
    const settings = old.getSettings()
    try {
      let track: MediaStreamTrack
      try {
        track = await open(settings)
      } catch (err) {
        if ((err as { name?: string })?.name !== 'NotReadableError') throw err
        // busy: this phone opens one camera at a time
        old.stop()
        try {
          track = await open(settings)
        } catch (again) {
          await this.swapTrack(stream, old, await (this.deps.openDevice ?? openDevice)('videoinput', settings.deviceId ?? ''))
          throw again
        }
      }
      if (this.localStream.value !== stream) {
        track.stop()
        return
      }
      await this.swapTrack(stream, old, track)
      const id = track.getSettings().deviceId
      if (id) {
        s.devices = { ...s.devices, videoinput: id }
        saveDevices(s.devices)
      }
    } catch (err) {
      this.log('camera switch failed', err)
      s.showToast('deviceFailed')
    } finally {
      this.switching = false
    }
  }

  /** A join that gets no answer (server down) ends with a message instead of spinning forever. */
  private armJoinTimeout() {
    this.clearJoinTimeout()
    const ms = this.deps.joinTimeoutMs ?? 20_000
    if (ms <= 0) return
    this.joinTimer = setTimeout(() => {
      this.joinTimer = null
      const s = this.session
      if (s.phase === 'joining') {
        this.joinToken++
        this.releaseMedia()
        s.failJoin({ type: 'timeout', text: '' })
      }
    }, ms)
  }

  private clearJoinTimeout() {
    if (this.joinTimer) clearTimeout(this.joinTimer)
    this.joinTimer = null
  }

  private sendLogin() {
    const s = this.session
    this.signaling.send(frames.login(s.room, s.username, s.passwordRooms ? this.password : ''))
  }

  // ---- socket events -------------------------------------------------------

  private onOpen() {
    const s = this.session
    // first, so its answer (or an older host's badRequest) is the first reply
    this.helloPending = true
    this.kickedBy = null
    this.signaling.send(frames.hello())
    if (s.phase === 'joining' || (s.phase === 'room' && s.reconnecting)) this.sendLogin()
    if (this.pendingRandom && s.random === 'checking') this.signaling.send(frames.randomCheck(this.pendingRandom))
  }

  private onClose({ willReconnect, final, code, reason }: { willReconnect: boolean; final: boolean; code: number; reason: string }) {
    const s = this.session
    this.helloPending = false
    if (final) {
      // removed or refused by a policy: end the session with a message, never come back on our own
      const by = this.kickedBy
      this.kickedBy = null
      if (s.random === 'checking') {
        s.random = 'idle'
        this.pendingRandom = null
      }
      const err = code === 4001 || by !== null ? { type: 'kicked', text: reason, by: by ?? '' } : { type: 'closed', text: reason }
      if (s.phase === 'login') {
        s.error = err
        return
      }
      this.endSession()
      s.failJoin(err)
      return
    }
    if (s.phase === 'room' && willReconnect) {
      // our session is gone: peers already dropped us; rejoin as a new session
      if (!s.reconnecting) this.chat.notice('reconnecting')
      s.reconnecting = true
      this.pm?.closeAll()
      this.pm = null
      for (const p of this.peersStore.list) this.peersStore.remove(p.id)
    }
  }

  onFrame(f: ServerFrame) {
    const s = this.session
    switch (f.type) {
      case 'randomCheckResult':
        if (f.room !== this.pendingRandom || s.random !== 'checking') return
        if (f.ok) {
          s.random = 'free'
          this.pendingRandom = null
        } else {
          s.random = 'taken'
          this.drawRandom()
        }
        return
      case 'joined':
        return this.onJoined(f.selfId, f.iceServers, f.members)
      case 'hello':
        this.helloPending = false
        s.capabilities = f.capabilities
        return
      case 'kicked':
        this.kickedBy = f.by ?? ''
        return
      case 'error':
        if (this.helloPending) {
          this.helloPending = false
          // an older host does not know `hello`: it offers nothing extra
          if (f.errorType === 'badRequest') {
            s.capabilities = []
            return
          }
        }
        return this.onError(f.errorType, f.errorText)
    }
    if (s.phase !== 'room' || !this.pm) return
    switch (f.type) {
      case 'login':
        if (f.from === s.selfId) return
        this.peersStore.upsert(f.from, { username: f.username, state: 'connecting' })
        this.chat.notice('joined', { name: f.username })
        this.pm.handleLogin(f.from, f.username)
        return
      case 'offer':
        void this.pm.handleDescription(f.from, f.description, f.username)
        return
      case 'answer':
        void this.pm.handleDescription(f.from, f.description)
        return
      case 'candidate':
        void this.pm.handleCandidate(f.from, f.candidate)
        return
      case 'logout': {
        if (f.from === s.selfId) {
          // the host took us out of the room (a cluster undid our join):
          // back to the login screen, media off, as after a refused join
          this.endSession()
          s.failJoin({ type: 'notInRoom', text: 'You are not in a room any more.' })
          return
        }
        const p = this.peersStore.byId[f.from]
        if (!p && !this.pm.peers.has(f.from)) return
        const name = p?.username || f.username || ''
        this.pm.handleLogout(f.from)
        this.peersStore.remove(f.from)
        void this.applyBitrate()
        this.earlier.delete(f.from)
        s.isOwner = this.earlier.size === 0
        this.chat.notice(this.removing.delete(f.from) ? 'youRemoved' : 'left', { name })
        return
      }
    }
  }

  private onJoined(selfId: string, iceServers: RTCIceServer[], members: { sessionId: string; username: string }[]) {
    const s = this.session
    const rejoin = s.phase === 'room' && s.reconnecting
    if (s.phase !== 'joining' && !rejoin) return
    this.clearJoinTimeout()
    this.pm?.closeAll()
    s.selfId = selfId
    s.iceServers = iceServers
    s.phase = 'room'
    s.step = null
    s.error = null
    s.reconnecting = false
    this.peersStore.clear()
    this.pm = new PeerManager({
      selfId,
      username: s.username,
      iceServers,
      relayOnly: s.relayOnly,
      localStream: this.localStream.value,
      send: (fr) => this.signaling.send(fr),
      createPeerConnection: this.deps.createPeerConnection,
      createStream: this.deps.createStream,
      log: this.deps.log,
      callbacks: {
        onPeer: (id, username) => {
          const cur = this.peersStore.byId[id]
          if (!cur) this.peersStore.upsert(id, { username, state: 'connecting' })
          else if (username && !cur.username) cur.username = username
        },
        onStream: (id, stream) => this.peersStore.setStream(id, stream),
        onState: (id, state) => {
          if (state !== 'closed') this.peersStore.setState(id, state)
          if (state === 'connected') void this.applyBitrate()
        },
        onMediaState: (id, st) => {
          const p = this.peersStore.byId[id]
          if (p) {
            p.camOff = !st.video
            p.micOff = !st.audio
            p.screen = st.screen === true
          }
        },
        onChat: (id, msg) => {
          const p = this.peersStore.byId[id]
          this.chat.message({ from: id, username: p?.username || msg.username, text: msg.text, ts: Date.now(), own: false })
        },
      },
    })
    // still sharing after a rejoin: the new connections send the screen
    if (this.screenTrack) void this.pm.setScreenTrack(this.screenTrack)
    this.announceMedia()
    this.startLevelPolling()
    this.startStatsPolling()
    for (const m of members) {
      if (m.sessionId !== selfId) this.peersStore.upsert(m.sessionId, { username: m.username, state: 'new' })
    }
    // moderation's owner is the longest-present member (protocol.md, `hello`)
    this.earlier = new Set(members.map((m) => m.sessionId).filter((id) => id !== selfId))
    this.removing.clear()
    s.isOwner = this.earlier.size === 0
    this.chat.notice(rejoin ? 'reconnected' : 'youJoined', { room: s.room })
  }

  private onError(errorType: string, errorText: string) {
    const s = this.session
    const err = { type: errorType, text: errorText }
    if (s.phase === 'joining' || (s.phase === 'room' && s.reconnecting)) {
      // join refused (full, passwordRequired, ...): back to the login screen, media off
      this.endSession()
      if (errorType === 'passwordRequired' || errorType === 'wrongPassword') this.password = ''
      s.failJoin(err)
      return
    }
    if (s.random === 'checking') {
      s.random = 'idle'
      this.pendingRandom = null
    }
    s.error = err
  }

  /** Tear down what a session in a room holds (peers, media, timers). */
  private endSession() {
    this.clearJoinTimeout()
    this.stopLevelPolling()
    this.joinToken++
    this.pm?.closeAll()
    this.pm = null
    this.peersStore.clear()
    this.earlier.clear()
    this.removing.clear()
    this.releaseMedia()
  }

  // ---- in the room ---------------------------------------------------------

  /** moderation: ask the server to remove a member (the owner only; the UI confirms first). */
  kick(id: string): boolean {
    const s = this.session
    if (!s.canRemove || !this.peersStore.byId[id]) return false
    this.removing.add(id)
    return this.signaling.send(frames.kick(id))
  }

  /** A failed tile's Retry: a new connection to that peer only (PeerManager.retry). */
  retry(id: string) {
    if (!this.pm?.peers.has(id)) return
    this.pm.retry(id)
  }

  /** Scale every connection's video bitrate to how many peers we send to (a mesh: one upload each). */
  private async applyBitrate() {
    const pm = this.pm
    if (!pm) return
    await pm.setVideoBitrate(videoBitrateFor(pm.peers.size))
  }

  /** Who is speaking: polled from the receivers (cheap; no audio graph per peer). */
  private startLevelPolling() {
    if (this.levelTimer || typeof setInterval !== 'function') return
    this.levelTimer = setInterval(() => {
      if (!this.pm) return
      for (const [id, level] of this.pm.audioLevels()) {
        const p = this.peersStore.byId[id]
        const speaking = level > 0.04
        if (p && p.speaking !== speaking) p.speaking = speaking
      }
    }, 400)
  }

  private stopLevelPolling() {
    if (this.levelTimer) clearInterval(this.levelTimer)
    this.levelTimer = null
    if (this.statsTimer) clearInterval(this.statsTimer)
    this.statsTimer = null
  }

  /** Connection quality of each tile: RTT, loss and jitter from getStats, every 2 s. */
  private startStatsPolling() {
    if (this.statsTimer || typeof setInterval !== 'function') return
    let busy = false
    this.statsTimer = setInterval(async () => {
      const pm = this.pm
      if (!pm || busy) return
      busy = true
      try {
        for (const [id, link] of await pm.linkStats()) {
          const p = this.peersStore.byId[id]
          if (!p) continue
          p.link = link
          p.quality = p.state === 'connected' ? rateQuality(link) : null
        }
      } finally {
        busy = false
      }
    }, 2000)
  }

  sendChat(input: string): boolean {
    const text = input.trim().slice(0, MAX_CHAT_LEN)
    const s = this.session
    if (!text || s.phase !== 'room' || !this.pm) return false
    const ts = Date.now()
    this.pm.sendChat({ id: uuidv4(), username: s.username, text, ts })
    this.chat.message({ from: s.selfId ?? '', username: s.username, text, ts, own: true })
    return true
  }

  private announceMedia() {
    const m = this.session.media
    this.pm?.setMediaState({ video: m.sharing || (m.hasVideo && m.camOn && !m.audioOnly), audio: m.hasAudio && m.micOn, screen: m.sharing })
  }

  /**
   * Audio-only mode: send no video at all. The camera is stopped (its light
   * goes off) and every video sender sends nothing (`replaceTrack(null)`, no
   * renegotiation, so the original client is unaffected); the others see the
   * placeholder. Turning it off opens the camera (the one picked) again.
   */
  async toggleAudioOnly() {
    const s = this.session
    const stream = this.localStream.value
    if (!stream || !s.media.hasVideo) return
    if (!s.media.audioOnly) {
      s.media.audioOnly = true
      if (s.media.sharing) await this.stopScreenShare()
      for (const tr of stream.getVideoTracks()) {
        stream.removeTrack(tr)
        tr.stop()
      }
      this.preview.value = new MediaStream(stream.getTracks())
      await this.pm?.replaceTrack('video', null)
      this.announceMedia()
      return
    }
    let track: MediaStreamTrack
    try {
      track = await (this.deps.openDevice ?? openDevice)('videoinput', s.devices.videoinput)
    } catch (err) {
      this.log('camera did not come back', err)
      s.showToast('deviceFailed')
      return
    }
    if (this.localStream.value !== stream || !s.media.audioOnly) {
      track.stop()
      return
    }
    s.media.audioOnly = false
    track.enabled = s.media.camOn
    stream.addTrack(track)
    this.preview.value = new MediaStream(stream.getTracks())
    await this.pm?.replaceTrack('video', track)
    this.announceMedia()
  }

  toggleCamera() {
    const track = this.localStream.value?.getVideoTracks()[0]
    if (!track) return
    track.enabled = !track.enabled
    this.session.media.camOn = track.enabled
    this.announceMedia()
  }

  toggleMic() {
    const track = this.localStream.value?.getAudioTracks()[0]
    if (!track) return
    track.enabled = !track.enabled
    this.session.media.micOn = track.enabled
    this.announceMedia()
  }

  /**
   * Share a screen: every video sender (and every connection made while
   * sharing) sends it instead of the camera, with replaceTrack; the `media`
   * frame says `screen`, so our peers show it whole and pinned.
   */
  async toggleScreenShare() {
    if (this.session.media.sharing) return this.stopScreenShare()
    const get = this.deps.getDisplayMedia ?? (() => navigator.mediaDevices.getDisplayMedia({ video: true, audio: false }))
    let screen: MediaStream
    try {
      screen = await get()
    } catch (err) {
      this.log('screen share refused', err)
      return
    }
    const track = screen.getVideoTracks()[0]
    if (!track || !this.pm) {
      stopStream(screen)
      return
    }
    this.screenTrack = track
    track.onended = () => void this.stopScreenShare()
    await this.pm.setScreenTrack(track)
    this.preview.value = screen
    this.session.media.sharing = true
    this.announceMedia()
  }

  async stopScreenShare() {
    const track = this.screenTrack
    this.screenTrack = null
    if (track) {
      track.onended = null
      track.stop()
    }
    this.session.media.sharing = false
    this.preview.value = this.localStream.value
    await this.pm?.setScreenTrack(null)
    this.announceMedia()
  }

  private releaseMedia() {
    if (this.screenTrack) {
      this.screenTrack.onended = null
      this.screenTrack.stop()
      this.screenTrack = null
    }
    stopStream(this.localStream.value)
    this.localStream.value = null
    this.preview.value = null
    this.session.resetMedia()
  }

  /** Leave: closing the session is how the protocol leaves a room. */
  leave() {
    const s = this.session
    this.password = ''
    this.earlier.clear()
    this.removing.clear()
    s.isOwner = false
    this.joinToken++
    this.clearJoinTimeout()
    this.stopLevelPolling()
    this.pm?.closeAll()
    this.pm = null
    this.signaling.close()
    this.releaseMedia()
    this.peersStore.clear()
    this.chat.clear()
    s.phase = 'login'
    s.step = null
    s.selfId = null
    s.reconnecting = false
    s.error = null
    s.random = 'idle'
    this.signaling.connect()
  }

  /** Peer connections by session id (diagnostics, tests). */
  peerConnections(): Map<string, RTCPeerConnection> {
    const m = new Map<string, RTCPeerConnection>()
    for (const [id, p] of this.pm?.peers ?? []) m.set(id, p.pc)
    return m
  }
}
