// End-to-end: one room with this client and a page that behaves exactly like
// the original client (support/original-client.html, served at the host's own
// origin), against the real host and Debian Chromium.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { startHost, launchBrowser, suitePages, pageProblems, join, expectRemoteVideos, shot, sleep } from './support/harness.mjs'

const ORIGINAL_HTML = readFileSync(new URL('./support/original-client.html', import.meta.url), 'utf8')
const ORIGINAL_BODY = ORIGINAL_HTML.match(/<body>([\s\S]*?)<script>/)[1]
const ORIGINAL_SCRIPT = ORIGINAL_HTML.match(/<script>([\s\S]*?)<\/script>/)[1]

/**
 * Open the original client's double at the host's own origin: a page the host
 * serves (robots.txt), its body replaced by the double's markup and its script
 * run through DevTools (the host's CSP allows no inline script). A page that
 * playwright made up instead would count as a public page, which Chromium does
 * not let open sockets to localhost.
 */
async function openOriginal(page, base, query) {
  // a text page makes Chromium ask for /favicon.ico, which the host does not
  // have (the app links favicon.svg): answer it, so the 404 is not an error
  await page.route(`${base}/favicon.ico`, (r) => r.fulfill({ status: 204 }))
  await page.goto(`${base}/robots.txt${query}`)
  await page.evaluate((body) => {
    document.documentElement.lang = 'ko'
    document.body.innerHTML = body
  }, ORIGINAL_BODY)
  await page.evaluate(ORIGINAL_SCRIPT)
}

/** What one of our pages knows about its peers. */
const peersOf = (page) =>
  page.evaluate(() =>
    [...window.__webrtcChat.pm.peers.values()].map((p) => ({
      name: p.username,
      kind: p.kind,
      state: p.pc.connectionState,
      ufrag: p.pc.localDescription?.sdp.match(/a=ice-ufrag:(\S+)/)?.[1] ?? null,
      offers: p.offersSent,
    })),
  )

/** The original page's view: chat lines, offers received, connections per remote session. */
const originalView = (page) =>
  page.evaluate(() => ({
    chat: [...window.original.chatList],
    offers: window.original.received.filter((t) => t === 'offer').length,
    peers: window.original.remotePeers.map((p) => ({ id: p.sessionId, name: p.username, ice: p.RTCPeer.iceConnectionState })),
    errors: [...window.original.errors],
  }))

describe('a mixed room with the original client', { timeout: 280_000 }, () => {
  let host, browser
  const { open, closeAll, all: pages } = suitePages(() => browser)

  before(async () => {
    host = await startHost()
    browser = await launchBrowser()
  })
  after(async () => {
    await closeAll()
    await browser?.close().catch(() => {})
    await host?.stop()
  })

  it('chat both ways, nothing it would print as garbage, no restart offer it cannot take, ?roomrequest= links', async () => {
    const room = `mixed-${randomUUID().slice(0, 8)}`

    // Ann (ours) is first; Kim (the original) joins and gets Ann's offer
    const ann = await open()
    await join(ann, host.base, room, 'Ann')
    const kim = await open({ locale: 'ko-KR' })
    await openOriginal(kim, host.base, `?roomrequest=${room}`)
    await kim.waitForFunction(() => window.original?.ready(), null, { timeout: 20_000 })
    await kim.evaluate((room) => window.original.login(room, 'Kim'), room)

    // Ben (ours) opens the original's kind of share link and joins: Kim offers to him
    const ben = await open()
    await ben.goto(`${host.base}/?roomrequest=${room}`)
    assert.equal(await ben.locator('#room').inputValue(), room, '?roomrequest= fills the room')
    await ben.locator('#username').fill('Ben')
    await ben.locator('form.login-form button[type=submit]').click()
    await ben.locator('.room').waitFor({ timeout: 30_000 })

    for (const [p, who] of [[ann, 'Ann'], [ben, 'Ben']]) {
      const v = await expectRemoteVideos(p, 2)
      assert.ok(v.every((x) => x.width > 0 && x.advanced), `${who} plays both remote videos`)
    }
    await kim.waitForFunction(
      () => {
        const vids = [...document.querySelectorAll('#remoteVideos video')]
        return vids.length === 2 && vids.every((v) => v.videoWidth > 0 && v.readyState >= 2)
      },
      null,
      { timeout: 45_000 },
    )
    // each of ours knows Kim is the original and the other is one of ours
    for (const [p, other] of [[ann, 'Ben'], [ben, 'Ann']]) {
      await p.waitForFunction(() => [...window.__webrtcChat.pm.peers.values()].every((x) => x.kind !== 'unknown'), null, { timeout: 20_000 })
      const kinds = Object.fromEntries((await peersOf(p)).map((x) => [x.name, x.kind]))
      assert.deepEqual(kinds, { Kim: 'legacy', [other]: 'modern' })
    }

    // chat, all ways
    const say = async (page, text) => {
      await page.locator('#chat-input').fill(text)
      await page.locator('#chat-input').press('Enter')
    }
    await say(ann, 'hello from Ann')
    await say(ben, 'hello from Ben')
    await kim.evaluate(() => window.original.say('hi from Kim'))
    await kim.waitForFunction(() => window.original.chatList.filter((l) => l.includes('hello from')).length === 2, null, { timeout: 15_000 })
    for (const p of [ann, ben]) {
      await p.locator('.entry.message', { hasText: 'hi from Kim' }).waitFor({ timeout: 15_000 })
      assert.match(await p.locator('.entry.message', { hasText: 'hi from Kim' }).innerText(), /Kim/)
      assert.equal(await p.locator('.entry.message', { hasText: '{' }).count(), 0, 'no raw JSON shown')
    }
    await ann.locator('.entry.message', { hasText: 'hello from Ben' }).waitFor({ timeout: 15_000 })
    assert.equal(await ann.locator('.entry.message', { hasText: 'hello from Ben' }).count(), 1, 'one copy between two of ours')

    // camera off and on: our `media` frames go to ours only
    await ann.getByRole('button', { name: 'Turn camera off' }).click()
    await ben.waitForFunction(() => document.querySelectorAll('.tile.remote .placeholder').length === 1, null, { timeout: 15_000 })
    await ann.getByRole('button', { name: 'Turn camera on' }).click()
    await sleep(1000)

    let seen = await originalView(kim)
    const chat = seen.chat.filter((l) => l.includes(' : '))
    assert.deepEqual(chat.sort(), ['false,Ann : hello from Ann', 'false,Ben : hello from Ben', 'true,Kim : hi from Kim'].sort())
    assert.ok(!seen.chat.some((l) => l.includes('undefined') || l.includes('{')), `no garbage: ${JSON.stringify(seen.chat)}`)
    assert.deepEqual(seen.errors, [])
    assert.equal(seen.offers, 1, 'Kim got exactly one offer (from Ann)')

    // an ICE restart on our side: Ann restarts every connection, as after a network change
    const beforeAnn = await peersOf(ann)
    await ann.evaluate(() => {
      const c = window.__webrtcChat
      for (const p of c.pm.peers.values()) c.pm.restartIce(p)
    })
    // with Ben (ours): new ICE credentials, connected again
    await ann.waitForFunction(
      (old) => {
        const p = [...window.__webrtcChat.pm.peers.values()].find((x) => x.username === 'Ben')
        const ufrag = p?.pc.localDescription?.sdp.match(/a=ice-ufrag:(\S+)/)?.[1]
        return ufrag && ufrag !== old && p.pc.connectionState === 'connected' && p.pc.signalingState === 'stable'
      },
      beforeAnn.find((x) => x.name === 'Ben').ufrag,
      { timeout: 30_000 },
    )
    // and its tile says so (a restart of a live connection fires no state change)
    await ann.locator('.tile.remote[data-state=connected]', { hasText: 'Ben' }).waitFor({ timeout: 15_000 })
    await sleep(2000)
    const afterAnn = await peersOf(ann)
    const kimBefore = beforeAnn.find((x) => x.name === 'Kim')
    const kimAfter = afterAnn.find((x) => x.name === 'Kim')
    assert.equal(kimAfter.offers, kimBefore.offers, 'no offer to Kim')
    assert.equal(kimAfter.ufrag, kimBefore.ufrag, 'Kim’s connection was left as it was')
    assert.equal(kimAfter.state, 'connected')
    seen = await originalView(kim)
    assert.equal(seen.offers, 1, 'Kim received no restart offer')
    const annId = await ann.evaluate(() => window.__webrtcChat.session.selfId)
    const annOnKim = seen.peers.filter((p) => p.id === annId)
    assert.equal(annOnKim.length, 1, 'Kim still has one connection to Ann')
    assert.ok(['connected', 'completed'].includes(annOnKim[0].ice), `Kim's connection to Ann: ${annOnKim[0].ice}`)

    // and everything still works
    await say(ann, 'after the restart')
    await kim.evaluate(() => window.original.say('still here'))
    await kim.waitForFunction(() => window.original.chatList.includes('false,Ann : after the restart'), null, { timeout: 15_000 })
    await ann.locator('.entry.message', { hasText: 'still here' }).waitFor({ timeout: 15_000 })
    await ben.locator('.entry.message', { hasText: 'after the restart' }).waitFor({ timeout: 15_000 })
    for (const p of [ann, ben]) {
      const v = await expectRemoteVideos(p, 2)
      assert.ok(v.every((x) => x.width > 0 && x.advanced), 'both remote videos still play')
    }
    seen = await originalView(kim)
    assert.ok(!seen.chat.some((l) => l.includes('undefined') || l.includes('{')), `still no garbage: ${JSON.stringify(seen.chat)}`)
    assert.deepEqual(seen.errors, [])
    await shot(ann, 'mixed-room-desktop.png')
  })

  it('Retry of a failed connection to the original client: it takes the new offer as it takes any, video and chat come back', async () => {
    const room = `mixed-${randomUUID().slice(0, 8)}`
    const ann = await open()
    await join(ann, host.base, room, 'Ann')
    const kim = await open({ locale: 'ko-KR' })
    await openOriginal(kim, host.base, '')
    await kim.waitForFunction(() => window.original?.ready(), null, { timeout: 20_000 })
    await kim.evaluate((room) => window.original.login(room, 'Kim'), room)
    await expectRemoteVideos(ann, 1)
    const annId = await ann.evaluate(() => window.__webrtcChat.session.selfId)
    const kimPlays = () =>
      kim.waitForFunction(
        (id) => {
          const v = document.getElementById(id)
          return v && v.videoWidth > 0 && v.readyState >= 2 && !v.paused
        },
        annId,
        { timeout: 45_000 },
      )
    await kimPlays()
    await ann.waitForFunction(() => [...window.__webrtcChat.pm.peers.values()].every((x) => x.kind === 'legacy'), null, { timeout: 20_000 })
    // Kim's connection to Ann breaks: Kim does what the original does on ICE "disconnected" —
    // drops the peer (its video, its RTCPeerConnection)
    await kim.evaluate((id) => {
      document.getElementById(id)?.remove()
      const peers = window.original.remotePeers
      const [peer] = peers.splice(peers.findIndex((p) => p.sessionId === id), 1)
      peer.RTCPeer.oniceconnectionstatechange = null
      peer.RTCPeer.close()
    }, annId)
    // Ann gives no ICE restart to the original client; her tile ends "failed" and offers Retry
    const retry = ann.getByRole('button', { name: 'Retry the connection to Kim' })
    await retry.waitFor({ timeout: 60_000 })
    assert.equal(await ann.locator('.tile.remote').getAttribute('data-state'), 'failed')
    const offersBefore = (await originalView(kim)).offers
    await retry.click()
    // Kim takes the new offer as the original takes every offer: a new connection, an answer
    await ann.locator('.tile.remote[data-state=connected]').waitFor({ timeout: 30_000 })
    await kimPlays()
    for (const r of await expectRemoteVideos(ann, 1)) assert.ok(r.advanced && r.framesAdvanced, JSON.stringify(r))
    const seen = await originalView(kim)
    assert.equal(seen.offers, offersBefore + 1, 'one new offer to Kim')
    assert.deepEqual(
      seen.peers.filter((p) => p.id === annId).map((p) => ['connected', 'completed'].includes(p.ice)),
      [true],
      'Kim has one live connection to Ann',
    )
    // chat goes again, in the original's form, on the channel Kim's new connection made
    await ann.waitForFunction(() => [...window.__webrtcChat.pm.peers.values()].every((x) => x.kind === 'legacy'), null, { timeout: 20_000 })
    await ann.locator('#chat-input').fill('back again')
    await ann.locator('#chat-input').press('Enter')
    await kim.waitForFunction(() => window.original.chatList.includes('false,Ann : back again'), null, { timeout: 15_000 })
    assert.deepEqual((await originalView(kim)).errors, [])
  })

  it('no page reported an error (uncaught, console.error, CSP violation)', () => {
    assert.ok(pages.length > 0)
    for (const p of pages) assert.deepEqual(pageProblems(p), [], p.url())
  })
})
