import { describe, it, expect, beforeEach } from 'vitest'
import { setActivePinia, createPinia } from 'pinia'
import { usePeers } from '../src/stores/peers'
import { useChat, MAX_ENTRIES } from '../src/stores/chat'
import { useSession } from '../src/stores/session'
import { FakeStream } from './fakes'

describe('stores', () => {
  beforeEach(() => setActivePinia(createPinia()))

  it('peers keep join order, update in place and remove', () => {
    const peers = usePeers()
    peers.upsert('a', { username: 'A' })
    peers.upsert('b', { username: 'B', state: 'connecting' })
    peers.upsert('a', { state: 'connected' })
    expect(peers.list.map((p) => [p.id, p.username, p.state])).toEqual([
      ['a', 'A', 'connected'],
      ['b', 'B', 'connecting'],
    ])
    const s = new FakeStream() as unknown as MediaStream
    peers.setStream('b', s)
    expect(peers.byId.b.version).toBe(1)
    expect(peers.remove('a')?.username).toBe('A')
    expect(peers.remove('a')).toBeNull()
    expect(peers.count).toBe(1)
    peers.clear()
    expect(peers.list).toEqual([])
  })

  it('chat counts unread only while hidden and only for others', () => {
    const chat = useChat()
    chat.setVisible(false)
    chat.notice('joined', { name: 'A' })
    chat.message({ from: 'a', username: 'A', text: 'x', ts: 1, own: false })
    chat.message({ from: 'me', username: 'Me', text: 'y', ts: 2, own: true })
    expect(chat.unread).toBe(1)
    chat.setVisible(true)
    expect(chat.unread).toBe(0)
    chat.message({ from: 'a', username: 'A', text: 'z', ts: 3, own: false })
    expect(chat.unread).toBe(0)
    expect(chat.entries.map((e) => e.kind)).toEqual(['notice', 'message', 'message', 'message'])
  })

  it('chat keeps a bounded history with unique keys', () => {
    const chat = useChat()
    for (let i = 0; i < MAX_ENTRIES + 20; i++) chat.notice('joined', { name: String(i) })
    expect(chat.entries).toHaveLength(MAX_ENTRIES)
    expect(new Set(chat.entries.map((e) => e.seq)).size).toBe(MAX_ENTRIES)
    expect(chat.entries[0].kind === 'notice' && chat.entries[0].params.name).toBe('20')
  })

  it('session: room edits reset the random check; failJoin returns to login', () => {
    const s = useSession()
    s.random = 'free'
    s.setRoom('abc')
    expect(s.random).toBe('idle')
    s.phase = 'joining'
    s.failJoin({ type: 'full', text: 'room is full' })
    expect(s.phase).toBe('login')
    expect(s.error).toEqual({ type: 'full', text: 'room is full' })
    expect(s.receiveOnly).toBe(false)
  })
})
