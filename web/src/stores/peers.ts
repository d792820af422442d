import { defineStore } from 'pinia'
import { markRaw } from 'vue'
import type { PeerState } from '../lib/peers'
import type { LinkStats, Quality } from '../lib/quality'

export interface RemotePeer {
  id: string
  username: string
  state: PeerState
  stream: MediaStream | null
  /** bumped whenever the stream gains or loses tracks, so tiles re-check */
  version: number
  joinedAt: number
  /** what the peer says it sends (data channel); null = unknown */
  camOff: boolean
  micOff: boolean
  speaking: boolean
  /** the peer's video is a shared screen (its `media` frame says so) */
  screen: boolean
  /** from getStats every few seconds; null until the first sample */
  quality: Quality | null
  link: LinkStats | null
}

export const MAX_MEMBERS = 10

export const usePeers = defineStore('peers', {
  state: () => ({
    byId: {} as Record<string, RemotePeer>,
    order: [] as string[],
  }),
  getters: {
    list(s): RemotePeer[] {
      return s.order.map((id) => s.byId[id]).filter(Boolean)
    },
    count(s): number {
      return s.order.length
    },
  },
  actions: {
    upsert(id: string, patch: Partial<Omit<RemotePeer, 'id'>> = {}) {
      const cur = this.byId[id]
      if (cur) {
        if (patch.stream !== undefined) patch.stream = patch.stream ? markRaw(patch.stream) : null
        Object.assign(cur, patch)
        return cur
      }
      const p: RemotePeer = {
        id,
        username: patch.username ?? '',
        state: patch.state ?? 'new',
        stream: patch.stream ? markRaw(patch.stream) : null,
        version: 0,
        joinedAt: patch.joinedAt ?? Date.now(),
        camOff: false,
        micOff: false,
        speaking: false,
        screen: false,
        quality: null,
        link: null,
      }
      this.byId[id] = p
      this.order.push(id)
      return this.byId[id]
    },
    setStream(id: string, stream: MediaStream) {
      const p = this.byId[id]
      if (!p) return
      p.stream = markRaw(stream)
      p.version++
    },
    setState(id: string, state: PeerState) {
      const p = this.byId[id]
      if (p) p.state = state
    },
    remove(id: string): RemotePeer | null {
      const p = this.byId[id]
      if (!p) return null
      delete this.byId[id]
      this.order = this.order.filter((x) => x !== id)
      return p
    },
    clear() {
      this.byId = {}
      this.order = []
    },
  },
})
