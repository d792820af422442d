// End-to-end: what a call does with its media (issue 18) — a phone's camera
// switch, a shared screen, a failed connection retried — against the real
// host and Debian Chromium with fake devices: three fake cameras
// (fake_device_1 is Y16, never encoded, so the switch test starts on
// fake_device_2 and wraps round to fake_device_0) and a virtual screen the
// capture picker takes by itself (--auto-select-desktop-capture-source).
import { describe, it, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { startHost, launchBrowser, suitePages, pageProblems, join, expectRemoteVideos, shot, until, axeViolations } from './support/harness.mjs'

describe('call media', { timeout: 280_000 }, () => {
  let host, browser
  const { open, closeAll } = suitePages(() => browser)
  // each test's calls end with it (fewer running calls on a busy machine)
  afterEach(async () => {
    await closeAll()
  })

  before(async () => {
    host = await startHost()
    browser = await launchBrowser({
      args: ['--use-fake-device-for-media-stream=device-count=3', '--auto-select-desktop-capture-source=Entire screen'],
    })
  })
  after(async () => {
    await browser?.close()
    host?.stop()
  })

  it('phone: the camera switch (front/back) sends the other camera with replaceTrack, and the other side keeps receiving video', async () => {
    const room = randomUUID()
    const ann = await open()
    const ben = await open({ viewport: { width: 390, height: 844 }, isMobile: true })
    // Ben picked fake_device_2 on an earlier visit (remembered in localStorage): the call opens
    // exactly that camera; the switch then wraps round to fake_device_0 (fake cameras report no
    // facingMode, so the next camera in the list is taken)
    await ben.goto(host.base)
    const cams = await ben.evaluate(async () => {
      const s = await navigator.mediaDevices.getUserMedia({ video: true })
      s.getTracks().forEach((t) => t.stop())
      const list = await navigator.mediaDevices.enumerateDevices()
      const byLabel = Object.fromEntries(list.filter((d) => d.kind === 'videoinput').map((d) => [d.label, d.deviceId]))
      localStorage.setItem('webrtc-chat.devices', JSON.stringify({ videoinput: byLabel.fake_device_2, audioinput: '', audiooutput: '' }))
      return byLabel
    })
    await join(ann, host.base, room, 'Ann')
    await join(ben, host.base, room, 'Ben')
    await expectRemoteVideos(ann, 1)
    assert.equal(await ben.evaluate(() => window.__webrtcChat.localStream.value.getVideoTracks()[0].getSettings().deviceId), cams.fake_device_2)
    assert.equal(await ann.getByRole('button', { name: 'Switch camera (front/back)' }).count(), 0, 'no switch on the desktop layout')
    /** Ben's video sender (the same object before and after), and what Ann has received and decoded. */
    const benSender = () =>
      ben.evaluate(() => {
        const pc = [...window.__webrtcChat.peerConnections().values()][0]
        const t = pc.getTransceivers().find((x) => x.receiver.track.kind === 'video')
        window.__firstSender ??= t.sender
        return { same: window.__firstSender === t.sender, device: t.sender.track?.getSettings().deviceId, state: t.sender.track?.readyState, offers: [...window.__webrtcChat.pm.peers.values()][0].offersSent }
      })
    const annReceived = () =>
      ann.evaluate(async () => {
        const pc = [...window.__webrtcChat.peerConnections().values()][0]
        let frames = 0
        ;(await pc.getStats()).forEach((r) => {
          if (r.type === 'inbound-rtp' && r.kind === 'video') frames += r.framesDecoded ?? 0
        })
        return { frames, sdp: pc.remoteDescription.sdp }
      })
    const s0 = await benSender()
    assert.deepEqual([s0.same, s0.device, s0.state], [true, cams.fake_device_2, 'live'])
    const r0 = await annReceived()
    await ben.getByRole('button', { name: 'Switch camera (front/back)' }).click()
    const s1 = await until(benSender, (x) => x.device === cams.fake_device_0)
    assert.deepEqual([s1.same, s1.state, s1.offers], [true, 'live', s0.offers], 'same sender, new live track, no new offer')
    const local = await ben.evaluate(() => window.__webrtcChat.localStream.value.getVideoTracks().map((t) => [t.getSettings().deviceId, t.readyState]))
    assert.deepEqual(local, [[cams.fake_device_0, 'live']], 'the old camera is released')
    // Ann keeps receiving: new frames decoded after the switch, on the same negotiated session
    const r1 = await until(annReceived, (x) => x.frames > r0.frames + 20)
    assert.equal(r1.sdp, r0.sdp, 'no renegotiation')
    for (const r of await expectRemoteVideos(ann, 1)) assert.ok(r.advanced && r.framesAdvanced, JSON.stringify(r))
    // remembered like a pick
    assert.equal(await ben.evaluate(() => JSON.parse(localStorage.getItem('webrtc-chat.devices')).videoinput), cams.fake_device_0)
    await shot(ben, 'call-mobile-switch.png')
    assert.deepEqual(await axeViolations(ben), [], 'mobile room with the switch: no serious accessibility violations')
    for (const p of [ann, ben]) assert.deepEqual(pageProblems(p), [])
  })

  it('a shared screen is shown whole, marked and pinned for the others; the camera comes back when it stops', async () => {
    const room = randomUUID()
    const ann = await open()
    const ben = await open()
    const cal = await open({ viewport: { width: 390, height: 844 }, isMobile: true })
    await join(ann, host.base, room, 'Ann')
    await join(ben, host.base, room, 'Ben')
    await join(cal, host.base, room, 'Cal')
    await expectRemoteVideos(ben, 2)
    await expectRemoteVideos(cal, 2)
    /** Ann's tile as a viewer sees it: first in the grid? pinned? marked? uncropped? the video's shape. */
    const annTile = (page) =>
      page.evaluate(() => {
        const li = [...document.querySelectorAll('.grid > li')].find((x) => x.querySelector('.name').textContent.trim() === 'Ann')
        const tile = li.querySelector('.tile')
        const v = tile.querySelector('video')
        return {
          first: document.querySelector('.grid > li') === li,
          pinned: li.classList.contains('pinned') && tile.querySelector('.pin').getAttribute('aria-pressed') === 'true',
          marked: tile.querySelector('.screen-badge')?.textContent.trim() ?? null,
          label: tile.getAttribute('aria-label'),
          fit: getComputedStyle(v).objectFit,
          aspect: v.videoHeight ? Math.round((v.videoWidth / v.videoHeight) * 100) / 100 : 0,
        }
      })
    assert.deepEqual(await annTile(ben), { first: true, pinned: false, marked: null, label: 'Ann', fit: 'cover', aspect: 1.33 })

    await ann.getByRole('button', { name: 'Share screen' }).click()
    await ann.getByRole('button', { name: 'Stop sharing' }).waitFor()
    // what Ann sends is the screen (getDisplayMedia's track), on the senders negotiated before
    const sent = await ann.evaluate(() =>
      [...window.__webrtcChat.peerConnections().values()].map((pc) => pc.getSenders().find((s) => s.track?.kind === 'video')?.track.getSettings().displaySurface ?? null),
    )
    assert.deepEqual(sent, ['monitor', 'monitor'])
    for (const viewer of [ben, cal]) {
      // the screen is 16:9 where the camera was 4:3: the others receive it, whole (contain), marked and pinned
      const seen = await until(() => annTile(viewer), (t) => t.aspect > 1.7 && t.pinned)
      assert.deepEqual(seen, { first: true, pinned: true, marked: 'Screen', label: 'Ann (Screen)', fit: 'contain', aspect: 1.78 })
    }
    // on the desktop the pinned screen gets a 16:9 tile (a 4:3 one would letterbox it), inside the panel
    const box = await ben.evaluate(() => {
      const r = document.querySelector('.grid > li.pinned .tile').getBoundingClientRect()
      const p = document.querySelector('.grid-panel').getBoundingClientRect()
      return { ratio: r.width / r.height, inside: r.right <= p.right + 1 && r.bottom <= p.bottom + 1, share: (r.width * r.height) / (p.width * p.height) }
    })
    assert.ok(box.ratio > 1.7 && box.inside && box.share > 0.3, JSON.stringify(box))
    for (const r of await expectRemoteVideos(ben, 2)) assert.ok(r.advanced && r.framesAdvanced, JSON.stringify(r))
    await shot(ben, 'screen-share-desktop.png')
    assert.deepEqual(await axeViolations(ben), [], 'a pinned, marked screen: no serious accessibility violations')

    // stopping brings the camera back and the automatic pin goes
    await ann.getByRole('button', { name: 'Stop sharing' }).click()
    for (const viewer of [ben, cal]) {
      const back = await until(() => annTile(viewer), (t) => t.aspect < 1.4 && !t.marked)
      assert.deepEqual([back.pinned, back.fit, back.aspect], [false, 'cover', 1.33])
      assert.equal(await viewer.locator('.grid.has-pin').count(), 0)
    }
    for (const p of [ann, ben, cal]) assert.deepEqual(pageProblems(p), [])
  })

  it('a failed connection: its tile offers Retry, which reconnects that peer only and brings the video back', async () => {
    const room = randomUUID()
    const ann = await open()
    const ben = await open({ viewport: { width: 390, height: 844 }, isMobile: true })
    const cal = await open({ viewport: { width: 390, height: 844 }, isMobile: true })
    await join(ann, host.base, room, 'Ann')
    await join(ben, host.base, room, 'Ben')
    await join(cal, host.base, room, 'Cal')
    await expectRemoteVideos(ann, 2)
    await expectRemoteVideos(ben, 2)
    const idOf = (page) => page.evaluate(() => window.__webrtcChat.session.selfId)
    const [annId, benId, calId] = [await idOf(ann), await idOf(ben), await idOf(cal)]
    await ann.evaluate((cal) => (window.__calPc = window.__webrtcChat.peerConnections().get(cal)), calId)
    // Ben's end of the Ann–Ben connection goes away under him (not through the app): Ann's ICE
    // restarts get no answer, and her tile for Ben ends "failed" with a Retry button
    await ben.evaluate((ann) => window.__webrtcChat.peerConnections().get(ann).close(), annId)
    const benTile = ann.locator(`.tile[data-peer-id="${benId}"]`)
    await ann.locator(`.tile[data-peer-id="${benId}"][data-state="failed"]`).waitFor({ timeout: 60_000 })
    const retry = ann.getByRole('button', { name: 'Retry the connection to Ben' })
    await retry.waitFor()
    assert.equal(await ann.getByRole('button', { name: /^Retry the connection to Cal/ }).count(), 0)
    assert.equal(await ann.locator(`.tile[data-peer-id="${calId}"]`).getAttribute('data-state'), 'connected')
    await shot(ann, 'retry-desktop.png')
    assert.deepEqual(await axeViolations(ann), [], 'a failed tile with Retry: no serious accessibility violations')
    await retry.click()
    // a new connection to Ben (Ben makes one too), the one to Cal untouched
    await ann.locator(`.tile[data-peer-id="${benId}"][data-state="connected"]`).waitFor({ timeout: 30_000 })
    assert.equal(await retry.count(), 0)
    assert.equal(await benTile.getAttribute('data-state'), 'connected')
    assert.ok(await ann.evaluate((cal) => window.__webrtcChat.peerConnections().get(cal) === window.__calPc, calId), 'the connection to Cal was left alone')
    assert.ok(await ben.evaluate((ann) => window.__webrtcChat.peerConnections().get(ann).connectionState === 'connected', annId))
    for (const r of await expectRemoteVideos(ann, 2)) assert.ok(r.advanced && r.framesAdvanced, JSON.stringify(r))
    for (const r of await expectRemoteVideos(ben, 2)) assert.ok(r.advanced && r.framesAdvanced, JSON.stringify(r))
    for (const p of [ann, ben, cal]) assert.deepEqual(pageProblems(p), [])
  })
})
