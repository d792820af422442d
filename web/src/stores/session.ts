import { defineStore } from 'pinia'
import type { SignalingStatus } from '../lib/signaling'
import type { MediaIssue, DevicePrefs } from '../lib/media'

export type Phase = 'login' | 'joining' | 'room'
export type JoinStep = 'server' | 'media' | 'login' | null
export type RandomState = 'idle' | 'checking' | 'free' | 'taken'
export type FieldIssue = 'empty' | 'long' | 'chars'

export interface ServerError {
  type: string
  text: string
  /** kicked: the name of who removed us */
  by?: string
}

const DEVICES_KEY = 'webrtc-chat.devices'

function loadDevices(): DevicePrefs {
  const d: DevicePrefs = { videoinput: '', audioinput: '', audiooutput: '' }
  try {
    const v = JSON.parse(localStorage.getItem(DEVICES_KEY) ?? '{}') as Partial<DevicePrefs>
    for (const k of ['videoinput', 'audioinput', 'audiooutput'] as const) if (typeof v[k] === 'string') d[k] = v[k]
  } catch {
    /* no storage, or not ours */
  }
  return d
}

export function saveDevices(d: DevicePrefs) {
  try {
    localStorage.setItem(DEVICES_KEY, JSON.stringify(d))
  } catch {
    /* ignore */
  }
}

export const useSession = defineStore('session', {
  state: () => ({
    phase: 'login' as Phase,
    step: null as JoinStep,
    room: '',
    username: '',
    selfId: null as string | null,
    error: null as ServerError | null,
    roomIssue: null as FieldIssue | null,
    nameIssue: null as FieldIssue | null,
    server: 'idle' as SignalingStatus,
    reconnecting: false,
    random: 'idle' as RandomState,
    randomTries: 0,
    iceServers: [] as RTCIceServer[],
    /** what the server's policies offer, from its `hello` answer ("password", "kick", …) */
    capabilities: [] as string[],
    /** moderation: we are the longest-present member, so the room's owner */
    isOwner: false,
    relayOnly: false,
    media: {
      hasVideo: false,
      hasAudio: false,
      camOn: true,
      micOn: true,
      sharing: false,
      /** audio-only mode: no camera, no video sent */
      audioOnly: false,
      /** the camera faces away (a phone's back camera): the self view is not mirrored */
      backCamera: false,
      issue: 'none' as MediaIssue,
    },
    /** pre-join picks, remembered in localStorage ('' = the browser's default) */
    devices: loadDevices(),
    toast: null as { key: string; params?: Record<string, string>; at: number } | null,
  }),
  getters: {
    inRoom: (s) => s.phase === 'room',
    busy: (s) => s.phase === 'joining',
    receiveOnly: (s) => !s.media.hasVideo && !s.media.hasAudio && s.phase !== 'login',
    /** the server lets logins carry a room password (password-rooms policy) */
    passwordRooms: (s) => s.capabilities.includes('password'),
    /** we may remove others: the server has moderation and we own the room */
    canRemove: (s) => s.capabilities.includes('kick') && s.isOwner && s.phase === 'room',
  },
  actions: {
    setRoom(room: string) {
      this.room = room
      this.random = 'idle'
      this.roomIssue = null
    },
    failJoin(err: ServerError) {
      this.phase = 'login'
      this.step = null
      this.error = err
      this.selfId = null
      this.reconnecting = false
      this.isOwner = false
    },
    showToast(key: string, params?: Record<string, string>) {
      this.toast = { key, params, at: Date.now() }
    },
    resetMedia() {
      this.media = { hasVideo: false, hasAudio: false, camOn: true, micOn: true, sharing: false, audioOnly: false, backCamera: false, issue: 'none' }
    },
  },
})
