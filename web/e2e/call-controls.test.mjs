// End-to-end: the controls people reach for in the first minute of a call
// (issue 18), against the real host and Debian Chromium with fake devices
// (three fake cameras: device-count=3 — fake_device_1 is Y16, which plays but
// is never encoded, so the switch goes to fake_device_2; three fake
// microphones and speakers).
import { describe, it, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { startHost, launchBrowser, suitePages, pageProblems, join, expectRemoteVideos, expectRemoteAudio, shot, sleep, until } from './support/harness.mjs'

/** The device ids the page's own tracks come from, and what each peer connection sends. */
const localDevices = (page) =>
  page.evaluate(() => {
    const c = window.__webrtcChat
    const id = (tr) => tr?.getSettings().deviceId ?? null
    const s = c.localStream.value
    return {
      video: id(s?.getVideoTracks()[0]),
      audio: id(s?.getAudioTracks()[0]),
      senders: [...c.peerConnections().values()].map((pc) =>
        Object.fromEntries(pc.getSenders().filter((x) => x.track).map((x) => [x.track.kind, id(x.track)])),
      ),
    }
  })

/** How much of the desktop grid panel the remote tiles cover (0..1), and whether every tile lies inside it. */
const tileCoverage = (page) =>
  page.evaluate(() => {
    const panel = document.querySelector('.grid-panel')
    const cs = getComputedStyle(panel)
    const p = panel.getBoundingClientRect()
    const inner = {
      left: p.left + parseFloat(cs.paddingLeft),
      right: p.right - parseFloat(cs.paddingRight),
      top: p.top + parseFloat(cs.paddingTop),
      bottom: p.bottom - parseFloat(cs.paddingBottom),
    }
    let area = 0
    let inside = true
    for (const t of document.querySelectorAll('.grid .tile')) {
      const r = t.getBoundingClientRect()
      area += r.width * r.height
      if (r.left < inner.left - 1 || r.right > inner.right + 1 || r.top < inner.top - 1 || r.bottom > inner.bottom + 1) inside = false
    }
    return { covered: area / ((inner.right - inner.left) * (inner.bottom - inner.top)), inside }
  })

describe('call controls', { timeout: 280_000 }, () => {
  let host, browser
  const { open, closeAll } = suitePages(() => browser)

  before(async () => {
    host = await startHost()
    browser = await launchBrowser({ args: ['--use-fake-device-for-media-stream=device-count=3'] })
  })
  // each test's calls end with it (fewer running calls on a busy machine)
  afterEach(async () => {
    await closeAll()
  })
  after(async () => {
    await browser?.close()
    host?.stop()
  })

  it('pre-join: preview, camera/microphone/speaker pickers, mic level; the picks are what the call sends and plays on', async () => {
    const room = randomUUID()
    const alice = await open()
    await alice.goto(`${host.base}/?room=${room}`)
    await alice.getByRole('button', { name: 'Check camera and microphone' }).click()
    assert.equal(await alice.locator('.prejoin-toggle').getAttribute('aria-expanded'), 'true')
    // the camera preview plays
    await alice.waitForFunction(() => {
      const v = document.querySelector('.prejoin-video')
      return v && v.videoWidth > 0 && !v.paused
    })
    // the pickers list Chromium's fake devices, by label
    const options = (id) => alice.locator(`#${id} option`).allInnerTexts()
    await alice.waitForFunction(() => document.querySelectorAll('#device-videoinput option').length === 3)
    assert.deepEqual(await options('device-videoinput'), ['fake_device_0', 'fake_device_1', 'fake_device_2'])
    assert.deepEqual((await options('device-audioinput')).length, 3)
    assert.ok((await options('device-audiooutput')).includes('Fake Audio Output 1'))
    assert.equal(await alice.getByLabel('Camera', { exact: true }).count(), 1)
    assert.equal(await alice.getByLabel('Microphone', { exact: true }).count(), 1)
    assert.equal(await alice.getByLabel('Speaker', { exact: true }).count(), 1)
    // the fake microphone beeps: the meter moves
    await alice.waitForFunction(() => document.querySelector('#mic-level').value > 0.05, null, { timeout: 15_000, polling: 50 })
    // the preview takes the placeholder's place: the form, the preview and the pickers are all on screen
    await alice.locator('#username').fill('Alice')
    const onScreen = await alice.evaluate(() =>
      ['#username', '.prejoin-video', '#device-videoinput', '#mic-level'].map((sel) => {
        const r = document.querySelector(sel).getBoundingClientRect()
        return r.top >= 0 && r.bottom <= innerHeight && r.height > 0
      }),
    )
    assert.deepEqual(onScreen, [true, true, true, true])
    assert.equal(await alice.locator('.login-avatar').count(), 0)
    await shot(alice, 'prejoin-desktop.png')

    // pick the second camera, the second microphone and a speaker
    const idOf = (sel, label) => alice.locator(`${sel} option`, { hasText: label }).getAttribute('value')
    const cam1 = await idOf('#device-videoinput', 'fake_device_2')
    const mic1 = await idOf('#device-audioinput', 'Fake Audio Input 1')
    const spk1 = await idOf('#device-audiooutput', 'Fake Audio Output 1')
    const before = await localDevices(alice)
    assert.notEqual(before.video, cam1)
    await alice.locator('#device-videoinput').selectOption(cam1)
    await alice.locator('#device-audioinput').selectOption(mic1)
    await alice.locator('#device-audiooutput').selectOption(spk1)
    await alice.waitForFunction(
      ([cam, mic]) => {
        const s = window.__webrtcChat.localStream.value
        return s.getVideoTracks()[0]?.getSettings().deviceId === cam && s.getAudioTracks()[0]?.getSettings().deviceId === mic
      },
      [cam1, mic1],
    )
    // the preview shows the new camera, and the old tracks were stopped (one of each kind)
    await alice.waitForFunction(() => {
      const v = document.querySelector('.prejoin-video')
      return v.videoWidth > 0 && v.srcObject.getVideoTracks()[0].readyState === 'live'
    })
    assert.equal(await alice.evaluate(() => window.__webrtcChat.localStream.value.getTracks().length), 2)

    // join: the stream picked is the one sent, and the others play on the speaker picked
    await alice.locator('form.login-form button[type=submit]').click()
    await alice.locator('.room').waitFor()
    const bob = await open({ viewport: { width: 390, height: 844 }, isMobile: true })
    await join(bob, host.base, room, 'Bob')
    for (const r of await expectRemoteVideos(bob, 1)) assert.ok(r.advanced && r.width > 0, JSON.stringify(r))
    for (const r of await expectRemoteVideos(alice, 1)) assert.ok(r.advanced && r.width > 0, JSON.stringify(r))
    const sent = await localDevices(alice)
    assert.deepEqual(sent.senders, [{ video: cam1, audio: mic1 }])
    assert.equal(await alice.evaluate(() => document.querySelector('.tile.remote video').sinkId), spk1)
    // remembered for the next visit
    assert.deepEqual(
      await alice.evaluate(() => JSON.parse(localStorage.getItem('webrtc-chat.devices'))),
      { videoinput: cam1, audioinput: mic1, audiooutput: spk1 },
    )
    for (const p of [alice, bob]) assert.deepEqual(pageProblems(p), [])
    await sleep(0)
  })

  it('audio-only mode: the camera stops, no video is sent, sound still is; turning it off sends video again', async () => {
    const room = randomUUID()
    const ann = await open()
    const ben = await open({ viewport: { width: 390, height: 844 }, isMobile: true })
    await join(ann, host.base, room, 'Ann')
    await join(ben, host.base, room, 'Ben')
    await expectRemoteVideos(ben, 1)
    /** Ann's video senders and how many video frames she has encoded so far. */
    const sending = () =>
      ann.evaluate(async () => {
        const pc = [...window.__webrtcChat.peerConnections().values()][0]
        const sender = pc.getSenders().find((s) => s.track?.kind === 'video' || s === pc.getTransceivers().find((t) => t.receiver.track.kind === 'video')?.sender)
        let frames = 0
        ;(await pc.getStats()).forEach((r) => {
          if (r.type === 'outbound-rtp' && r.kind === 'video') frames += r.framesEncoded ?? 0
        })
        return { track: sender.track ? sender.track.readyState : null, frames, camera: window.__webrtcChat.localStream.value.getVideoTracks().length }
      })
    const button = ann.getByRole('button', { name: 'Audio only (send no video)' })
    assert.equal(await button.getAttribute('aria-pressed'), 'false')
    await button.click()
    await ann.waitForFunction(() => document.querySelector('.ctl.audio-only').getAttribute('aria-pressed') === 'true')
    const a = await sending()
    assert.deepEqual([a.track, a.camera], [null, 0], 'no video track is sent and the camera is released')
    await sleep(1500)
    const b = await sending()
    assert.equal(b.frames, a.frames, 'no video frame is encoded in audio-only mode')
    // Ben sees Ann's placeholder (her media frame said video off) and still hears her
    await ben.waitForFunction(() => !document.querySelector('.tile.remote').classList.contains('has-video'))
    await expectRemoteAudio(ben, 1)
    assert.ok(await ann.getByRole('button', { name: 'Turn camera off' }).isDisabled())
    await shot(ben, 'audio-only-mobile.png')

    await button.click()
    await ann.waitForFunction(() => document.querySelector('.ctl.audio-only').getAttribute('aria-pressed') === 'false')
    const c = await sending()
    assert.deepEqual([c.track, c.camera], ['live', 1])
    for (const r of await expectRemoteVideos(ben, 1)) assert.ok(r.advanced && r.framesAdvanced, JSON.stringify(r))
    assert.ok((await sending()).frames > c.frames)
    for (const p of [ann, ben]) assert.deepEqual(pageProblems(p), [])
  })

  it('mobile video screen: a new message raises the unread badge and pops up as a short toast', async () => {
    const room = randomUUID()
    const cy = await open()
    const dan = await open({ viewport: { width: 390, height: 844 }, isMobile: true, locale: 'en-US' })
    await join(cy, host.base, room, 'Cy')
    await join(dan, host.base, room, 'Dan')
    await expectRemoteVideos(dan, 1)
    // wait until Cy can reach Dan over the data channel
    await cy.waitForFunction(() => [...window.__webrtcChat.pm.peers.values()].some((p) => p.kind === 'modern'))
    const long = 'x'.repeat(200)
    await cy.locator('#chat-input').fill('hello from Cy')
    await cy.locator('#chat-input').press('Enter')
    await dan.locator('.toast', { hasText: 'Cy: hello from Cy' }).waitFor({ timeout: 15_000 })
    await dan.locator('.chat-open .unread', { hasText: '1' }).waitFor()
    await shot(dan, 'message-toast-mobile.png')
    await cy.locator('#chat-input').fill(long)
    await cy.locator('#chat-input').press('Enter')
    await dan.locator('.chat-open .unread', { hasText: '2' }).waitFor()
    const toast = await dan.locator('.toast span').innerText()
    assert.ok(toast.startsWith('Cy: xxx') && toast.endsWith('…') && toast.length < 100, toast)
    // opening the chat clears the badge; while it is open no toast comes
    await dan.getByRole('button', { name: 'Open chat' }).click()
    await dan.waitForFunction(() => !document.querySelector('.chat-open .unread'))
    // the message's toast goes with it (it would cover the chat input), not 3.5 s later
    assert.equal(await dan.locator('.toast span').count(), 0, 'the toast is gone once the chat is open')
    await cy.locator('#chat-input').fill('while open')
    await cy.locator('#chat-input').press('Enter')
    await dan.locator('.entry.message', { hasText: 'while open' }).first().waitFor()
    await sleep(300)
    assert.equal(await dan.locator('.toast span').count(), 0)
    for (const p of [cy, dan]) assert.deepEqual(pageProblems(p), [])
  })

  it('pin (spotlight) a participant and show one full screen', async () => {
    const room = randomUUID()
    const ann = await open()
    const ben = await open({ viewport: { width: 390, height: 844 }, isMobile: true })
    const cal = await open({ viewport: { width: 390, height: 844 }, isMobile: true })
    await join(ann, host.base, room, 'Ann')
    await join(ben, host.base, room, 'Ben')
    await join(cal, host.base, room, 'Cal')
    await expectRemoteVideos(ann, 2)
    const layout = () =>
      ann.evaluate(() =>
        [...document.querySelectorAll('.grid > li')].map((li) => ({
          name: li.querySelector('.namebar .name').textContent.trim(),
          pinned: li.classList.contains('pinned'),
          width: Math.round(li.querySelector('.tile').getBoundingClientRect().width),
        })),
      )
    const before = await layout()
    assert.deepEqual(before.map((x) => x.name), ['Ben', 'Cal'])
    assert.equal(before[0].width, before[1].width)
    // the tiles fill the panel (columns and size by count and aspect ratio), none spills out
    const grid = await tileCoverage(ann)
    assert.ok(grid.covered > 0.6 && grid.inside, `2 tiles: ${JSON.stringify(grid)}`)
    // every remote tile carries a connection-quality badge from getStats, its title the numbers
    // it was rated on (on loopback, but a busy machine may add jitter: the rating must fit the numbers)
    const badges = () =>
      ann.evaluate(() =>
        [...document.querySelectorAll('.tile.remote .quality')].map((q) => ({
          quality: q.dataset.quality,
          label: q.getAttribute('aria-label'),
          numbers: /round trip (\d+) ms, loss ([\d.]+) %, jitter (\d+) ms/.exec(q.title)?.slice(1).map(Number) ?? null,
        })),
      )
    const shown = await until(badges, (b) => b.length === 2 && b.every((x) => x.numbers), 20_000)
    for (const b of shown) {
      const [rtt, loss, jitter] = b.numbers
      assert.equal(b.label, `Connection: ${b.quality}`)
      // thresholds of docs/web.md, away from their edges (the title's numbers are rounded)
      if (rtt < 240 && loss < 1.9 && jitter < 29) assert.equal(b.quality, 'good', JSON.stringify(b))
      else if (rtt > 510 || loss > 8.1 || jitter > 101) assert.equal(b.quality, 'poor', JSON.stringify(b))
      else if (rtt > 260 || loss > 2.1 || jitter > 31) assert.notEqual(b.quality, 'good', JSON.stringify(b))
    }
    await ben.locator('.tile.remote .quality[data-quality]').nth(1).waitFor({ timeout: 20_000 })
    const pinCal = ann.getByRole('button', { name: 'Pin Cal (spotlight)' })
    assert.equal(await pinCal.getAttribute('aria-pressed'), 'false')
    await pinCal.click()
    assert.equal(await pinCal.getAttribute('aria-pressed'), 'true')
    const pinned = await layout()
    assert.deepEqual(pinned.map((x) => [x.name, x.pinned]), [['Cal', true], ['Ben', false]])
    assert.ok(pinned[0].width > pinned[1].width * 1.5, JSON.stringify(pinned))
    const spot = await tileCoverage(ann)
    assert.ok(spot.covered > 0.5 && spot.inside, `pinned: ${JSON.stringify(spot)}`)
    // the pinned video is shown whole, not cropped
    assert.equal(await ann.evaluate(() => getComputedStyle(document.querySelector('li.pinned video')).objectFit), 'contain')
    await shot(ann, 'call-pinned-desktop.png')
    // pinning another moves the spotlight; pressing again unpins
    await ann.getByRole('button', { name: 'Pin Ben (spotlight)' }).click()
    assert.deepEqual((await layout()).map((x) => [x.name, x.pinned]), [['Ben', true], ['Cal', false]])
    await ann.getByRole('button', { name: 'Pin Ben (spotlight)' }).click()
    assert.deepEqual(await layout(), before)

    // full screen: Ben's tile fills the screen, pressing again (or Escape) leaves it
    const full = ann.getByRole('button', { name: 'Show Ben full screen' })
    await full.click()
    await ann.waitForFunction(() => document.fullscreenElement?.matches('.tile.remote'))
    assert.equal(await ann.evaluate(() => document.fullscreenElement.querySelector('.name').textContent.trim()), 'Ben')
    // the button follows the fullscreenchange event, which may come a little later
    const pressed = (value) =>
      ann.waitForFunction(
        (v) => document.querySelector('button[aria-label="Show Ben full screen"]')?.getAttribute('aria-pressed') === v,
        value,
      )
    await pressed('true')
    await full.click()
    await ann.waitForFunction(() => !document.fullscreenElement)
    await pressed('false')
    // a pinned peer who leaves takes the spotlight along
    await ann.getByRole('button', { name: 'Pin Cal (spotlight)' }).click()
    await cal.close()
    await ann.waitForFunction(() => document.querySelectorAll('.grid > li').length === 1)
    assert.equal(await ann.locator('.grid.has-pin').count(), 0)
    for (const p of [ann, ben]) assert.deepEqual(pageProblems(p), [])
  })

  it('video bitrate falls as peers join and rises as they leave (RTCRtpSender.setParameters, read back with getParameters)', async () => {
    const room = randomUUID()
    const caps = (page) =>
      page.evaluate(() =>
        [...window.__webrtcChat.pm.peers.values()].map((p) => p.senders.video?.getParameters().encodings?.[0]?.maxBitrate ?? null),
      )
    const expectCaps = async (page, want) => {
      const deadline = Date.now() + 30_000
      for (;;) {
        const got = await caps(page)
        if (JSON.stringify(got) === JSON.stringify(want)) return
        if (Date.now() > deadline) assert.deepEqual(got, want)
        await sleep(200)
      }
    }
    const mobile = { viewport: { width: 390, height: 844 }, isMobile: true }
    const eve = await open()
    const fay = await open(mobile)
    await join(eve, host.base, room, 'Eve')
    await join(fay, host.base, room, 'Fay')
    await expectRemoteVideos(eve, 1)
    await expectCaps(eve, [1_000_000])
    await expectCaps(fay, [1_000_000])
    const gus = await open(mobile)
    await join(gus, host.base, room, 'Gus')
    await expectRemoteVideos(gus, 2)
    await expectCaps(eve, [600_000, 600_000])
    await expectCaps(gus, [600_000, 600_000])
    const hal = await open(mobile)
    await join(hal, host.base, room, 'Hal')
    await expectRemoteVideos(hal, 3)
    await expectCaps(eve, [400_000, 400_000, 400_000])
    await expectCaps(hal, [400_000, 400_000, 400_000])
    // video still flows under the cap
    for (const r of await expectRemoteVideos(eve, 3)) assert.ok(r.advanced, JSON.stringify(r))
    await hal.close()
    await gus.close()
    await expectCaps(eve, [1_000_000])
    await expectCaps(fay, [1_000_000])
    for (const p of [eve, fay]) assert.deepEqual(pageProblems(p), [])
  })
})
