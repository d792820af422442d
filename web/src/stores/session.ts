import { defineStore } from 'pinia'
import type { SignalingStatus } from '../lib/signaling'
import type { MediaIssue } from '../lib/media'

export type Phase = 'login' | 'joining' | 'room'
export type JoinStep = 'server' | 'media' | 'login' | null
export type RandomState = 'idle' | 'checking' | 'free' | 'taken'
export type FieldIssue = 'empty' | 'long' | 'chars'

export interface ServerError {
  type: string
  text: string
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
    relayOnly: false,
    media: {
      hasVideo: false,
      hasAudio: false,
      camOn: true,
      micOn: true,
      sharing: false,
      issue: 'none' as MediaIssue,
    },
    toast: null as { key: string; params?: Record<string, string>; at: number } | null,
  }),
  getters: {
    inRoom: (s) => s.phase === 'room',
    busy: (s) => s.phase === 'joining',
    receiveOnly: (s) => !s.media.hasVideo && !s.media.hasAudio && s.phase !== 'login',
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
    },
    showToast(key: string, params?: Record<string, string>) {
      this.toast = { key, params, at: Date.now() }
    },
    resetMedia() {
      this.media = { hasVideo: false, hasAudio: false, camOn: true, micOn: true, sharing: false, issue: 'none' }
    },
  },
})
