// End-to-end: the real host (HOST_BIN) + Debian Chromium with fake camera/mic.
// Bounded: each wait has a timeout; the whole file aims at well under 5 minutes.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import {
  startHost,
  launchBrowser,
  suitePages,
  join,
  expectRemoteVideos,
  expectRemoteAudio,
  remoteNames,
  shot,
  sleep,
  axeViolations,
} from './support/harness.mjs'

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/i

describe('WebRTC Chat client against the host', { timeout: 280_000 }, () => {
  let host, browser
  // closePage fails on anything the page reported as wrong (page errors,
  // console errors, CSP violations) beyond the `expected` ones.
  const { open, close: closePage, closeAll } = suitePages(() => browser)

  before(async () => {
    host = await startHost({ roomMax: 10 })
    browser = await launchBrowser()
  })
  after(async () => {
    await closeAll()
    await browser?.close().catch(() => {})
    await host?.stop()
  })

  it('serves a valid manifest and registers the service worker', async () => {
    const page = await open()
    await page.goto(host.base + '/')
    const href = await page.locator('link[rel=manifest]').getAttribute('href')
    assert.ok(href, 'index.html links a manifest')
    const res = await page.request.get(new URL(href, host.base).toString())
    assert.equal(res.status(), 200)
    const m = await res.json()
    assert.ok(m.name && m.short_name, 'name')
    assert.equal(m.start_url, '/')
    assert.ok(['standalone', 'fullscreen', 'minimal-ui'].includes(m.display), 'display')
    const sizes = (purpose) => m.icons.filter((i) => (i.purpose ?? 'any').split(' ').includes(purpose)).map((i) => i.sizes)
    assert.ok(sizes('any').includes('192x192'), 'icon 192')
    assert.ok(sizes('any').includes('512x512'), 'icon 512')
    assert.ok(sizes('maskable').length > 0, 'maskable icon')
    for (const icon of m.icons) {
      const r = await page.request.get(new URL(icon.src, host.base).toString())
      assert.equal(r.status(), 200, icon.src)
      assert.match(r.headers()['content-type'] ?? '', /image\/png/)
    }
    assert.ok(Array.isArray(m.screenshots) && m.screenshots.length >= 1, 'screenshots')
    const sw = await page.evaluate(async () => {
      const reg = await Promise.race([navigator.serviceWorker.ready, new Promise((r) => setTimeout(() => r(null), 15000))])
      return reg ? { scope: reg.scope, active: !!reg.active, script: reg.active?.scriptURL } : null
    })
    assert.ok(sw && sw.active, 'service worker active')
    assert.match(sw.script, /\/sw\.js$/)
    // the app shell is cached; the socket path is not a navigation fallback
    const cached = await page.evaluate(async () => {
      const keys = await caches.keys()
      let urls = []
      for (const k of keys) urls = urls.concat((await (await caches.open(k)).keys()).map((r) => new URL(r.url).pathname))
      return urls
    })
    assert.ok(cached.some((u) => u.endsWith('/index.html')), 'index.html precached')
    assert.ok(!cached.some((u) => u.startsWith('/ws')), 'socket never cached')
    await shot(page, 'login-desktop.png')
    assert.deepEqual(await axeViolations(page), [], 'login screen: no serious accessibility violations')
    await closePage(page)
  })

  it('random room: fills a UUID and reports it free', async () => {
    const page = await open({ viewport: { width: 390, height: 844 }, isMobile: true, locale: 'ko-KR' })
    await page.goto(host.base + '/')
    await page.getByRole('button', { name: '무작위 방 만들기' }).click()
    await page.locator('.status[data-random=free]').waitFor({ timeout: 15_000 })
    const room = await page.locator('#room').inputValue()
    assert.match(room, UUID_RE)
    assert.match(await page.locator('.status').innerText(), /비어 있는 방/)
    await shot(page, 'login-mobile.png')
    // the toggle switches the language (and is remembered)
    await page.getByRole('button', { name: 'EN (영어로 보기)' }).click()
    await page.getByRole('button', { name: 'Login' }).waitFor()
    assert.equal(await page.evaluate(() => document.documentElement.lang), 'en')
    await page.reload()
    await page.getByRole('button', { name: 'Login' }).waitFor()
    await closePage(page)
  })

  it('two, then three people see and hear each other, chat, and see a leave', async () => {
    const room = `e2e-${randomUUID().slice(0, 8)}`
    const alice = await open({ viewport: { width: 1280, height: 800 } })
    const bob = await open({ viewport: { width: 390, height: 844 }, isMobile: true, locale: 'ko-KR' })
    await join(alice, host.base, room, 'Alice')
    await join(bob, host.base, room, 'Bob')

    for (const [p, who] of [[alice, 'Alice'], [bob, 'Bob']]) {
      const v = await expectRemoteVideos(p, 1)
      assert.ok(v[0].width > 0, `${who} sees video`)
      assert.ok(v[0].advanced && v[0].framesAdvanced, `${who}'s remote video is playing`)
    }
    for (const [p, who] of [[alice, 'Alice'], [bob, 'Bob']]) {
      await expectRemoteAudio(p, 1).catch((e) => assert.fail(`${who} hears nothing: ${e.message}`))
    }
    assert.deepEqual(await remoteNames(alice), ['Bob'])
    assert.deepEqual(await remoteNames(bob), ['Alice'])
    // join notice in each language
    await alice.getByText('Bob joined').waitFor()

    // chat over the data channel, both ways
    await alice.locator('#chat-input').fill('hello from Alice')
    await alice.locator('#chat-input').press('Enter')
    await bob.getByRole('button', { name: '채팅 열기' }).click()
    // Chromium has Picture-in-Picture: the remote video goes there as chat opens
    const pip = await bob.evaluate(async () => {
      for (let i = 0; i < 50 && !document.pictureInPictureElement; i++) await new Promise((r) => setTimeout(r, 100))
      return { enabled: !!document.pictureInPictureEnabled, inPip: !!document.pictureInPictureElement?.closest('.tile.remote') }
    })
    assert.deepEqual(pip, { enabled: true, inPip: true }, 'remote video in PIP while chatting')
    await bob.locator('.entry.message', { hasText: 'hello from Alice' }).waitFor({ timeout: 15_000 })
    await bob.locator('#chat-input').fill('안녕 from Bob')
    await bob.getByRole('button', { name: /보내기/ }).click()
    await alice.locator('.entry.message', { hasText: '안녕 from Bob' }).waitFor({ timeout: 15_000 })
    await shot(bob, 'chat-mobile.png')
    await bob.getByRole('button', { name: '영상으로 돌아가기' }).click()
    // exitPictureInPicture() resolves a little later: wait for it rather than read at once
    await bob.waitForFunction(() => !document.pictureInPictureElement, null, { timeout: 10_000 }).catch(() => assert.fail('PIP closed on return'))

    const carol = await open({ viewport: { width: 1280, height: 800 } })
    await join(carol, host.base, room, 'Carol', '', { keyboard: true })
    for (const [p, who] of [[alice, 'Alice'], [bob, 'Bob'], [carol, 'Carol']]) {
      const v = await expectRemoteVideos(p, 2)
      assert.equal(v.length, 2, `${who} has two remote tiles`)
      assert.ok(v.every((x) => x.width > 0 && x.advanced), `${who} plays both remote videos`)
      await expectRemoteAudio(p, 2).catch((e) => assert.fail(`${who} does not hear both others: ${e.message}`))
    }
    assert.deepEqual((await remoteNames(carol)).sort(), ['Alice', 'Bob'])
    await sleep(500)
    await shot(alice, 'call-desktop.png')
    await shot(bob, 'call-mobile.png')
    assert.deepEqual(await axeViolations(alice), [], 'desktop room: no serious accessibility violations')
    assert.deepEqual(await axeViolations(bob), [], 'mobile room: no serious accessibility violations')

    // Carol leaves: the others get the notice and lose her tile
    await carol.getByRole('button', { name: 'Leave' }).click()
    await carol.locator('main.login').waitFor()
    await alice.getByText('Carol left').waitFor({ timeout: 15_000 })
    // Bob is on the mobile video screen: the notice pops up there
    await bob.locator('.toast', { hasText: 'Carol님이 로그아웃하였습니다' }).waitFor({ timeout: 15_000 })
    await alice.waitForFunction(() => document.querySelectorAll('.tile.remote').length === 1)
    await bob.waitForFunction(() => document.querySelectorAll('.tile.remote').length === 1)
    assert.deepEqual(await remoteNames(alice), ['Bob'])
    await closePage(carol)
    await closePage(alice)
    await closePage(bob)
  })

  it('without a camera: joins receive-only with a notice, still sees video and chats', async () => {
    const room = `recv-${randomUUID().slice(0, 8)}`
    const cam = await open()
    const viewer = await open({ viewport: { width: 390, height: 844 }, isMobile: true })
    await viewer.addInitScript(() => {
      navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('denied', 'NotAllowedError'))
    })
    await join(cam, host.base, room, 'Camera')
    await join(viewer, host.base, room, 'Viewer')
    const notice = viewer.locator('.media-notice')
    await notice.waitFor()
    assert.match(await notice.innerText(), /receive-only/)
    const v = await expectRemoteVideos(viewer, 1)
    assert.ok(v[0].width > 0 && v[0].advanced, 'the viewer sees the camera')
    await shot(viewer, 'receive-only-mobile.png')
    // the camera side sees a placeholder tile (no video from the viewer), named
    await cam.locator('.tile.remote', { hasText: 'Viewer' }).waitFor()
    assert.equal(await cam.locator('.tile.remote .placeholder').count(), 1)
    await cam.locator('#chat-input').fill('can you see me?')
    await cam.locator('#chat-input').press('Enter')
    await viewer.getByRole('button', { name: 'Open chat' }).click()
    await viewer.locator('.entry.message', { hasText: 'can you see me?' }).waitFor({ timeout: 15_000 })
    await closePage(cam)
    await closePage(viewer)
  })

  it('a dropped signaling socket reconnects, rejoins, and the call comes back', async () => {
    const room = `reco-${randomUUID().slice(0, 8)}`
    const a = await open()
    const b = await open()
    await join(a, host.base, room, 'Ann')
    await join(b, host.base, room, 'Ben')
    await expectRemoteVideos(a, 1)
    await b.evaluate(() => window.__webrtcChat.signaling.ws.close())
    await b.getByText('Reconnected to the room.').waitFor({ timeout: 20_000 })
    await a.getByText('Ben left').waitFor()
    // Ben comes back as a new session: a second "joined" notice
    await a.waitForFunction(
      () => [...document.querySelectorAll('.entry.notice')].filter((e) => e.textContent.includes('Ben joined')).length === 2,
      null,
      { timeout: 20_000 },
    )
    for (const p of [a, b]) {
      const v = await expectRemoteVideos(p, 1)
      assert.ok(v[0].width > 0 && v[0].advanced, 'video is back after the rejoin')
    }
    await closePage(a)
    await closePage(b)
  })

  it('an 11th participant is told the room is full', async () => {
    const room = `full-${randomUUID().slice(0, 8)}`
    // ten lightweight members: raw signaling sockets from one page at the host's origin
    const helper = await open()
    await helper.goto(host.base + '/')
    const joined = await helper.evaluate(async (room) => {
      const url = `wss://${location.host}/ws`
      const results = []
      window.__sockets = []
      for (let i = 0; i < 10; i++) {
        const ws = new WebSocket(url)
        window.__sockets.push(ws)
        results.push(
          await new Promise((res) => {
            const t = setTimeout(() => res('timeout'), 10000)
            ws.onopen = () => ws.send(JSON.stringify({ type: 'login', data: { roomrequest: room, username: `member${i + 1}` } }))
            ws.onmessage = (e) => {
              const m = JSON.parse(e.data)
              if (m.type === 'joined' || m.type === 'error') {
                clearTimeout(t)
                res(m.type === 'joined' ? m.members?.length ?? 'joined' : m.message?.errorType)
              }
            }
          }),
        )
      }
      return results
    }, room)
    assert.equal(joined.length, 10)
    assert.ok(!joined.includes('full') && !joined.includes('timeout'), `ten members joined: ${joined}`)

    const eleventh = await open({ viewport: { width: 390, height: 844 }, isMobile: true })
    await eleventh.goto(`${host.base}/?room=${room}`)
    await eleventh.locator('#username').fill('Eleven')
    await eleventh.locator('form.login-form button[type=submit]').click()
    const err = eleventh.locator('.error[data-error-type=full]')
    await err.waitFor({ timeout: 20_000 })
    assert.match(await err.innerText(), /The room is full/)
    assert.equal(await eleventh.locator('.room').count(), 0)
    await shot(eleventh, 'room-full-mobile.png')
    // the user can try again: the form is usable again
    assert.equal(await eleventh.locator('#username').isEnabled(), true)
    await helper.evaluate(() => window.__sockets.forEach((s) => s.close()))
    await closePage(eleventh)
    await closePage(helper)
  })

  it('a relay-only call (?relay=1) connects through the host TURN', async () => {
    const room = `relay-${randomUUID().slice(0, 8)}`
    const a = await open()
    const b = await open()
    await join(a, host.base, room, 'RelayA', '&relay=1')
    await join(b, host.base, room, 'RelayB', '&relay=1')
    const urls = await a.evaluate(() => window.__webrtcChat.session.iceServers.flatMap((s) => [].concat(s.urls)))
    assert.ok(urls.some((u) => /^turns?:/.test(u)), `joined.iceServers has a TURN server: ${JSON.stringify(urls)}`)
    for (const p of [a, b]) {
      const v = await expectRemoteVideos(p, 1, 45_000).catch((e) => {
        throw new Error(`no relayed video with iceServers ${JSON.stringify(urls)}: ${e.message}`)
      })
      assert.ok(v[0].width > 0 && v[0].advanced, 'relayed video plays')
    }
    const pairs = await a.evaluate(async () => {
      const out = []
      for (const pc of window.__webrtcChat.peerConnections().values()) {
        const stats = await pc.getStats()
        let pairId = null
        stats.forEach((s) => {
          if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId
        })
        let pair = null
        stats.forEach((s) => {
          if (s.type === 'candidate-pair' && (s.id === pairId || (!pairId && s.nominated && s.state === 'succeeded'))) pair = s
        })
        const local = pair && stats.get(pair.localCandidateId)
        const remote = pair && stats.get(pair.remoteCandidateId)
        out.push({ config: pc.getConfiguration().iceTransportPolicy, local: local?.candidateType, remote: remote?.candidateType })
      }
      return out
    })
    console.log('# relay selected pair', JSON.stringify(pairs))
    assert.equal(pairs.length, 1)
    assert.equal(pairs[0].config, 'relay')
    assert.equal(pairs[0].local, 'relay', `selected local candidate is relay: ${JSON.stringify(pairs)}`)
    await closePage(a)
    await closePage(b)
  })
})
