// Component smoke tests (happy-dom): labels, errors in words, language toggle.
import { describe, it, expect, beforeEach } from 'vitest'
import { createApp, nextTick } from 'vue'
import { createPinia, setActivePinia } from 'pinia'
import App from '../src/App.vue'
import { CallController } from '../src/call'
import { setLocale } from '../src/i18n'
import { FakeWebSocket, FakeStream, FakeTrack, fakePCFactory, fakeStreamFactory, flush, resetFakes } from './fakes'

function mount() {
  const pinia = createPinia()
  setActivePinia(pinia)
  const call = new CallController({
    url: 'wss://h/ws',
    signaling: { WebSocketImpl: FakeWebSocket as unknown as new (u: string) => WebSocket, setTimer: () => 0, clearTimer: () => {} },
    createPeerConnection: fakePCFactory,
    createStream: fakeStreamFactory,
    getLocalMedia: async () => ({
      stream: new FakeStream([new FakeTrack('audio'), new FakeTrack('video')]) as unknown as MediaStream,
      hasVideo: true,
      hasAudio: true,
      issue: 'none',
    }),
  })
  const el = document.createElement('div')
  document.body.innerHTML = ''
  document.body.appendChild(el)
  const app = createApp(App, { call })
  app.use(pinia)
  app.mount(el)
  call.start()
  return { call, el, app }
}

describe('UI', () => {
  beforeEach(() => {
    resetFakes()
    setLocale('en')
  })

  it('login: every control has a label; the full error is said in words', async () => {
    const { call, el } = mount()
    const ws = FakeWebSocket.last()
    ws.open()
    for (const id of ['room', 'username']) {
      expect(el.querySelector(`label[for=${id}]`)?.textContent?.trim()).toBeTruthy()
    }
    for (const b of el.querySelectorAll('button')) {
      expect(b.getAttribute('aria-label') || b.textContent?.trim()).toBeTruthy()
    }
    ;(el.querySelector('#room') as HTMLInputElement).value = 'r1'
    el.querySelector('#room')!.dispatchEvent(new Event('input'))
    ;(el.querySelector('#username') as HTMLInputElement).value = 'Me'
    el.querySelector('#username')!.dispatchEvent(new Event('input'))
    ;(el.querySelector('form') as HTMLFormElement).dispatchEvent(new Event('submit'))
    await flush()
    expect(ws.sentOf('login')).toEqual([{ type: 'login', data: { roomrequest: 'r1', username: 'Me' } }])
    ws.receive({ type: 'error', message: { errorType: 'full', errorText: 'room is full' } })
    await nextTick()
    const alert = el.querySelector('[role=alert]')!
    expect(alert.textContent).toContain('The room is full')
    setLocale('ko')
    await nextTick()
    expect(el.querySelector('[role=alert]')!.textContent).toContain('방이 가득 찼습니다')
    expect(document.documentElement.lang).toBe('ko')
    expect(call.session.phase).toBe('login')
  })

  it('room: tiles with names, notices, and labelled call controls', async () => {
    const { el } = mount()
    const ws = FakeWebSocket.last()
    ws.open()
    ;(el.querySelector('#room') as HTMLInputElement).value = 'r1'
    el.querySelector('#room')!.dispatchEvent(new Event('input'))
    ;(el.querySelector('#username') as HTMLInputElement).value = 'Me'
    el.querySelector('#username')!.dispatchEvent(new Event('input'))
    ;(el.querySelector('form') as HTMLFormElement).dispatchEvent(new Event('submit'))
    await flush()
    ws.receive({ type: 'joined', data: 'me', members: [{ sessionId: 'me', username: 'Me' }], iceServers: [] })
    await nextTick()
    ws.receive({ type: 'login', from: 'mike', data: { username: 'Mike' } })
    await flush()
    expect(el.querySelector('.tile.remote .name')?.textContent).toBe('Mike')
    expect(el.querySelector('[role=log]')?.textContent).toContain('Mike joined')
    const labels = [...el.querySelectorAll('.controls button')].map((b) => b.getAttribute('aria-label'))
    expect(labels).toContain('Turn camera off')
    expect(labels).toContain('Mute microphone')
    expect(labels).toContain('Leave')
    ws.receive({ type: 'logout', from: 'mike', data: { username: 'Mike', sessionId: 'mike' } })
    await flush()
    expect(el.querySelector('.tile.remote')).toBeNull()
    expect(el.querySelector('[role=log]')?.textContent).toContain('Mike left')
  })

  it('room: a peer who shares a screen is pinned and marked; the automatic pin goes with the share unless changed by hand', async () => {
    const { call, el } = mount()
    const ws = FakeWebSocket.last()
    ws.open()
    ;(el.querySelector('#room') as HTMLInputElement).value = 'r1'
    el.querySelector('#room')!.dispatchEvent(new Event('input'))
    ;(el.querySelector('#username') as HTMLInputElement).value = 'Me'
    el.querySelector('#username')!.dispatchEvent(new Event('input'))
    ;(el.querySelector('form') as HTMLFormElement).dispatchEvent(new Event('submit'))
    await flush()
    ws.receive({ type: 'joined', data: 'me', members: [{ sessionId: 'me', username: 'Me' }], iceServers: [] })
    await nextTick()
    ws.receive({ type: 'login', from: 'ann', data: { username: 'Ann' } })
    ws.receive({ type: 'login', from: 'ben', data: { username: 'Ben' } })
    await flush()
    const share = async (id: string, screen: boolean) => {
      call.peersStore.byId[id].screen = screen
      await nextTick()
    }
    const view = () =>
      [...el.querySelectorAll('.grid > li')].map((li) => ({
        name: li.querySelector('.name')!.textContent,
        pinned: li.classList.contains('pinned'),
        marked: li.querySelector('.screen-badge')?.textContent?.trim() ?? null,
      }))
    await share('ben', true)
    expect(view()).toEqual([
      { name: 'Ben', pinned: true, marked: 'Screen' },
      { name: 'Ann', pinned: false, marked: null },
    ])
    expect(el.querySelector('.grid > li.pinned .tile')!.getAttribute('aria-label')).toBe('Ben (Screen)')
    await share('ben', false)
    expect(view().some((x) => x.pinned)).toBe(false)
    // pinned again, then unpinned by hand: the end of the share changes nothing
    await share('ben', true)
    ;(el.querySelector('button[aria-label="Pin Ann (spotlight)"]') as HTMLButtonElement).click()
    await nextTick()
    await share('ben', false)
    expect(view().find((x) => x.pinned)?.name).toBe('Ann')
    // pinned by hand while sharing: it stays after the share
    ;(el.querySelector('button[aria-label="Pin Ann (spotlight)"]') as HTMLButtonElement).click()
    await share('ben', true)
    const pinBen = () => (el.querySelector('button[aria-label="Pin Ben (spotlight)"]') as HTMLButtonElement).click()
    pinBen()
    await nextTick()
    pinBen()
    await nextTick()
    await share('ben', false)
    expect(view().find((x) => x.pinned)?.name).toBe('Ben')
    // a failed connection offers Retry on that tile only
    call.peersStore.setState('ann', 'failed')
    await nextTick()
    expect([...el.querySelectorAll('.tile .retry')].map((b) => b.getAttribute('aria-label'))).toEqual(['Retry the connection to Ann'])
  })

  it('login: a password field only where the server takes one; a refusal says why and asks again', async () => {
    const { el } = mount()
    const ws = FakeWebSocket.last()
    ws.open()
    await nextTick()
    expect(el.querySelector('#room-password')).toBeNull()
    ws.receive({ type: 'hello', from: '', data: { capabilities: ['password'] } })
    await nextTick()
    const pw = el.querySelector('#room-password') as HTMLInputElement
    expect(pw.type).toBe('password')
    expect(el.querySelector('label[for=room-password]')?.textContent).toContain('Room password')
    const fill = (id: string, v: string) => {
      const i = el.querySelector(id) as HTMLInputElement
      i.value = v
      i.dispatchEvent(new Event('input'))
    }
    fill('#room', 'vault')
    fill('#username', 'Me')
    fill('#room-password', 'guess')
    ;(el.querySelector('form') as HTMLFormElement).dispatchEvent(new Event('submit'))
    await flush()
    expect(ws.sentOf('login').at(-1)).toEqual({ type: 'login', data: { roomrequest: 'vault', username: 'Me', password: 'guess' } })
    ws.receive({ type: 'error', message: { errorType: 'wrongPassword', errorText: "That is not this room's password." } })
    await flush()
    expect(el.querySelector('[role=alert]')!.textContent).toContain('That password is wrong for this room')
    expect((el.querySelector('#room-password') as HTMLInputElement).value).toBe('')
    expect(document.activeElement?.id).toBe('room-password')
    expect(location.search).not.toContain('guess')
    ws.receive({ type: 'error', message: { errorType: 'passwordRequired', errorText: '' } })
    await flush()
    expect(el.querySelector('[role=alert]')!.textContent).toContain('This room has a password')
  })

  it('room: the owner gets a remove control on each remote tile, which asks first', async () => {
    const { el } = mount()
    const ws = FakeWebSocket.last()
    ws.open()
    ws.receive({ type: 'hello', from: '', data: { capabilities: ['kick'] } })
    ;(el.querySelector('#room') as HTMLInputElement).value = 'r1'
    el.querySelector('#room')!.dispatchEvent(new Event('input'))
    ;(el.querySelector('#username') as HTMLInputElement).value = 'Me'
    el.querySelector('#username')!.dispatchEvent(new Event('input'))
    ;(el.querySelector('form') as HTMLFormElement).dispatchEvent(new Event('submit'))
    await flush()
    ws.receive({ type: 'joined', data: 'me', members: [], iceServers: [] })
    await nextTick()
    ws.receive({ type: 'login', from: 'mike', data: { username: 'Mike' } })
    await flush()
    const remove = el.querySelector('.tile.remote button.remove') as HTMLButtonElement
    expect(remove.getAttribute('aria-label')).toBe('Remove Mike from the room')
    remove.click()
    await flush()
    const dialog = el.querySelector('.tile.remote [role=alertdialog]')!
    expect(dialog.textContent).toContain('Remove Mike from the room?')
    expect(ws.sentOf('kick')).toEqual([])
    // cancel first: nothing sent
    ;[...dialog.querySelectorAll('button')].find((b) => b.textContent?.includes('Cancel'))!.click()
    await flush()
    expect(el.querySelector('[role=alertdialog]')).toBeNull()
    expect(document.activeElement).toBe(remove)
    expect(ws.sentOf('kick')).toEqual([])
    // Escape cancels too
    remove.click()
    await flush()
    expect(document.activeElement?.textContent).toContain('Cancel')
    el.querySelector('[role=alertdialog]')!.dispatchEvent(new KeyboardEvent('keydown', { key: 'Escape', bubbles: true }))
    await flush()
    expect(el.querySelector('[role=alertdialog]')).toBeNull()
    expect(ws.sentOf('kick')).toEqual([])
    remove.click()
    await flush()
    ;(el.querySelector('.tile.remote .confirm-remove') as HTMLButtonElement).click()
    await flush()
    expect(ws.sentOf('kick')).toEqual([{ type: 'kick', to: 'mike' }])
  })

  it('room: no remove control for someone who is not the owner', async () => {
    const { el } = mount()
    const ws = FakeWebSocket.last()
    ws.open()
    ws.receive({ type: 'hello', from: '', data: { capabilities: ['kick'] } })
    ;(el.querySelector('#room') as HTMLInputElement).value = 'r1'
    el.querySelector('#room')!.dispatchEvent(new Event('input'))
    ;(el.querySelector('#username') as HTMLInputElement).value = 'Me'
    el.querySelector('#username')!.dispatchEvent(new Event('input'))
    ;(el.querySelector('form') as HTMLFormElement).dispatchEvent(new Event('submit'))
    await flush()
    ws.receive({ type: 'joined', data: 'me', members: [{ sessionId: 'boss', username: 'Boss' }], iceServers: [] })
    await flush()
    expect(el.querySelector('.tile.remote .name')?.textContent).toBe('Boss')
    expect(el.querySelector('button.remove')).toBeNull()
  })
})
