import { defineStore } from 'pinia'
import type { MessageKey } from '../i18n'

export type NoticeKey = Extract<MessageKey, 'joined' | 'left' | 'youJoined' | 'reconnecting' | 'reconnected' | 'youRemoved'>

export interface NoticeEntry {
  seq: number
  kind: 'notice'
  notice: NoticeKey
  params: Record<string, string>
  ts: number
}
export interface MessageEntry {
  seq: number
  kind: 'message'
  from: string
  username: string
  text: string
  ts: number
  own: boolean
}
export type ChatEntry = NoticeEntry | MessageEntry

export const MAX_ENTRIES = 500

let seq = 0

export const useChat = defineStore('chat', {
  state: () => ({
    entries: [] as ChatEntry[],
    unread: 0,
    visible: true,
  }),
  actions: {
    push(e: ChatEntry) {
      this.entries.push(e)
      if (this.entries.length > MAX_ENTRIES) this.entries.splice(0, this.entries.length - MAX_ENTRIES)
    },
    notice(notice: NoticeKey, params: Record<string, string> = {}, ts = Date.now()) {
      this.push({ seq: ++seq, kind: 'notice', notice, params, ts })
    },
    message(m: Omit<MessageEntry, 'seq' | 'kind'>) {
      this.push({ seq: ++seq, kind: 'message', ...m })
      if (!m.own && !this.visible) this.unread++
    },
    setVisible(v: boolean) {
      this.visible = v
      if (v) this.unread = 0
    },
    clear() {
      this.entries = []
      this.unread = 0
    },
  },
})
